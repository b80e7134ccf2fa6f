"""lazyio's exceptions and warnings.

Every error lazyio raises derives from :class:`LazyioError` and from the builtin a caller
would already catch (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError``
keeps working for code written against RosettaSciIO.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal


class LazyioError(Exception):
    """Root of every error raised by lazyio."""


class FormatError(LazyioError, ValueError):
    """The file is not of the expected format, or is malformed."""


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


class LazyioWarning(UserWarning):
    """Warnings issued by lazyio (best-effort reads, dropped metadata, ...)."""


class UnsafeFileError(FormatError):
    """The file asks lazyio to do something unsafe (follow an external link or a virtual
    dataset to other files, or it crashed the HDF5 library in the untrusted-mode check)."""


class VerificationError(LazyioError):
    """What was written does not read back equal to its source (``verify=True``)."""


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
    """The error for a file, object or dataset that does not exist."""
    return SourceNotFoundError(f"No such file or directory: '{target}'" + _paren(detail))


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


def _paren(detail: str) -> str:
    return f" ({detail})" if detail else ""


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


Scope = Literal["file", "chunk", "storage"]


@contextlib.contextmanager
def translate(target: object, *, scope: Scope = "file", what: str = "") -> Iterator[None]:
    """The one place where the errors of storage and file libraries become lazyio's.

    lazyio's own errors pass through. A missing file becomes
    :class:`SourceNotFoundError` and a refusal :class:`AccessDeniedError`, whatever library
    raised them. Other library errors mean damage: with ``scope="file"`` (opening a file,
    reading its metadata) a :class:`FormatError`; with ``scope="chunk"`` (reading array
    data; ``what`` names the dataset and chunk or region) a :class:`CorruptChunkError`;
    with ``scope="storage"`` (a byte transfer) they pass unchanged, since a transport
    failure says nothing about the file.
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
    except FileNotFoundError as err:
        raise not_found(target, "" if scope == "file" else str(err)) from err
    except PermissionError as err:
        raise access_denied(target, str(err)) from err
    except _library_errors() as err:
        if scope == "storage":
            raise
        if scope == "chunk":
            raise corrupt_chunk(target, what or "data", err) from err
        if _raised_by_lazyio(err):
            raise
        raise damaged(target, err) from err


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
