"""Normalisation statistics computed while building, stored in the cube, read by loaders and models.

Each block records, per modality and band, the count, sum, sum of squares, min and max of its *valid* pixels of
available samples (in stored units), and for categorical modalities a class histogram. The build merges the blocks
(in block order, float64: the result does not depend on which worker finished first) into the root attr ``stats``:
``{modality: {"bands": {band: {count, mean, std, min, max}}, "classes": {id: count}, "units": "stored"}}``.
Physical statistics follow from the modality's ``scale``/``offset``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from eo_dataset.spec.recipe import Recipe


def block_stats(recipe: Recipe, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Sufficient statistics of one block (JSON-able)."""
    out: dict[str, Any] = {}
    for name, m in recipe.modalities.items():
        if name not in arrays:  # a block of an update holds only the updated modalities
            continue
        data, valid, avail = arrays[name], arrays[f"{name}_valid"], arrays[f"{name}_available"]
        mask = valid & avail[:, None, None]
        bands = {}
        for b, band in enumerate(m.band_names):
            v = data[:, b][mask].astype(np.float64)
            v = v[np.isfinite(v)]
            bands[band] = {"count": int(v.size), "sum": float(v.sum()), "sumsq": float((v * v).sum()),
                           "min": float(v.min()) if v.size else None, "max": float(v.max()) if v.size else None}
        entry: dict[str, Any] = {"bands": bands}
        if m.collection.kind == "categorical":
            ids, counts = np.unique(data[:, 0][mask], return_counts=True)
            entry["classes"] = {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)}
        out[name] = entry
    return out


def merge(blocks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Merge block statistics into the cube's ``stats`` (mean, std, min, max per band; class counts)."""
    acc: dict[str, Any] = {}
    for block in blocks:
        for name, entry in block.items():
            a = acc.setdefault(name, {"bands": {}, "classes": {}})
            for band, s in entry["bands"].items():
                t = a["bands"].setdefault(band, {"count": 0, "sum": 0.0, "sumsq": 0.0, "min": None, "max": None})
                t["count"] += s["count"]
                t["sum"] += s["sum"]
                t["sumsq"] += s["sumsq"]
                for key, pick in (("min", min), ("max", max)):
                    if s[key] is not None:
                        t[key] = s[key] if t[key] is None else pick(t[key], s[key])
            for cls, n in entry.get("classes", {}).items():
                a["classes"][cls] = a["classes"].get(cls, 0) + n
    out: dict[str, Any] = {}
    for name, a in acc.items():
        bands = {}
        for band, t in a["bands"].items():
            n = t["count"]
            mean = t["sum"] / n if n else None
            var = max(t["sumsq"] / n - mean * mean, 0.0) if n else None
            bands[band] = {"count": n, "mean": mean, "std": math.sqrt(var) if var is not None else None,
                           "min": t["min"], "max": t["max"]}
        out[name] = {"units": "stored", "bands": bands}
        if a["classes"]:
            out[name]["classes"] = dict(sorted(a["classes"].items(), key=lambda kv: int(kv[0])))
    return out
