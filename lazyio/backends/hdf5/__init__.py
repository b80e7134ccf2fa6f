"""hdf5 storage: reading and writing together."""
