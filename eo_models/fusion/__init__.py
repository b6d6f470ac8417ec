"""Stage 2: the 4M-style fusion transformer over the tokens of every modality (masked multimodal token
reconstruction), any-to-any generation and embeddings. See docs/fusion.md.

Public API (imported on first use, so that ``eo_models.fusion.config`` stays light)::

    from eo_models.fusion import FusionModel, train_fusion, generate, Schedule, generate_cube, embed_cube
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "FusionConfig": "config", "TokenModality": "config", "load_fusion_config": "config",
    "MaskingConfig": "masking", "Masks": "masking", "sample_masks": "masking",
    "FusionModel": "model", "load_fusion": "model",
    "Schedule": "generation", "generate": "generation",
    "train_fusion": "train", "FusionTrainResult": "train",
    "generate_cube": "apply", "embed_cube": "apply",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
