"""zarr storage: reading and writing together."""
