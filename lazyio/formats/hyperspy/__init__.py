"""HyperSpy's hierarchical format (the tree shared by .hspy and .zspy).

``node`` abstracts an HDF5 or Zarr group (``hdf5_node`` and ``zarr_node`` implement it,
each importing only its own library); ``decode`` and ``encode`` turn trees into
dictionaries and back, written once against that abstraction; ``versions`` holds the
format's history; ``signal`` reads and writes whole ``Experiments/<title>`` groups.
"""
