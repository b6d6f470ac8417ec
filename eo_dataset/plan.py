"""Planning a build before running it: samples, shards, objects, bytes and CPU time, from a measured cube.

Counts come from the recipe and the grid (the whole world is counted row by row, never enumerated). Bytes and CPU
seconds per sample are *measured*: taken from an existing cube built with the same recipe kind (its chunk sizes on
disk and the per-block CPU times its build manifest records).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eo_dataset.errors import CubeError
from eo_dataset.grid import Grid, _row_lats, _row_lons
from eo_dataset.manifest import block_reports
from eo_dataset.recipe import Recipe
from eo_dataset.store import modality_dims, open_cube


@dataclass(frozen=True)
class Measured:
    """Per-sample costs measured on a built cube."""

    cube: str
    n_samples: int
    cpu_s_per_sample: float
    bytes_per_sample: dict[str, float]  # per modality: data + valid mask + 1-D arrays, compressed on disk


@dataclass
class Plan:
    """What a build of ``n_samples`` will create and cost."""

    n_samples: int
    shard_samples: int
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> objects, raw bytes
    modalities: dict[str, dict[str, float]] = field(default_factory=dict)  # raw and measured bytes
    cpu_hours: float | None = None

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
    lats, _ = _row_lats(grid.spec.cell_size_m)
    cells = sum(len(_row_lons(grid.spec.cell_size_m, r)[0]) for r in range(len(lats)))
    return cells * grid.spec.subcells**2


def measure(cube: str | Path) -> Measured:
    """Bytes per sample per modality (on disk) and CPU seconds per sample (from the build manifest)."""
    path = Path(cube)
    ds = open_cube(path)
    n = ds.sizes["sample"]
    reports = block_reports(path)
    cpu = [e["timing"]["cpu_s"] for e in reports.values() if "cpu_s" in e.get("timing", {})]
    built = sum(e["samples"][1] - e["samples"][0] for e in reports.values() if "cpu_s" in e.get("timing", {}))
    if not cpu:
        raise CubeError(f"{cube}: its manifest has no block timings (built by an older version); rebuild it")
    sizes: dict[str, float] = {}
    for m in ds.attrs["modalities"]:
        total = 0
        for var in (m, f"{m}_valid", f"{m}_available", f"{m}_time", f"{m}_item"):
            total += sum(p.stat().st_size for p in (path / var).rglob("*") if p.is_file())
        sizes[m] = total / n
    return Measured(str(cube), n, sum(cpu) / built, sizes)


def plan(recipe: Recipe, n_samples: int, measured: Measured | None = None) -> Plan:
    """Objects and bytes of a cube of ``n_samples`` samples, and CPU hours if a measurement is given."""
    b = recipe.build.shard_samples
    p = Plan(n_samples, b)
    shards = math.ceil(n_samples / b)
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
    for coord, size in (("sample_id", 16), ("lon", 8), ("lat", 8), ("epsg", 4), ("x0", 8), ("y0", 8),
                        ("anchor_time", 8)):
        p.arrays[coord] = {"objects": shards, "raw_bytes_per_sample": size}
    if measured:
        p.cpu_hours = n_samples * measured.cpu_s_per_sample / 3600
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
