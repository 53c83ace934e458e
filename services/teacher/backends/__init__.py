"""Teacher backends, chosen by name from an explicit registry (see `load_backend`)."""
