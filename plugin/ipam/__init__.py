"""IP address management: pure pool/address logic (pools, allocator) and its service."""
