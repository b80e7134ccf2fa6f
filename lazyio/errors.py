"""lazyio's exceptions and warnings.

Every error lazyio raises derives from :class:`LazyioError` and from the builtin a caller
would already catch (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError``
keeps working for code written against RosettaSciIO.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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


def _read_errors() -> tuple[type[BaseException], ...]:
    import json
    import struct
    import tokenize
    import zipfile

    return (OSError, ValueError, KeyError, IndexError, RuntimeError, EOFError, SyntaxError,
            OverflowError, RecursionError, UnicodeError, struct.error, json.JSONDecodeError,
            tokenize.TokenError, zipfile.BadZipFile)


@contextlib.contextmanager
def reading(where: object) -> Iterator[None]:
    """Turn the errors libraries raise on a damaged file into :class:`FormatError`.

    ``where`` names the file. lazyio's own errors pass through, and so do builtin errors
    raised by lazyio's code itself (argument checks: a bad ``chunks=`` stays a
    ``ValueError``); a missing file becomes :class:`SourceNotFoundError`. Used around
    opening a file and reading its metadata, so that h5py, zarr, zipfile or numpy errors on
    malformed input reach the caller as one error type that names the file.
    """
    try:
        yield
    except LazyioError:
        raise
    except FileNotFoundError as err:
        raise SourceNotFoundError(f"{where}: not found ({err})") from err
    except _read_errors() as err:
        if _raised_by_lazyio(err):
            raise
        raise FormatError(
            f"{where}: damaged or not a valid file ({type(err).__name__}: {err})"
        ) from err


def _raised_by_lazyio(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return name == "lazyio" or name.startswith("lazyio.")
