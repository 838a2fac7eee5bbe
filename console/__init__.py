"""The admin console: the admin API (inspector, delivery view, dead letters), served by a process
of its own (`trackpipe console`), away from the edge's public port and its event loop."""
