"""raw storage: reading and writing together."""
