"""Planning a build before running it: samples, shards, objects, bytes and CPU time, from a measured cube.

Counts come from the recipe and the grid (the whole world is counted row by row, never enumerated; a region is
enumerated as index arrays). Bytes and CPU seconds are *measured*: taken from an existing cube built with the same
recipe kind (its chunk sizes on disk and the per-block CPU times its build manifest records).

CPU has two parts (:func:`split_cpu`): a fixed start-up per worker process (imports, opening catalogs, loading an
OSM extract: paid by the first block a process runs) and a cost per sample, counted per sample/modality pair with
data (reading and resampling dominate; a sample outside every source costs little). A build of N samples on W
worker processes costs about ``W * fixed + N * per_sample`` CPU-seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eo_dataset.cube.manifest import MANIFEST_DIR, block_reports
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.cube.storage import block_commit_times, is_object_url, locate, pin_version, stored_bytes
from eo_dataset.cube.store import modality_dims, open_cube
from eo_dataset.errors import CubeError
from eo_dataset.spec.grid import Grid, row_lats, row_lons
from eo_dataset.spec.recipe import Recipe


@dataclass(frozen=True)
class BlockTiming:
    """One block's entry in a build manifest, as the CPU model reads it."""

    worker: tuple[str, int]  # (host, pid) of the process that ran it
    order: tuple[float, int]  # (when its entry was written, block index): sorts a worker's blocks
    cpu_s: float
    samples: int
    pairs: int  # sample/modality pairs with data


@dataclass(frozen=True)
class CpuModel:
    """CPU of a build: ``fixed_s`` per worker process plus ``per_pair_s`` per sample/modality pair with data."""

    fixed_s: float
    per_pair_s: float
    method: str  # how fixed and per-pair costs were told apart


def split_cpu(blocks: Sequence[BlockTiming]) -> CpuModel:
    """Separate the fixed start-up of worker processes from the per-sample cost, given per-block timings.

    A process's first block pays its start-up, its later blocks don't. So the cost per pair with data is the CPU of
    all later blocks over their pairs, and the fixed cost is the mean over processes of what their first block cost
    beyond that. With no later block (each process ran one), a least-squares line of block CPU on pairs gives both
    (intercept = fixed) if the block sizes differ; otherwise they cannot be told apart and the start-up stays in the
    per-pair cost (``fixed_s`` = 0, the old over-estimate).
    """
    if not blocks:
        raise ValueError("no block timings")
    use_pairs = sum(b.pairs for b in blocks) > 0  # a cube without any data: count samples instead
    units = {id(b): (b.pairs if use_pairs else b.samples) for b in blocks}
    firsts: dict[tuple[str, int], BlockTiming] = {}
    for b in sorted(blocks, key=lambda b: b.order):
        firsts.setdefault(b.worker, b)
    later = [b for b in blocks if firsts[b.worker] is not b]
    later_units = sum(units[id(b)] for b in later)
    if later_units > 0:
        per = sum(b.cpu_s for b in later) / later_units
        fixed = float(np.mean([max(b.cpu_s - per * units[id(b)], 0.0) for b in firsts.values()]))
        return CpuModel(fixed, per, f"first block of each of {len(firsts)} worker process(es) vs their "
                        f"{len(later)} later block(s)")
    x = np.array([units[id(b)] for b in blocks], dtype=float)
    y = np.array([b.cpu_s for b in blocks])
    if len(set(x.tolist())) >= 2:
        slope, intercept = np.polyfit(x, y, 1)
        if slope > 0:
            return CpuModel(max(float(intercept), 0.0), float(slope),
                            f"regression of block CPU on block size over {len(blocks)} blocks")
    return CpuModel(0.0, float(y.sum() / max(x.sum(), 1.0)),
                    "not separable (one block per worker process, equal sizes): start-up counted per sample")


@dataclass(frozen=True)
class Measured:
    """Costs measured on a built cube.

    ``cpu_s_per_sample`` excludes start-up: it is ``cpu_s_per_pair * pairs_per_sample`` (the cube's own data
    availability); ``cpu_s_fixed`` is the start-up CPU of one worker process.
    """

    cube: str
    n_samples: int
    cpu_s_per_sample: float
    bytes_per_sample: dict[str, float]  # per modality: data + valid mask + 1-D arrays, compressed on disk
    cpu_s_fixed: float = 0.0  # per worker process
    cpu_s_per_pair: float = 0.0  # per sample/modality pair with data
    pairs_per_sample: float = 0.0  # sample/modality pairs with data, per sample, in this cube
    n_modalities: int = 0
    workers: int = 0  # worker processes that built it
    n_blocks: int = 0
    cpu_s_total: float = 0.0  # all blocks
    cpu_method: str = ""
    caption_bytes: float = 0.0  # mean UTF-8 length of a caption (the cube's recipe writes captions)
    sources_local: tuple[str, ...] = ()  # the recipe's sources its build read at local paths
    sources_remote: tuple[str, ...] = ()  # ... and at URLs (over the network)

    def read_note(self) -> str:
        """What the measured build read and wrote, as one caveat on the CPU projection."""
        local, remote = ", ".join(self.sources_local), ", ".join(self.sources_remote)
        tail = "samples with less data than the measured cube's cost less"
        wrote = f" and wrote to object storage ({self.cube})" if is_object_url(self.cube) else ""
        if remote and local:
            return (f"the measured build read {local} from local files and {remote} over the network{wrote}; remote "
                    f"reads of the others would add network time per sample; {tail}")
        if remote:
            return f"the measured build read its sources over the network ({remote}){wrote}; {tail}"
        if wrote:
            return (f"the measured build read local files{wrote}; remote reads add network time per sample; {tail}")
        return f"the measurement reads local files; remote reads add network time per sample; {tail}"

    def cpu_s(self, n_samples: int, workers: int, pairs_per_sample: float | None = None) -> float:
        """Projected CPU-seconds of building ``n_samples`` on ``workers`` worker processes (each pays start-up
        once); ``pairs_per_sample`` defaults to this cube's data availability."""
        per_sample = self.cpu_s_per_sample if pairs_per_sample is None else self.cpu_s_per_pair * pairs_per_sample
        return workers * self.cpu_s_fixed + n_samples * per_sample


@dataclass
class Plan:
    """What a build of ``n_samples`` will create and cost."""

    n_samples: int
    shard_samples: int
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> objects, raw bytes
    modalities: dict[str, dict[str, float | None]] = field(default_factory=dict)  # raw and measured bytes
    cpu_hours: float | None = None  # fixed start-up of the worker processes + samples
    workers: int = 1  # worker processes that pay start-up (at most one per shard)
    wall_hours: float | None = None  # one worker's start-up + its share of the samples

    @property
    def shards(self) -> int:
        """Shards (= build blocks) along the sample dim."""
        return math.ceil(self.n_samples / self.shard_samples)

    @property
    def max_objects_per_array(self) -> int:
        """The largest object count of any array."""
        return max(a["objects"] for a in self.arrays.values())


def world_sample_count(grid: Grid) -> int:
    """Samples of the whole grid: cells per row summed over all rows, times sub-cells per cell."""
    lats, _ = row_lats(grid.spec.cell_size_m)
    cells = sum(len(row_lons(grid.spec.cell_size_m, r)[0]) for r in range(len(lats)))
    return cells * grid.spec.subcells**2


def block_timings(cube: str | Path, at: str | None = None) -> list[BlockTiming]:
    """The per-block timings of a cube's build manifest (blocks built before timings were recorded are left out).

    A local cube's blocks are ordered by when their entry files were written; a cube on object storage's (version
    ``at``, default the latest) by when their commits were made.
    """
    path = Path(cube)
    commits = None
    if is_object_url(str(cube)):
        where: Any = locate(str(cube), at)
        commits = block_commit_times(str(cube), at)
    else:
        where = path
    n_mod = len(CubeMeta.from_attrs(open_cube(where).attrs, str(cube)).modalities)
    out = []
    for index, e in block_reports(where).items():
        t = e.get("timing", {})
        if "cpu_s" not in t:
            continue
        if commits is None:
            entry = path / MANIFEST_DIR / "blocks" / f"{index:06d}.json"
            written = entry.stat().st_mtime if entry.is_file() else 0.0
        else:
            written = commits.get(index, 0.0)
        n = e["samples"][1] - e["samples"][0]
        missing = sum(len(m) for m in e.get("missing", {}).values())
        out.append(BlockTiming((str(t.get("host")), int(t.get("pid") or 0)), (written, index), float(t["cpu_s"]), n,
                               max(n * n_mod - missing, 0)))
    return out


def measure(cube: str | Path, at: str | None = None) -> Measured:
    """Bytes per sample per modality (on disk), and CPU: fixed per worker process and per sample (manifest).

    ``cube``: a local folder, or a cube on object storage (``s3://``, ``gs://``, ``az://``; then ``at`` picks a
    version, default the latest finished one), whose bytes come from one listing of each array's objects.

    Raises:
        CubeError: not a cube, no timings in its manifest, or ``at`` for a cube without versions.
    """
    path = Path(cube)
    remote = is_object_url(str(cube))
    if remote:
        at = pin_version(str(cube), at)  # one version for every read below, whatever is published meanwhile
        if at is None:
            raise CubeError(f"{cube} is a plain Zarr copy (no icechunk repository, so no build manifest there); "
                            "measure the cube it was copied from, or one built at an s3:// URL")
        where: Any = locate(str(cube), at)
    elif at is not None:
        raise CubeError(f"--at reads a version of a cube on object storage (s3://, gs://, az://); {cube} has none")
    else:
        where = path
    ds = open_cube(where)
    n = ds.sizes["sample"]
    blocks = block_timings(cube if remote else path, at)
    if not blocks:
        raise CubeError(f"{cube}: its manifest has no block timings (built by an older version); rebuild it")
    model = split_cpu(blocks)
    modalities = CubeMeta.from_attrs(ds.attrs, str(cube)).modalities
    n_mod = len(modalities)
    built = sum(b.samples for b in blocks)
    pairs = sum(b.pairs for b in blocks)
    pairs_per_sample = pairs / built if pairs else float(n_mod)
    per_sample = model.per_pair_s * (pairs_per_sample if pairs else 1.0)
    per_pair = model.per_pair_s if pairs else model.per_pair_s / n_mod

    def stored(var: str) -> int:  # an array's bytes: its files on disk, or its objects' sizes as listed
        if remote:
            return stored_bytes(where, f"{var}/")
        return sum(p.stat().st_size for p in (path / var).rglob("*") if p.is_file())

    sizes: dict[str, float] = {}
    for m in modalities:
        total = 0
        for var in (m, f"{m}_valid", f"{m}_available", f"{m}_time", f"{m}_item"):
            total += stored(var)
        sizes[m] = total / n
    caption_bytes = 0.0
    if "caption" in ds:
        sizes["caption"] = stored("caption") / n
        caption_bytes = float(np.mean([len(str(c).encode()) for c in ds["caption"].values]))
    sources = (CubeMeta.from_attrs(ds.attrs, str(cube)).recipe or {}).get("sources") or {}
    remote_sources = tuple(k for k, v in sources.items()
                           if isinstance(v, dict) and "://" in str(v.get("href", "")).removeprefix("file://"))
    return Measured(str(cube), n, per_sample, sizes, model.fixed_s, per_pair, pairs_per_sample, n_mod,
                    len({b.worker for b in blocks}), len(blocks), sum(b.cpu_s for b in blocks), model.method,
                    caption_bytes, tuple(k for k in sources if k not in remote_sources), remote_sources)


def plan(recipe: Recipe, n_samples: int, measured: Measured | None = None, workers: int = 1,
         pairs_per_sample: float | None = None) -> Plan:
    """Objects and bytes of a cube of ``n_samples`` samples, and CPU and wall hours on ``workers`` worker processes
    if a measurement is given (each process pays the measured start-up once). ``pairs_per_sample`` (sample/modality
    pairs with data per sample) defaults to the measured cube's."""
    b = recipe.build.shard_samples
    shards = math.ceil(n_samples / b)
    p = Plan(n_samples, b, workers=max(min(workers, shards), 1))
    patch_m = recipe.grid.patch_px * recipe.grid.pixel_size_m
    for name, m in recipe.modalities.items():
        px = int(round(patch_m / m.resolution_m))
        data_raw = len(m.band_specs) * px * px * m.storage_dtype.itemsize
        p.arrays[name] = {"objects": shards, "raw_bytes_per_sample": data_raw, "dims": modality_dims(name, m)}
        p.arrays[f"{name}_valid"] = {"objects": shards, "raw_bytes_per_sample": px * px}
        for suffix, size in (("available", 1), ("time", 8), ("item", 64)):
            p.arrays[f"{name}_{suffix}"] = {"objects": shards, "raw_bytes_per_sample": size}
        raw = n_samples * (data_raw + px * px + 73)
        p.modalities[name] = {"raw_bytes": raw}
        if measured and name in measured.bytes_per_sample:
            p.modalities[name]["stored_bytes"] = n_samples * measured.bytes_per_sample[name]
    if recipe.captions is not None:  # the text modality: its size is a caption's length, known once measured
        raw_caption = measured.caption_bytes if measured and measured.caption_bytes else None
        p.arrays["caption"] = {"objects": shards, "raw_bytes_per_sample": raw_caption}
        p.modalities["caption"] = {"raw_bytes": None if raw_caption is None else n_samples * raw_caption}
        if measured and "caption" in measured.bytes_per_sample:
            p.modalities["caption"]["stored_bytes"] = n_samples * measured.bytes_per_sample["caption"]
    for coord, size in (("sample_id", 16), ("lon", 8), ("lat", 8), ("epsg", 4), ("x0", 8), ("y0", 8),
                        ("anchor_time", 8)):
        p.arrays[coord] = {"objects": shards, "raw_bytes_per_sample": size}
    if measured:
        p.cpu_hours = measured.cpu_s(n_samples, p.workers, pairs_per_sample) / 3600
        p.wall_hours = (measured.cpu_s_fixed + (measured.cpu_s(n_samples, p.workers, pairs_per_sample)
                                                - p.workers * measured.cpu_s_fixed) / p.workers) / 3600
    return p


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"


def stored_total(p: Plan) -> float | None:
    """Total measured bytes, if measured."""
    values = [m.get("stored_bytes") for m in p.modalities.values()]
    return float(np.sum(values)) if all(v is not None for v in values) else None
