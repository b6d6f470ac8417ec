"""A tokenizer's modality from a cube: bands, normalisation statistics, class table (eo_models reaches
eo_dataset only through its cube dataset and modality attrs)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from eo_dataset.torch import band_stats
from eo_models.config import ModalityConfig
from eo_models.cube import open_cube
from eo_models.errors import ConfigError

#: Modalities whose values are better modelled on a log scale, by the cube's collection name prefix.
DB_COLLECTIONS = ("sentinel-1",)
DB_FLOOR = 1e-6  # linear backscatter below this (0, negative noise) is clipped before 10 log10


def to_db(x: Any) -> Any:
    """``10 log10(max(x, DB_FLOOR))`` for numpy arrays and torch tensors."""
    if isinstance(x, np.ndarray):
        return 10.0 * np.log10(np.maximum(x.astype(np.float64), DB_FLOOR))
    return 10.0 * x.float().clamp(min=DB_FLOOR).log10()


def modality_from_cube(cube: str | os.PathLike[str], name: str, *, db_samples: int = 64) -> ModalityConfig:
    """The :class:`ModalityConfig` of modality ``name`` of a cube.

    Continuous modalities take the cube's own per-band statistics. SAR backscatter (``sentinel-1*`` collections)
    is modelled in dB; its dB statistics are computed here from the valid pixels of up to ``db_samples``
    available samples (the cube stores linear statistics). ``osm`` layers become ``multilabel``.

    Raises:
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: the cube has no such modality, or a categorical one without a class table.
    """
    with open_cube(cube) as ds:
        meta = ds.attrs.get("modalities", {})
        if name not in meta:
            raise ConfigError(f"the cube {cube} has no modality {name!r}; it has {sorted(meta)}")
        attrs = meta[name]
        kind = {"osm": "multilabel"}.get(attrs.get("kind", "continuous"), attrs.get("kind", "continuous"))
        bands = tuple(str(b) for b in attrs.get("bands", ds[f"{name}_band"].values))
        common: dict[str, Any] = dict(name=name, kind=kind, bands=bands, units=str(attrs.get("units", "")),
                                      scale=float(attrs.get("scale", 1.0)), offset=float(attrs.get("offset", 0.0)),
                                      resolution_m=float(attrs.get("resolution_m", 10.0)),
                                      stats_from=f"{os.fspath(cube)} ({ds.attrs.get('recipe_hash', '?')})")
        if kind == "categorical":
            table = attrs.get("classes") or {}
            ids = sorted(int(k) for k in table)
            return ModalityConfig(**common, classes=tuple(ids), class_names=tuple(str(table[str(i)]) for i in ids))
        if kind == "multilabel":
            return ModalityConfig(**common)
        if str(attrs.get("collection", "")).startswith(DB_COLLECTIONS):
            mean, std = _db_stats(ds, name, db_samples)
            common["units"] = "dB"
            return ModalityConfig(**common, mean=mean, std=std, transform="db")
        _, mean, std = band_stats(ds.attrs, name)
        return ModalityConfig(**common, mean=tuple(mean), std=tuple(std))


def _db_stats(ds: xr.Dataset, name: str, limit: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    avail = np.flatnonzero(ds[f"{name}_available"].values)[:limit]
    if avail.size == 0:
        raise ConfigError(f"modality {name!r} is available in no sample of the cube; nothing to train on")
    x = ds[name].isel(sample=avail).values.astype(np.float64)  # (n, C, H, W)
    valid = ds[f"{name}_valid"].isel(sample=avail).values.astype(bool)
    mean, std = [], []
    for c in range(x.shape[1]):
        v = to_db(x[:, c][valid])
        mean.append(float(v.mean()) if v.size else 0.0)
        std.append(float(v.std()) if v.size and v.std() > 0 else 1.0)
    return tuple(mean), tuple(std)
