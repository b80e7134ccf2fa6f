"""What an HDF5 dataset's storage looks like: chunks, filters, bytes on disk."""

from __future__ import annotations

from lazyio.backends import StorageLayout
from lazyio.backends.hdf5.files import open_h5
from lazyio.backends.hdf5.filters import label, read_pipeline
from lazyio.location import Location

__all__ = ["dataset_layout"]


def dataset_layout(location: Location, dataset: str, token: str = "") -> StorageLayout:
    """Describe ``dataset`` of the HDF5 file at ``location`` from its creation properties."""
    dset = open_h5(location, token=token)[dataset]
    pipeline, raw_names = read_pipeline(dset)
    names = [label(fid, values, raw) for (fid, values), raw in zip(pipeline, raw_names,
                                                                    strict=True)]
    return StorageLayout(
        dataset=dset.name,
        chunks=tuple(int(c) for c in dset.chunks) if dset.chunks else None,
        compression="+".join(names) or None,
        stored=int(dset.id.get_storage_size()),
    )
