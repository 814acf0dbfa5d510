"""Use cases: the only layer that calls both the kernel adapters and the store."""
