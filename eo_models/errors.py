"""Errors of eo_models: one root, each also the builtin a caller would catch (as in eo_dataset.errors).

:class:`eo_models.cube.NotACubeError` (a ``cube`` argument that is not an eo-dataset cube) lives with the code that
raises it: it is also eo_dataset's ``CubeError``, and this module stays free of eo_dataset imports so that
``eo-models --help`` starts at once.
"""

from __future__ import annotations


class EOModelsError(Exception):
    """Root of every error eo_models raises on purpose."""


class ConfigError(EOModelsError, ValueError):
    """A model or training config is invalid (unknown key, wrong type, values that do not fit together)."""


class CheckpointError(EOModelsError, OSError):
    """A checkpoint or saved model cannot be read, or belongs to another config."""
