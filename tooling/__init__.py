"""Benchmarks, the soak and the harness they share with the tests: free ports, processes, the
embedded server, a webhook receiver, example events."""
