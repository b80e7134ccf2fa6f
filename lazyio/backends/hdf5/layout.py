"""What an HDF5 dataset's storage looks like: chunks, filters, bytes on disk."""

from __future__ import annotations

from lazyio.backends import StorageLayout
from lazyio.backends.hdf5.sources import open_h5
from lazyio.location import Location

__all__ = ["dataset_layout"]

# HDF5 filter ids (H5Zpublic.h and the registered plugin ids) -> short names
_H5_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
               6: "scaleoffset", 307: "bzip2", 32000: "lzf", 32001: "blosc", 32004: "lz4",
               32008: "bitshuffle", 32015: "zstd"}


def dataset_layout(location: Location, dataset: str, token: str = "") -> StorageLayout:
    """Describe ``dataset`` of the HDF5 file at ``location`` from its creation properties."""
    dset = open_h5(location, token=token)[dataset]
    plist = dset.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        fid, _flags, values, raw_name = plist.get_filter(i)
        label = _H5_FILTERS.get(int(fid)) or raw_name.decode(errors="replace") or str(fid)
        if int(fid) == 1 and len(values):
            label = f"gzip({values[0]})"
        names.append(label)
    return StorageLayout(
        dataset=dset.name,
        chunks=tuple(int(c) for c in dset.chunks) if dset.chunks else None,
        compression="+".join(names) or None,
        stored=int(dset.id.get_storage_size()),
    )
