"""eo_models: the 4M4EO model zoo. Per-modality tokenizers trained on eo-dataset cubes, saved to and loaded from
the Hugging Face Hub with their bands, normalisation and class tables.

Torch and the model libraries come with the ``models`` extra: ``pip install 'eo-dataset[models]'``.
"""

from eo_models.errors import CheckpointError, ConfigError, EOModelsError

__all__ = ["CheckpointError", "ConfigError", "EOModelsError"]
