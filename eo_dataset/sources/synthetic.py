"""The ``synthetic`` source: items everywhere, pixels made instantly from the sample id (no file, no network).

It exists to run a build's whole orchestration at planet scale on one machine (``benchmarks/controlplane.py``): the
engine selects, aligns, writes and records blocks exactly as for real data, only the reading is replaced by a
deterministic generator. Its search answers one item per collection over the block's box, dated in the middle of the
search window (static products: 2020-01-01). Its pixels (:meth:`SyntheticSource.pixels`) depend only on the sample
id, the collection and the band, so two builds of the same samples are byte-identical; continuous bands hold a smooth
ramp plus noise in the band's dtype, categorical ones the collection's class ids, every pixel valid.

Pair it with small patches to keep bytes small: a recipe on the TerraMesh grid whose modalities are at 330 m has
8 x 8 px per sample and the real corpus's sample ids and footprints (``catalogs/synthetic.yaml``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pystac
from shapely.geometry import box, mapping

from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import ModalitySpec, SourceSpec

STATIC_TIME = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest(), "little")


class SyntheticSource:
    """Items covering every block and pixels generated from the sample id (see the module's description)."""

    reads_snapshots = False

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> SyntheticSource:
        """See :class:`eo_dataset.sources.base.SourceType` (the ``href`` is only a label)."""
        return cls(spec.href)

    def __init__(self, href: str = "synthetic") -> None:
        self.href = href

    def extent(self, collection: str) -> tuple[float, float, float, float]:
        """Every collection covers the world."""
        return (-180.0, -90.0, 180.0, 90.0)

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None,
               filter: dict[str, Any] | None = None) -> list[pystac.Item]:
        """One item of ``collection`` over ``bbox``, dated in the middle of [start, end] (see the module)."""
        when = start + (end - start) / 2 if start is not None and end is not None else start or end or STATIC_TIME
        geom = box(*bbox)
        item = pystac.Item(f"synthetic-{collection}-{when:%Y%m%d}", mapping(geom), list(geom.bounds), when,
                           {}, collection=collection)
        item.add_asset("data", pystac.Asset(f"{self.href}#{collection}"))
        return [item]

    def pixels(self, item: pystac.Item, modality: ModalitySpec, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """The item's pixels on the sample grid: (band, y, x) in the storage dtype, and where they are valid."""
        h, w = sample.shape(modality.resolution_m)
        dtype = modality.storage_dtype
        nb = len(modality.band_specs)
        rng = np.random.default_rng(_seed(sample.id, modality.collection.name, item.id))
        classes = modality.collection.classes
        if modality.collection.kind == "categorical" and classes:
            ids = _class_ids(tuple(classes))
            data = ids[rng.integers(0, len(ids), size=(nb, h, w))]
        else:
            lo, hi = (0.0, 1.0) if dtype.kind == "f" else (0.0, float(min(np.iinfo(dtype).max, 10_000)))
            level = rng.uniform(0.2, 0.8, size=(nb, 1, 1))
            noise = rng.normal(0.0, 0.05, size=(nb, h, w))
            data = lo + (hi - lo) * np.clip(level + _slope(h, w) + noise, 0.0, 1.0)
            if dtype.kind in "ui":
                data = np.rint(data)
        return data.astype(dtype), np.ones((h, w), dtype=bool)


@functools.lru_cache(maxsize=64)
def _class_ids(classes: tuple[Any, ...]) -> np.ndarray:
    """The class ids of a categorical collection, sorted (made once: a build asks for them per sample)."""
    ids = np.array(sorted(classes), dtype=np.int64)
    ids.flags.writeable = False
    return ids


@functools.lru_cache(maxsize=64)
def _slope(h: int, w: int) -> np.ndarray:
    """The smooth part of a patch, ``0.2 * (ramp - 0.5)`` with a diagonal ramp from 0 to 1 (made once per size)."""
    ramp = np.add.outer(np.arange(h), np.arange(w)) / max(h + w - 2, 1)
    out = 0.2 * (ramp - 0.5)
    out.flags.writeable = False
    return out
