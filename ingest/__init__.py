"""The HTTP edge: auth, size and JSON checks, then a durable group commit into Redis."""
