"""Destination types, one module each."""
