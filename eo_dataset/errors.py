"""The package's error root.

Every error raised on purpose by :mod:`eo_dataset` derives from :class:`EODatasetError` and also from the
builtin it naturally is (``ValueError`` for bad input, ``OSError`` for unreadable data), so callers can catch
either.
"""

from __future__ import annotations


class EODatasetError(Exception):
    """Root of all errors raised on purpose by eo_dataset."""


class RecipeError(EODatasetError, ValueError):
    """A recipe (YAML) is malformed: the message names the key path, what was found and what was expected."""


class GridError(EODatasetError, ValueError):
    """A coordinate, sample id or region is outside or inconsistent with the sample grid."""


class SourceError(EODatasetError, OSError):
    """A source (catalog, STAC API, file) could not be read or searched."""


class CubeError(EODatasetError, ValueError):
    """A cube on disk does not match what was asked of it (other recipe, other samples, not a cube)."""


class OutputError(EODatasetError, ValueError):
    """An output path cannot be written: a URL, an unwritable place, or something that is not ours to replace."""
