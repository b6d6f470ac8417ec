"""PyTorch loading of eo-dataset cubes (the only place that imports torch).

- :class:`CubeDataset`: aligned multi-modal samples as tensors, crops aligned across resolutions, the cube's
  normalisation, local paths or fsspec URLs, one Zarr handle per worker.
- :func:`collate`: batches of samples with different modality sets (zero-filled, flagged).
- :class:`ShardSampler`, :class:`BalancedBatchSampler`, :func:`indices_with`: modality-aware, shard-aware,
  ``torch.distributed``-aware sampling.
- :class:`Normalize`: the cube's per-band statistics as a module (shared with eo_models).
- :class:`CubeGeoDataset`: the cube as a TorchGeo ``GeoDataset`` (imported lazily: needs torchgeo).

See ``docs/loading.md``.
"""

from __future__ import annotations

from typing import Any

from eo_dataset.torch.collate import collate
from eo_dataset.torch.crop import CropPlan, plan_crop
from eo_dataset.torch.dataset import CubeDataset, ModalityInfo
from eo_dataset.torch.normalize import Normalize, band_stats
from eo_dataset.torch.samplers import BalancedBatchSampler, ShardSampler, indices_with

__all__ = [
    "BalancedBatchSampler", "CropPlan", "CubeDataset", "CubeGeoDataset", "ModalityInfo", "Normalize",
    "ShardSampler", "band_stats", "collate", "indices_with", "plan_crop",
]


def __getattr__(name: str) -> Any:
    if name == "CubeGeoDataset":  # torchgeo is heavy (lightning, kornia ...): import it only when asked for
        from eo_dataset.torch.torchgeo import CubeGeoDataset

        return CubeGeoDataset
    raise AttributeError(f"module 'eo_dataset.torch' has no attribute {name!r}")
