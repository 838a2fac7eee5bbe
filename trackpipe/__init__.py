"""trackpipe: the core (config, Redis key layout, jobs and messages, queries) every stage shares."""

import os

from trackpipe.keys import DEFAULT_PREFIX, RQ_PREFIX_ENV, rq_prefix_for

__version__ = "0.1.0"

# RQ reads its key prefix once, when first imported. Every trackpipe module is imported after this
# package, so RQ gets the default prefix unless one was set; loading a config file binds its
# `key_prefix` (trackpipe.config.load), so no entry point has to remember to.
os.environ.setdefault(RQ_PREFIX_ENV, rq_prefix_for(DEFAULT_PREFIX))
