"""A tokenizer's modality from a cube: bands, normalisation statistics, class table, transform, all from the cube's
metadata (:class:`~eo_dataset.cube.schema.ModalityMeta`); eo_models reaches eo_dataset only through its cube schema
and loader."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from eo_models.config import ModalityConfig
from eo_models.cube import cube_meta, open_cube
from eo_models.errors import ConfigError

DB_FLOOR = 1e-6  # linear backscatter below this (0, negative noise) is clipped before 10 log10


def to_db(x: Any) -> Any:
    """``10 log10(max(x, DB_FLOOR))`` for numpy arrays and torch tensors."""
    if isinstance(x, np.ndarray):
        return 10.0 * np.log10(np.maximum(x.astype(np.float64), DB_FLOOR))
    return 10.0 * x.float().clamp(min=DB_FLOOR).log10()


def modality_from_cube(cube: str | os.PathLike[str], name: str, *, db_samples: int = 64) -> ModalityConfig:
    """The :class:`ModalityConfig` of modality ``name`` of a cube.

    Continuous modalities take the cube's own per-band statistics. A modality whose collection declares
    ``transform: db`` (SAR backscatter) is modelled in dB; its dB statistics are computed here from the valid pixels
    of up to ``db_samples`` available samples (the cube stores linear statistics).

    Raises:
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: the cube has no such modality, or a categorical one without a class table.
    """
    with open_cube(cube, schema=False) as ds:
        meta = cube_meta(ds, cube)
        if name not in meta.modalities:
            raise ConfigError(f"the cube {cube} has no modality {name!r}; it has {sorted(meta.modalities)}")
        m = meta.modalities[name]
        common: dict[str, Any] = dict(name=name, kind=m.kind, bands=m.bands, units=m.units, scale=m.scale,
                                      offset=m.offset, resolution_m=m.resolution_m,
                                      stats_from=f"{os.fspath(cube)} ({meta.recipe_hash or '?'})")
        if m.kind == "categorical":
            table = m.class_table
            return ModalityConfig(**common, classes=tuple(table), class_names=tuple(table.values()))
        if m.kind == "multilabel":
            return ModalityConfig(**common)
        if m.kind != "continuous":
            raise ConfigError(f"modality {name!r} is {m.kind}: image tokenizers take continuous, categorical or "
                              "multilabel modalities (captions have their own tokenizer)")
        if m.transform == "db":
            mean, std = _db_stats(ds, name, db_samples)
            common["units"] = "dB"
            return ModalityConfig(**common, mean=mean, std=std, transform="db")
        _, mean, std = meta.band_stats(name)
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
