"""Remote reads and writes through fsspec, on real servers on loopback: moto's S3 server
and an HTTP server honouring ``Range`` (tests/servers.py). Every format, compared with the
local eager read; request counts show that HDF5 data move as chunk byte ranges."""

from __future__ import annotations

import math
import pickle

import cloudpickle
import dask
import fsspec
import h5py
import numpy as np
import pytest
from remote_cases import (
    BACKENDS,
    CASES,
    FORMATS,
    Placer,
    eager,
    example_data,
    make_example_files,
    write_example,
)
from servers import TAG_HEADER

import lazyio
from lazyio.errors import AccessDeniedError, SourceNotFoundError


@pytest.fixture(scope="module")
def example_files(tmp_path_factory, s3_server, http_server):
    return make_example_files(tmp_path_factory.mktemp("remote-examples"),
                              Placer(s3_server, http_server))


@pytest.fixture
def placer(s3_server, http_server):
    return Placer(s3_server, http_server)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_lazy_read_equals_local_eager(example_files, fmt, backend):
    url, options = example_files[fmt][backend]
    signals = lazyio.load(url, storage_options=options)
    data = signals[0]["data"]
    assert isinstance(data, dask.array.Array)
    got = data.compute(scheduler="threads")
    np.testing.assert_array_equal(got, example_files[fmt]["expected"])
    assert got.dtype == example_files[fmt]["expected"].dtype
    np.testing.assert_array_equal(eager(url, options), example_files[fmt]["expected"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_remote_graph_pickles_and_reopens(example_files, fmt):
    url, options = example_files[fmt]["s3"]
    data = lazyio.load(url, storage_options=options)[0]["data"]
    clone = pickle.loads(cloudpickle.dumps(data))
    lazyio.close_all()  # the clone must open its own filesystem and files
    np.testing.assert_array_equal(clone.compute(scheduler="threads"),
                                  example_files[fmt]["expected"])


def test_memory_urls_every_format(tmp_path):
    for fmt, case in CASES.items():
        url = f"memory://lazyio-remote-test/example-{fmt}{case.ext}"
        write_example(url, fmt, overwrite=True)
        np.testing.assert_array_equal(eager(url), example_data())
        lazy = lazyio.load(url)[0]["data"].compute(scheduler="threads")
        np.testing.assert_array_equal(lazy, example_data())


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_to_s3_threaded(s3_server, fmt):
    url = f"s3://{s3_server.bucket}/threaded/written{CASES[fmt].ext}"
    write_example(url, fmt, storage_options=s3_server.storage_options, overwrite=True)
    np.testing.assert_array_equal(eager(url, s3_server.storage_options), example_data())
    with pytest.raises(lazyio.TargetExistsError, match="written"):
        write_example(url, fmt, storage_options=s3_server.storage_options)
    # replacing what this process has just read (cached listings and handles included)
    lazyio.load(url, storage_options=s3_server.storage_options)[0]["data"].sum().compute()
    lazyio.save(url, example_data()[::-1].copy(), format=fmt, overwrite=True,
                storage_options=s3_server.storage_options, show_progressbar=False)
    np.testing.assert_array_equal(eager(url, s3_server.storage_options),
                                  example_data()[::-1])


def test_zip_stores_on_remote_urls_are_refused(tmp_path, placer, s3_server):
    url = f"s3://{s3_server.bucket}/refused.zspy"
    with pytest.raises(lazyio.UnsupportedError, match=r"refused\.zspy"):
        write_example(url, "zspy", storage_options=s3_server.storage_options,
                      store_type="zip")
    assert not fsspec.filesystem("s3", **s3_server.storage_options).exists(url)
    local = str(tmp_path / "zipped.zspy")
    write_example(local, "zspy", store_type="zip")
    url, options = placer.place(local, "s3", f"{tmp_path.name}/zipped.zspy")
    with pytest.raises(lazyio.UnsupportedError, match=r"zipped\.zspy.*local file"):
        lazyio.load(url, storage_options=options)


# ---------------------------------------------------------------- what goes over the wire


def _hdf5_chunk_count(local: str, dataset: str) -> tuple[int, int]:
    with h5py.File(local) as f:
        d = f[dataset]
        return d.id.get_num_chunks(), sum(
            d.id.get_chunk_info(i).size for i in range(d.id.get_num_chunks())
        )


@pytest.mark.parametrize("backend", ["s3", "http"])
def test_hspy_chunks_are_fetched_as_byte_ranges(tmp_path, placer: Placer, s3_server,
                                                 http_server, backend):
    local = str(tmp_path / "ranges.hspy")
    write_example(local, "hspy", chunks=(1, 5, 16, 12))  # 6 gzip chunks
    n_chunks, stored = _hdf5_chunk_count(local, "/Experiments/remote/data")
    url, options = placer.place(local, backend, f"{tmp_path.name}/ranges.hspy")
    data = lazyio.load(url, storage_options=options, chunks=(3, 5, 16, 12))[0]["data"]
    assert data.numblocks[0] == 2
    server = s3_server if backend == "s3" else http_server
    server.reset_stats()
    np.testing.assert_array_equal(data.compute(scheduler="threads"), example_data())
    stats = server.stats()
    # the index was read at load time; computing fetches each chunk once, by range
    # (neighbouring chunks in one range: fewer requests than chunks, never more)
    assert 1 <= stats["ranged_gets"] <= n_chunks, stats
    assert stats["requests"] - stats.get("heads", 0) == stats["ranged_gets"], stats
    if backend == "http":
        assert stored <= stats["bytes"] <= stored + 4096 * n_chunks, stats


def test_contiguous_hdf5_is_one_range_per_dask_chunk(tmp_path, placer: Placer,
                                                     http_server):
    local = str(tmp_path / "contiguous.hspy")
    write_example(local, "hspy")
    with h5py.File(local, "r+") as f:  # rewrite the data contiguous, uncompressed
        path = "/Experiments/remote/data"
        values = f[path][()]
        del f[path]
        f.create_dataset(path, data=values)
    url, options = placer.place(local, "http", f"{tmp_path.name}/contiguous.hspy")
    data = lazyio.load(url, storage_options=options, chunks=(2, 5, 16, 12))[0]["data"]
    http_server.reset_stats()
    np.testing.assert_array_equal(data.compute(scheduler="threads"), example_data())
    stats = http_server.stats()
    assert stats["ranged_gets"] == stats["requests"] - stats["heads"] == data.npartitions
    assert stats["bytes"] == example_data().nbytes


def test_opening_a_large_remote_file_reads_little(tmp_path, placer: Placer, http_server):
    # a 1.5 MB file: opening must not download it (fsspec's HTTP exists/isdir would)
    local = str(tmp_path / "big.npy")
    big = np.arange(3 * 2**17, dtype=np.float32).reshape(384, 1024)
    np.save(local, big)
    url, _ = placer.place(local, "http", f"{tmp_path.name}/big.npy")
    http_server.reset_stats()
    data = lazyio.load(url)[0]["data"]
    assert http_server.stats()["bytes"] < 2**17, http_server.stats()
    row = data[100].compute(scheduler="threads")
    np.testing.assert_array_equal(row, big[100])
    assert http_server.stats()["bytes"] < 2**17 + 4096


def test_storage_options_pass_through_to_fsspec(example_files, http_server):
    url, _ = example_files["hspy"]["http"]
    options = {"headers": {TAG_HEADER: "1"}}
    http_server.reset_stats()
    data = lazyio.load(url, storage_options=options)[0]["data"]
    data.compute(scheduler="threads")
    stats = http_server.stats()
    assert stats["tagged"] == stats["requests"] > 0, stats


# ---------------------------------------------------------------- errors


def test_missing_key_bucket_and_url_name_the_url(s3_server, http_server):
    so = s3_server.storage_options
    for url, options in [
        (f"s3://{s3_server.bucket}/no/such/key.hspy", so),
        ("s3://no-such-bucket-lazyio/key.zspy", so),
        (http_server.url("no/such/file.npy"), {}),
    ]:
        with pytest.raises(SourceNotFoundError, match=url.split("://")[1].split("/")[0]) as err:
            lazyio.load(url, storage_options=options)
        assert url in str(err.value)
        assert isinstance(err.value, FileNotFoundError)


@pytest.fixture(scope="module")
def locked_s3():
    """A separate moto server that enforces IAM authentication, with a user who has no
    permission at all (moto answers 403 AccessDenied to that user's requests)."""
    import boto3
    from servers import S3Server

    with S3Server() as server:
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **server.storage_options)
        fs.mkdir("locked")
        fs.pipe("locked/data.npy", b"\x93NUMPY not really")
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1",
                           aws_access_key_id=server.key, aws_secret_access_key=server.secret)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        server.reset_auth(0)  # from now on every request is authenticated
        yield {**server.storage_options, "key": key["AccessKeyId"],
               "secret": key["SecretAccessKey"]}


@pytest.mark.parametrize("url", ["s3://locked/data.npy", "s3://locked/data.zspy"])
def test_access_denied_names_url_and_cause(locked_s3, url):
    with pytest.raises(AccessDeniedError, match=r"Access denied to 's3://locked/data") as err:
        lazyio.load(url, storage_options=locked_s3)
    assert isinstance(err.value, PermissionError)
    assert "Forbidden" in str(err.value) or "AccessDenied" in str(err.value)


def test_remote_read_errors_inside_tasks_name_the_url(tmp_path, placer: Placer, s3_server):
    local = str(tmp_path / "vanishing.hspy")
    write_example(local, "hspy")
    url, options = placer.place(local, "s3", f"{tmp_path.name}/vanishing.hspy")
    data = lazyio.load(url, storage_options=options)[0]["data"]
    fsspec.filesystem("s3", **options).rm(url)
    with pytest.raises(SourceNotFoundError, match=r"vanishing\.hspy"):
        data.compute(scheduler="threads")
    assert math.prod(data.shape) == example_data().size
