"""`eo-dataset plan` and `eo-dataset report`: counts, measured costs, and the per-sample missing-data report."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import xarray as xr

from eo_dataset import Grid
from eo_dataset.cli import main
from eo_dataset.grid import EARTH_RADIUS_KM
from eo_dataset.plan import measure, plan, world_sample_count


def test_world_count_matches_the_sphere_area() -> None:
    g = Grid()
    n = world_sample_count(g)
    cells_by_area = 4 * math.pi * EARTH_RADIUS_KM**2 / 10**2
    assert n % 16 == 0
    assert n / 16 == pytest.approx(cells_by_area, rel=0.005)


def test_region_plan_counts(demo_recipe) -> None:
    samples = Grid().samples_in((11.9, 47.8, 12.0, 47.85))
    p = plan(demo_recipe, len(samples))
    b = demo_recipe.build.shard_samples
    assert p.shards == math.ceil(len(samples) / b)
    assert p.arrays["s2l2a"]["objects"] == p.shards
    assert p.arrays["s2l2a"]["raw_bytes_per_sample"] == 12 * 264 * 264 * 2
    assert p.arrays["landsat"]["raw_bytes_per_sample"] == 6 * 88 * 88 * 2


def test_measure_on_the_demo_cube(demo_cube) -> None:
    m = measure(demo_cube)
    assert m.n_samples == 32 and m.cpu_s_per_sample > 0
    total = sum(p.stat().st_size for p in demo_cube.rglob("*") if p.is_file())
    measured = sum(m.bytes_per_sample.values()) * 32
    assert 0.8 * total < measured <= total  # everything but coords, metadata and the manifest


def test_cli_plan_world_and_region(demo_cube, capsys) -> None:
    assert main(["plan", "demo", "--region", "world", "--limit", "9000000", "--from-cube", str(demo_cube)]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "9,000,000 samples" in out and "1,125,000 shards" in out
    assert "CPU-hours" in out and "build.shard_samples to >= 90" in out
    assert main(["plan", "demo", "--region", "11.9,47.8,12.0,47.85"]) == 0
    assert "pass --from-cube" in capsys.readouterr().out.replace("\n", " ")


def test_cli_report_lists_every_missing_pair(demo_cube, tmp_path, capsys) -> None:
    out = tmp_path / "missing.csv"
    assert main(["report", str(demo_cube), "--csv", str(out)]) == 0
    assert "4 of 4 blocks done" in capsys.readouterr().out.replace("\n", " ")
    with open(out) as f:
        rows = list(csv.DictReader(f))
    ds = xr.open_zarr(demo_cube)
    expected = {(str(sid), m) for m in ds.attrs["modalities"]
                for sid in ds.sample_id.values[~ds[f"{m}_available"].values]}
    assert {(r["sample_id"], r["modality"]) for r in rows} == expected
    assert all(r["reason"] for r in rows)
    assert np.sum([r["modality"] == "s1rtc" for r in rows]) == int((~ds.s1rtc_available).sum())
