"""lazyio's exceptions and warnings.

Every error lazyio raises derives from :class:`LazyioError` and from the builtin a caller
would already catch (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError``
keeps working for code written against RosettaSciIO.
"""

from __future__ import annotations


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


class TargetExistsError(LazyioError, FileExistsError):
    """The write target exists and ``overwrite`` was not given."""


class UnsupportedError(LazyioError, NotImplementedError):
    """The request is valid but lazyio cannot honour it (e.g. a codec it cannot decode)."""


class LazyioWarning(UserWarning):
    """Warnings issued by lazyio (best-effort reads, dropped metadata, ...)."""
