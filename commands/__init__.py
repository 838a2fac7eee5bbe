"""The `trackpipe` command line: one module per command group, dispatched from `commands.main`."""
