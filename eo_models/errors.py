"""Errors of eo_models: one root, each also the builtin a caller would catch (as in eo_dataset.errors)."""

from __future__ import annotations


class EOModelsError(Exception):
    """Root of every error eo_models raises on purpose."""


class ConfigError(EOModelsError, ValueError):
    """A model or training config is invalid (unknown key, wrong type, values that do not fit together)."""


class CheckpointError(EOModelsError, OSError):
    """A checkpoint or saved model cannot be read, or belongs to another config."""
