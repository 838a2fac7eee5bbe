"""trackpipe: shared core (config, Redis key layout, job messages, command line)."""

__version__ = "0.1.0"
