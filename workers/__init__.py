"""RQ jobs: normalize, deduplicate, route, deliver, retry and dead-letter events."""
