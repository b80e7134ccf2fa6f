"""lazyio's exceptions and warnings.

Every error lazyio raises derives from :class:`LazyioError` and from the builtin a caller
would already catch (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError``
keeps working for code written against RosettaSciIO.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Literal, NoReturn, ParamSpec, TypeVar
from urllib.parse import urlsplit


class LazyioError(Exception):
    """Root of every error raised by lazyio."""


class FormatError(LazyioError, ValueError, OSError):
    """The file is not of the expected format, or is malformed.

    A ``ValueError`` (lazyio's contract) and an ``OSError``: RosettaSciIO raises
    ``OSError``/``IOError`` for a file that is not valid or is damaged, and HyperSpy code
    catches that."""


class UnknownFormatError(FormatError):
    """No format plugin recognises the file."""


class NonUniformAxisError(FormatError):
    """A dimension was varied non-uniformly and the caller asked not to ignore it."""


class CorruptChunkError(LazyioError, OSError):
    """A stored chunk could not be read or decoded."""


class SourceNotFoundError(LazyioError, FileNotFoundError):
    """The file, object or dataset to read does not exist."""


class AccessDeniedError(LazyioError, PermissionError):
    """The storage refused access (wrong credentials, a bucket policy, file permissions)."""


class TargetExistsError(LazyioError, FileExistsError):
    """The write target exists and ``overwrite`` was not given."""


class ForeignTargetError(TargetExistsError):
    """``overwrite=True`` was given, but what is at the target is not something lazyio
    recognises as the same kind (a directory of other files, a file of another format, a
    link, a device, the working directory, a bucket root): it is refused, untouched."""


class WriteError(LazyioError, OSError):
    """Writing the target failed; a previous version of it is intact and no temporary
    is left behind."""


class MissingDirectoryError(WriteError, FileNotFoundError):
    """The directory the target should be written in does not exist (lazyio never
    creates it)."""


class DiskFullError(WriteError):
    """The device (or quota) ran out of space while the target was written."""


class TargetBusyError(WriteError, BlockingIOError):
    """Another live process is writing the same target now."""


class UnsupportedError(LazyioError, NotImplementedError):
    """The request is valid but lazyio cannot honour it (e.g. a codec it cannot decode)."""


class StaleFileError(LazyioError, OSError):
    """A lazily opened file was replaced or modified since: its old layout no longer
    describes it, so reading on would mix versions. Load the file again."""


class LazyioConnectionError(LazyioError, ConnectionError):
    """The storage could not be reached, or the connection failed during a transfer: a
    refused connection, an unknown host, no answer in time, an HTTP 5xx answer, a response
    cut short. Nothing is known to be wrong with the file; trying again later may work."""


class RangeNotSupportedError(UnsupportedError):
    """An HTTP server answered a byte-range request with the whole file: lazyio reads
    remote files by ranges and will not download a large file once per chunk."""


class LazyioWarning(UserWarning):
    """Warnings issued by lazyio (best-effort reads, dropped metadata, ...)."""


class UnsafeFileError(FormatError):
    """The file asks lazyio to do something unsafe (follow an external link or a virtual
    dataset to other files, or it crashed the HDF5 library in the untrusted-mode check)."""


class VerificationError(LazyioError):
    """What was written does not read back equal to its source (``verify=True``)."""


class ResumeMismatchError(LazyioError, ValueError):
    """``resume=True`` found an interrupted write of the target made from another source
    or with other options (shape, dtype, chunks, compression, metadata); nothing was
    written."""


def _library_errors() -> tuple[type[BaseException], ...]:
    # what h5py, zarr, numcodecs, zipfile, json and numpy raise on damaged input
    import json
    import struct
    import tokenize
    import zipfile

    return (OSError, ValueError, KeyError, IndexError, RuntimeError, EOFError, SyntaxError,
            OverflowError, RecursionError, UnicodeError, TypeError, struct.error,
            json.JSONDecodeError, tokenize.TokenError, zipfile.BadZipFile)


# One wording per kind of error: every translation below goes through these.
def not_found(target: object, detail: str = "") -> SourceNotFoundError:
    """The error for a file, object or dataset that does not exist (for a local path,
    why: a loop of symbolic links, a link to nothing, a parent that is a file)."""
    return SourceNotFoundError(f"No such file or directory: '{target}'"
                               + _paren(detail or _missing_reason(target)))


def not_a_file(target: object, kind: str) -> FormatError:
    """The error for a path that is not a regular file (``kind``: "a directory",
    "a FIFO", ...) where a file is read."""
    return FormatError(f"{target}: not a regular file ({kind}); lazyio reads regular "
                       "files (and .zspy directory stores)")


def _missing_reason(target: object) -> str:
    import os

    path = str(_target_name(target))
    if "://" in path:
        return ""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a loop of symbolic links"
        if err.errno == errno.ENOTDIR:
            return "a parent in the path is a file, not a directory"
        if isinstance(err, FileNotFoundError) and os.path.islink(path):
            return f"a symbolic link to the missing '{os.readlink(path)}'"
    return ""


def access_denied(target: object, detail: str = "") -> AccessDeniedError:
    """The error for storage that refused access."""
    return AccessDeniedError(f"Access denied to '{target}'" + _paren(detail))


def damaged(target: object, err: BaseException) -> FormatError:
    """The error for a file whose structure or metadata cannot be parsed."""
    return FormatError(f"{target}: damaged or not a valid file ({_describe(err)})")


def corrupt_chunk(target: object, what: str, err: BaseException | str) -> CorruptChunkError:
    """The error for stored array data that cannot be read or decoded; ``what`` names the
    dataset and the chunk or region."""
    detail = err if isinstance(err, str) else _describe(err)
    return CorruptChunkError(f"{target}: {what} cannot be read ({detail})")


def connection_failed(target: object, detail: str) -> LazyioConnectionError:
    """The error for storage that could not be reached or failed mid-transfer; ``detail``
    says what happened."""
    return LazyioConnectionError(f"Connection failed for '{target}': {detail}")


def range_not_supported(target: object) -> RangeNotSupportedError:
    """The error for an HTTP server that ignores ``Range`` requests."""
    return RangeNotSupportedError(
        f"'{target}': the HTTP server does not support byte-range requests (it answered a "
        "range request with the whole file); lazyio reads remote files by byte ranges. "
        "Serve the file from a server that honours Range (most do; `python -m http.server` "
        "does not), or download it and load the local copy")


def _paren(detail: str) -> str:
    return f" ({detail})" if detail else ""


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


Scope = Literal["file", "chunk", "storage"]


@contextlib.contextmanager
def translate(target: object, *, scope: Scope = "file", what: str = "") -> Iterator[None]:
    """The one place where the errors of storage and file libraries become lazyio's.

    lazyio's own errors pass through. Transport failures come first, in every scope
    (:func:`transport_error`: a refused connection, a time-out, an HTTP 5xx, a body cut
    short become :class:`LazyioConnectionError`, never a missing file or a corrupt
    chunk); a path that is a directory or a socket :class:`FormatError`. A missing file
    becomes :class:`SourceNotFoundError` and a refusal :class:`AccessDeniedError`, whatever library
    raised them. Other library errors mean damage: with ``scope="file"`` (opening a file,
    reading its metadata) a :class:`FormatError`; with ``scope="chunk"`` (reading array
    data; ``what`` names the dataset and chunk or region) a :class:`CorruptChunkError`;
    with ``scope="storage"`` (a byte transfer) the rest pass unchanged.
    On the file scope, builtin errors raised by lazyio's own code (argument checks: a bad
    ``chunks=`` stays a ``ValueError``) pass through too.

    Parameters
    ----------
    target : object
        Names the file, object or store in the message (a Location, a URL, a store spec).
    scope : {"file", "chunk", "storage"}
        What the block reads.
    what : str
        With ``scope="chunk"``: the dataset and the chunk or region being read.
    """
    try:
        yield
    except LazyioError:
        raise
    except Exception as err:
        ours = _translated(err, target, scope, what)
        if ours is None:
            raise
        _raise_from(ours, err)


class LibraryErrorSummary(Exception):
    """Stands in, in the cause chain of a lazyio error, for a library exception that cannot
    be pickled (aiohttp's carry their response headers): its type and message only."""


def _portable(err: BaseException, depth: int = 0) -> BaseException:
    """``err`` if it pickles (with its chain, where ``distributed`` pickles chains), else a
    :class:`LibraryErrorSummary` chain of the same messages."""
    import pickle

    try:
        pickle.dumps(err)
    except Exception:  # noqa: BLE001 - any pickling failure means: summarise
        summary = LibraryErrorSummary(f"{type(err).__module__}.{type(err).__qualname__}: "
                                      f"{err}")
        following = err.__cause__ or err.__context__
        if following is not None and depth < 8:
            summary.__cause__ = _portable(following, depth + 1)
        return summary
    return err


def _raise_from(ours: LazyioError, err: BaseException) -> NoReturn:
    """``raise ours from err``, with a chain that survives pickling: an error raised in a
    ``distributed`` task reaches the client with its class only if its causes pickle
    (otherwise the client gets a bare ``Exception`` holding its repr)."""
    cause = _portable(err)
    if cause is err:
        raise ours from err
    try:
        raise cause
    except LibraryErrorSummary as handled:
        handled.__context__ = None  # it would be ``err``: the chain must not reach it
        raise ours from handled


def _translated(err: Exception, target: object, scope: Scope, what: str) -> LazyioError | None:
    """lazyio's error for a library error raised while reading ``target`` (``None``: let
    it pass unchanged)."""
    # transport failures first: fsspec reports a refused connection or a 500 as a
    # FileNotFoundError "from" the real cause, and a cut-short body is no damage
    found = transport_error(err, target)
    if found is not None:
        return found
    if isinstance(err, FileNotFoundError):
        return not_found(target, "" if scope == "file" else str(err))
    if isinstance(err, IsADirectoryError):
        return not_a_file(target, "a directory")
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return not_found(target, "a loop of symbolic links")
    if isinstance(err, OSError) and err.errno == errno.ENXIO and "://" not in str(target):
        return not_a_file(target, "a socket or a device without a driver")
    if isinstance(err, PermissionError):
        return access_denied(target, str(err))
    if not isinstance(err, _library_errors()) or scope == "storage":
        return None
    if scope == "chunk":
        return corrupt_chunk(target, what or "data", err)
    if _raised_by_lazyio(err):
        return None
    return damaged(target, err)


P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def transport_errors(target: object) -> Iterator[None]:
    """Turn transport failures (see :func:`transport_error`) raised in the block into
    lazyio's errors naming ``target``; everything else passes unchanged.

    The public entry points wear it (:func:`names_target`), so a failure raised outside
    any :func:`translate` block (a write's upload, a listing) is classified too.
    """
    try:
        yield
    except LazyioError:
        raise
    except Exception as err:
        found = transport_error(err, target)
        if found is None:
            raise
        _raise_from(found, err)


def names_target(argument: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate an entry point so transport failures name its ``argument`` (the source or
    target the caller gave) instead of a temporary or an internal key."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except LazyioError:
                raise
            except Exception as err:
                bound = signature.bind_partial(*args, **kwargs).arguments
                found = transport_error(err, _target_name(bound.get(argument)))
                if found is None:
                    raise
                _raise_from(found, err)

        return wrapper

    return decorate


def _target_name(target: object) -> object:
    url = getattr(target, "url", None)  # a Location
    return url if isinstance(url, str) else target


# ------------------------------------------------------------------ transport failures


def transport_error(err: BaseException, target: object) -> LazyioError | None:
    """Classify a failure of the storage transport (HTTP via aiohttp, S3 via botocore,
    sockets) raised while working on ``target``; ``None`` if ``err`` is none of these.

    Refused connections, unknown hosts, time-outs, HTTP 5xx answers and connections lost
    mid-transfer become :class:`LazyioConnectionError`; HTTP 404 / ``NoSuchKey`` /
    ``NoSuchBucket`` :class:`SourceNotFoundError`; 401/403 and missing credentials
    :class:`AccessDeniedError`; a server that ignores ``Range``
    :class:`RangeNotSupportedError`. The whole cause chain is looked at (fsspec re-raises
    a refused connection as ``FileNotFoundError`` from the real error). Plain socket
    errors count only for a remote ``target``: locally a ``BrokenPipeError`` is a pipe.
    """
    remote = _is_remote(target)
    for e in _chain(err):
        found = (_aiohttp_error(e, target) or _botocore_error(e, target)
                 or _fsspec_error(e, target) or (_socket_error(e, target) if remote else None))
        if found is not None:
            return found
    return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_remote(target: object) -> bool:
    text = str(_target_name(target))
    return "://" in text and not text.startswith(("file://", "memory://"))


def _http_status(target: object, status: int, reason: str) -> LazyioError:
    answer = f"HTTP {status} {reason}".strip()
    if status in (404, 410):
        return not_found(target, f"the server answered {answer}")
    if status in (401, 403):
        return access_denied(target, f"the server answered {answer}")
    if status in (405, 501):
        return UnsupportedError(f"'{target}': the server does not support this request "
                                f"(it answered {answer}); a plain HTTP server is read-only")
    if status >= 500:
        return connection_failed(target, f"the server answered {answer} (a server-side "
                                         "failure; trying again later may work)")
    return connection_failed(target, f"the server refused the request: {answer}")


def _endpoint(url: object) -> str:
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else str(url)


def _aiohttp_error(e: BaseException, target: object) -> LazyioError | None:
    # only loaded if a remote filesystem was used: no aiohttp module, no aiohttp error
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None or not isinstance(e, aiohttp.ClientError):
        return None
    if isinstance(e, aiohttp.ClientResponseError):
        return _http_status(target, e.status, e.message or "")
    if isinstance(e, aiohttp.ClientPayloadError):
        return connection_failed(target, "the connection was lost during the transfer (the "
                                         "server sent fewer bytes than it announced)")
    if isinstance(e, aiohttp.ClientConnectorError):
        where = f"{e.host}:{e.port}"
        if isinstance(e.os_error, socket.gaierror):
            return connection_failed(target, f"the host name '{e.host}' could not be "
                                             "resolved (DNS lookup failed)")
        if e.os_error.errno == errno.ECONNREFUSED:
            return connection_failed(target, f"connection refused by {where} (nothing "
                                             "listens there: is the server running?)")
        return connection_failed(target, f"cannot connect to {where} "
                                         f"({e.os_error.strerror or e.os_error})")
    if isinstance(e, aiohttp.ServerTimeoutError):
        return _timed_out(target)
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return connection_failed(target, "the server closed the connection without "
                                         "answering")
    if isinstance(e, aiohttp.ClientConnectionError):
        return connection_failed(target, f"the connection failed ({type(e).__name__}: {e})")
    return None


def _timed_out(target: object) -> LazyioConnectionError:
    return connection_failed(target, "no answer within the time limit (timed out; the "
                                     "LAZYIO_TIMEOUT environment variable sets it)")


_S3_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_S3_DENIED = {"AccessDenied", "403", "401", "InvalidAccessKeyId", "SignatureDoesNotMatch",
              "ExpiredToken", "InvalidToken", "AllAccessDisabled"}


def _botocore_error(e: BaseException, target: object) -> LazyioError | None:
    boto = sys.modules.get("botocore.exceptions")
    if boto is None or not isinstance(e, boto.BotoCoreError | boto.ClientError):
        return None
    if isinstance(e, boto.ClientError):
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _S3_NOT_FOUND or status == 404:
            return not_found(target, f"{code}: {error.get('Message', '')}".strip(": "))
        if code in _S3_DENIED or status in (401, 403):
            return access_denied(target, f"{code}: {error.get('Message', '')}".strip(": "))
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            return connection_failed(target, f"the storage answered {code or status} "
                                             "(a server-side failure; trying again later "
                                             "may work)")
        return None
    if isinstance(e, boto.NoCredentialsError | boto.PartialCredentialsError):
        return access_denied(target, "no credentials found (pass key and secret in "
                                     "storage_options, or anon=True for a public bucket)")
    if isinstance(e, boto.ConnectTimeoutError | boto.ReadTimeoutError):
        return _timed_out(target)
    if isinstance(e, boto.EndpointConnectionError):
        cause = e.kwargs.get("error")
        detail = _socket_detail(cause) if isinstance(cause, BaseException) else None
        return connection_failed(target, f"cannot connect to the endpoint "
                                         f"{_endpoint(e.kwargs.get('endpoint_url'))}"
                                         + (f" ({detail})" if detail else ""))
    if isinstance(e, boto.ConnectionClosedError):
        return connection_failed(target, "the connection was lost during the transfer")
    if isinstance(e, boto.ConnectionError | boto.HTTPClientError):
        return connection_failed(target, f"the connection failed ({type(e).__name__})")
    return None


def _socket_detail(e: BaseException) -> str | None:
    for cause in _chain(e):
        if isinstance(cause, socket.gaierror):
            return "the host name could not be resolved"
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == \
                errno.ECONNREFUSED:
            return "connection refused: nothing listens there"
    return None


def _fsspec_error(e: BaseException, target: object) -> LazyioError | None:
    if "fsspec" not in sys.modules:
        return None
    from fsspec.exceptions import FSTimeoutError

    if isinstance(e, FSTimeoutError):
        return _timed_out(target)
    # fsspec's HTTP file raises this ValueError when a server ignores Range
    if isinstance(e, ValueError) and "support range requests" in str(e):
        return range_not_supported(target)
    if isinstance(e, NotImplementedError) and _raised_in(e, "fsspec"):
        # e.g. opening an HTTP URL for writing: the filesystem cannot do it at all
        return UnsupportedError(f"'{target}': its storage cannot do this (fsspec's "
                                f"{_protocol(target)} filesystem does not implement it; "
                                "HTTP URLs are read-only)" if _protocol(target) in
                                ("http", "https") else f"'{target}': its storage cannot "
                                "do this (the fsspec filesystem does not implement it)")
    return None


def _raised_in(err: BaseException, package: str) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return name == package or name.startswith(package + ".")


def _protocol(target: object) -> str:
    text = str(_target_name(target))
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def _socket_error(e: BaseException, target: object) -> LazyioError | None:
    if isinstance(e, socket.gaierror):
        return connection_failed(target, "the host name could not be resolved (DNS lookup "
                                         "failed)")
    if isinstance(e, ConnectionRefusedError):
        return connection_failed(target, "connection refused (is the server running?)")
    if isinstance(e, TimeoutError):
        return _timed_out(target)
    if isinstance(e, ConnectionError):
        return connection_failed(target, f"the connection was lost ({e.strerror or e})")
    return None


def reading(where: object) -> contextlib.AbstractContextManager[None]:
    """Translate errors while opening a file and reading its metadata (see
    :func:`translate`)."""
    return translate(where, scope="file")


def _raised_by_lazyio(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return name == "lazyio" or name.startswith("lazyio.")
