"""The numbers of a cube's data-quality report (:mod:`.report` draws them): availability and co-availability,
per-sample valid and quality-masked (cloud) fractions, time gaps to the anchor, missing reasons and block timings.

All read from the cube (through :class:`~eo_dataset.cube.schema.CubeMeta`) and its build manifest, for a local cube
or one given by URL::

    q = quality("demo.zarr")
    q.modalities["s2l2a"].valid_fraction      # one value per available sample
    q.co_available                            # (modality, modality) sample counts
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from eo_dataset.cube.manifest import MANIFEST_DIR, block_reports, read_manifest
from eo_dataset.cube.schema import CubeMeta, ModalityMeta
from eo_dataset.cube.store import open_cube
from eo_dataset.errors import CubeError
from eo_dataset.outputs import is_url

EXAMPLES = 3  #: example sample ids per missing reason
PATTERNS = 10  #: commonest combinations of available modalities kept


@dataclass(frozen=True)
class ModalityQuality:
    """Per-sample quality numbers of one modality (arrays hold one value per *available* sample)."""

    meta: ModalityMeta
    available: int
    valid_fraction: np.ndarray
    masked_fraction: np.ndarray | None = None  #: None: the collection declares no pixel quality mask
    gap_days: np.ndarray | None = None  #: None: the anchor modality itself

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def rule(self) -> str:
        """The temporal rule in words, e.g. ``nearest, within 7 d``."""
        rule = self.meta.rule or {}
        text = str(rule.get("type", "?")).replace("_", " ")
        tol = rule.get("tolerance_days")
        return f"{text}, within {tol:g} d" if tol is not None else text

    @property
    def static(self) -> bool:
        """A static product (DEM, canopy height ...): its time is the product's, not matched to the anchor."""
        return (self.meta.rule or {}).get("type") == "static"


@dataclass(frozen=True)
class MissingReason:
    """One reason a modality is missing, how many samples it applies to, and the first few of them."""

    modality: str
    reason: str
    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class BlockTiming:
    """Where and how long one build block ran (from its manifest entry)."""

    index: int
    start: int
    stop: int
    align_s: float | None = None
    write_s: float | None = None
    cpu_s: float | None = None
    host: str | None = None
    pid: int | None = None

    @property
    def samples(self) -> int:
        return self.stop - self.start

    @property
    def seconds(self) -> float | None:
        """Wall seconds: aligning plus writing."""
        return None if self.align_s is None else self.align_s + (self.write_s or 0.0)

    @property
    def samples_per_s(self) -> float | None:
        s = self.seconds
        return self.samples / s if s else None


@dataclass(frozen=True)
class Quality:
    """Everything the report shows, as numbers."""

    cube: str
    meta: CubeMeta
    n_samples: int
    modalities: dict[str, ModalityQuality]
    co_available: np.ndarray  #: (modality, modality) sample counts, in ``modalities`` order
    patterns: list[tuple[tuple[str, ...], int]]  #: commonest sets of available modalities
    missing: list[MissingReason]
    blocks: list[BlockTiming]
    n_blocks: int | None  #: blocks of the build (None: no manifest found)
    notes: list[str] = field(default_factory=list)

    @property
    def missing_pairs(self) -> int:
        """Sample/modality pairs without data."""
        return self.n_samples * len(self.modalities) - sum(q.available for q in self.modalities.values())


def block_entries(cube: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]]]:
    """The build manifest and the entry of every finished block, of a local cube or one given by URL.

    Over a URL the block entries are fetched by name (``_build/blocks/NNNNNN.json``, one per block the manifest
    implies), since HTTP cannot list folders. Returns ``(None, {})`` where the cube has no manifest.
    """
    if not is_url(cube):
        return read_manifest(cube), block_reports(cube)
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(cube).rstrip("/"))
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST_DIR}/manifest.json"))
    except FileNotFoundError:
        return None, {}
    n = -(-int(manifest["n_samples"]) // int(manifest["shard_samples"]))
    paths = {f"{root}/{MANIFEST_DIR}/blocks/{i:06d}.json": i for i in range(n)}
    found = fs.cat(list(paths), on_error="omit")
    return manifest, {paths[p]: json.loads(found[p]) for p in sorted(found)}


def quality(cube: str | os.PathLike[str], *, ds: xr.Dataset | None = None,
            entries: dict[int, dict[str, Any]] | None = None,
            manifest: dict[str, Any] | None = None) -> Quality:
    """The report's numbers for a cube (a local path or a URL).

    Args:
        cube: The cube.
        ds: The cube, already opened (default: opened here).
        entries: Its block entries (default: read here, with ``manifest``, by :func:`block_entries`).
        manifest: Its build manifest (read with ``entries`` when those are not given).

    Raises:
        CubeError: not a cube built by eo-dataset.
    """
    ds = open_cube(cube) if ds is None else ds
    meta = CubeMeta.from_attrs(ds.attrs, os.fspath(cube))
    if meta.store != "cube":
        raise CubeError(f"{cube} is an eo-dataset {meta.store} store; 'report' describes cubes built by eo-dataset")
    if entries is None:
        manifest, entries = block_entries(cube)
    names = list(meta.modalities)
    n = ds.sizes["sample"]
    ids = np.array([str(i) for i in ds["sample_id"].values])
    avail = np.stack([ds[f"{m}_available"].values.astype(bool) for m in names], axis=1).reshape(n, len(names))
    per_sample = _per_sample_fractions(ds, meta)
    anchor = ds["anchor_time"].values
    mods = {}
    for j, m in enumerate(names):
        a = avail[:, j]
        masked = None
        if f"{m}/has" in per_sample:
            has, rejected = per_sample[f"{m}/has"], per_sample[f"{m}/masked"]
            keep = a & (has > 0)
            masked = rejected[keep] / has[keep]
        gap = None
        if m != meta.anchor:
            t = ds[f"{m}_time"].values
            keep = a & ~np.isnat(t) & ~np.isnat(anchor)
            gap = (t[keep] - anchor[keep]) / np.timedelta64(1, "D")
        mods[m] = ModalityQuality(meta.modalities[m], int(a.sum()), per_sample[f"{m}/valid"][a], masked, gap)
    co = avail.T.astype(np.int64) @ avail.astype(np.int64)
    patterns = Counter(tuple(m for m, has in zip(names, row, strict=True) if has) for row in avail).most_common()
    notes = []
    n_blocks = None
    if manifest is None:
        notes.append("no build manifest found (_build/manifest.json): the reasons for missing data and the build "
                     "timings are unknown")
    else:
        n_blocks = -(-int(manifest["n_samples"]) // int(manifest["shard_samples"]))
        if len(entries) < n_blocks:
            notes.append(f"incomplete build: {len(entries)} of {n_blocks} blocks done; the samples of the others "
                         "are unavailable without a recorded reason (rerun the same build command to resume)")
    return Quality(cube=os.fspath(cube), meta=meta, n_samples=n, modalities=mods, co_available=co,
                   patterns=patterns[:PATTERNS], missing=_missing(entries, names, ids),
                   blocks=[_timing(i, e) for i, e in sorted(entries.items())], n_blocks=n_blocks, notes=notes)


def _quality_masked(meta: CubeMeta, m: str) -> bool:
    """Whether the modality's collection declares a pixel quality mask (recorded in the cube's resolved recipe)."""
    spec = ((meta.recipe or {}).get("modalities") or {}).get(m) or {}
    return (spec.get("collection") or {}).get("quality") is not None


def _per_sample_fractions(ds: xr.Dataset, meta: CubeMeta) -> dict[str, np.ndarray]:
    """Per sample: ``<m>/valid`` (fraction of valid pixels) and, for quality-masked modalities, ``<m>/has``
    (pixels holding data) and ``<m>/masked`` (of those, pixels the quality mask rejected); one pass over the cube."""
    import dask

    lazy: dict[str, Any] = {}
    for m, mm in meta.modalities.items():
        valid = ds[f"{m}_valid"].astype(bool)
        yx = valid.dims[1:]
        lazy[f"{m}/valid"] = valid.mean(yx)
        if _quality_masked(meta, m):
            data = ds[m]
            has = (data.notnull() if mm.nodata is None else data != mm.nodata).any(data.dims[1])
            lazy[f"{m}/has"] = has.sum(yx)
            lazy[f"{m}/masked"] = (has & ~valid).sum(yx)
    values = dask.compute(*(v.data for v in lazy.values()))
    return {k: np.asarray(v, dtype=np.float64) for k, v in zip(lazy, values, strict=True)}


def _missing(entries: dict[int, dict[str, Any]], names: list[str], ids: np.ndarray) -> list[MissingReason]:
    order = {sid: i for i, sid in enumerate(ids)}
    found: dict[tuple[str, str], list[str]] = {}
    for _, e in sorted(entries.items()):
        for sid, per in e.get("missing", {}).items():
            for m, why in per.items():
                found.setdefault((m, why), []).append(sid)
    rank = {m: i for i, m in enumerate(names)}
    out = [MissingReason(m, why, len(s), tuple(sorted(s, key=lambda x: order.get(x, len(order)))[:EXAMPLES]))
           for (m, why), s in found.items()]
    return sorted(out, key=lambda r: (rank.get(r.modality, len(rank)), -r.count, r.reason))


def _timing(index: int, entry: dict[str, Any]) -> BlockTiming:
    start, stop = entry["samples"]
    t = entry.get("timing") or {}
    return BlockTiming(index, int(start), int(stop), t.get("align_s"), t.get("write_s"), t.get("cpu_s"),
                       t.get("host"), t.get("pid"))
