"""`eo-dataset plan` and `eo-dataset report`: counts, measured costs, and the per-sample missing-data report."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import xarray as xr

from eo_dataset import Grid
from eo_dataset.cli import main
from eo_dataset.pipeline.plan import BlockTiming, measure, plan, split_cpu, world_sample_count
from eo_dataset.spec.grid import EARTH_RADIUS_KM


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
    assert m.n_blocks == 4 and m.workers == 1 and m.cpu_s_fixed >= 0 and 0 < m.pairs_per_sample <= m.n_modalities
    if m.cpu_s_fixed > 0:  # the model gives back the cube's own CPU: start-up once, then per pair with data
        assert m.cpu_s(32, 1) == pytest.approx(m.cpu_s_total)
    total = sum(p.stat().st_size for p in demo_cube.rglob("*") if p.is_file())
    measured = sum(m.bytes_per_sample.values()) * 32
    assert 0.8 * total < measured <= total  # everything but coords, metadata and the manifest


def test_cli_plan_world_and_region(demo_cube, capsys) -> None:
    assert main(["plan", "demo", "--region", "world", "--limit", "9000000", "--from-cube", str(demo_cube)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "9,000,000 samples" in out and "1,125,000 shards" in out
    assert "CPU-hours" in out and "build.shard_samples to >= 90" in out
    m = measure(demo_cube)
    assert f"fixed: {m.cpu_s_fixed:.2f} CPU-s per worker process" in out
    assert f"per sample: {m.cpu_s_per_sample:.3f} CPU-s" in out
    assert f"100 worker(s) x {m.cpu_s_fixed:.2f} + 9,000,000 samples x {m.cpu_s_per_sample:.3f}" in out
    assert main(["plan", "demo", "--region", "11.9,47.8,12.0,47.85"]) == 0
    assert "pass --from-cube" in capsys.readouterr().out.replace("\n", " ")


def test_plan_counts_the_captions(demo_recipe, demo_cube, capsys) -> None:
    assert demo_recipe.captions is not None
    unmeasured = plan(demo_recipe, 1000)
    assert unmeasured.modalities["caption"] == {"raw_bytes": None}  # a caption's length is unknown until measured
    m = measure(demo_cube)
    captions = xr.open_zarr(demo_cube)["caption"].values
    assert m.caption_bytes == pytest.approx(np.mean([len(c.encode()) for c in captions])) and m.caption_bytes > 20
    on_disk = sum(p.stat().st_size for p in (demo_cube / "caption").rglob("*") if p.is_file())
    assert m.bytes_per_sample["caption"] == pytest.approx(on_disk / 32)
    measured = plan(demo_recipe, 1000, m)
    assert measured.modalities["caption"]["raw_bytes"] == pytest.approx(1000 * m.caption_bytes)
    assert measured.arrays["caption"]["objects"] == measured.shards
    assert main(["plan", "demo", "--region", "world", "--limit", "1000", "--from-cube", str(demo_cube)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if "caption" in r]
    assert len(rows) == 1 and "?" not in rows[0]
    assert main(["plan", "demo", "--region", "world", "--limit", "1000"]) == 0
    out = capsys.readouterr().out
    assert "caption" in out and " + ?" in out  # the total says a part is unknown instead of hiding it


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
    assert main(["report", str(demo_cube), "--csv", str(out)]) == 0  # its own CSV: replaced
    mine = tmp_path / "results.csv"
    mine.write_text("keep me\n")
    capsys.readouterr()
    assert main(["report", str(demo_cube), "--csv", str(mine)]) == 2
    assert mine.read_text() == "keep me\n"
    assert "is not a missing-data CSV written by eo-dataset report; it is left untouched" in capsys.readouterr().err


def _blocks(*rows):
    """BlockTiming rows: (pid, finished, cpu_s, samples, pairs)."""
    return [BlockTiming(("host", pid), (t, i), cpu, n, pairs) for i, (pid, t, cpu, n, pairs) in enumerate(rows)]


def test_split_cpu_bills_start_up_once_per_worker_process() -> None:
    fixed, per_pair = 5.0, 0.02  # e.g. osmnx import + OSM extract load, then 0.02 CPU-s per pair with data
    blocks = _blocks((1, 0, fixed + 50 * per_pair, 8, 50), (1, 1, 56 * per_pair, 8, 56), (1, 2, 40 * per_pair, 8, 40),
                     (2, 0.5, fixed + 30 * per_pair, 8, 30), (2, 3, 20 * per_pair, 4, 20))
    m = split_cpu(blocks)
    assert m.fixed_s == pytest.approx(fixed) and m.per_pair_s == pytest.approx(per_pair)
    assert "2 worker process(es)" in m.method
    # a worker's first block is the one it finished first, whatever its index
    late_first = _blocks((1, 5, 56 * per_pair, 8, 56), (1, 1, fixed + 50 * per_pair, 8, 50))
    assert split_cpu(late_first).fixed_s == pytest.approx(fixed)


def test_split_cpu_without_later_blocks() -> None:
    # one block per worker: a line through block CPU against block size (the intercept is the start-up)
    m = split_cpu(_blocks((1, 0, 5 + 0.1 * 64, 16, 64), (2, 0, 5 + 0.1 * 32, 8, 32), (3, 0, 5 + 0.1 * 16, 4, 16)))
    assert m.fixed_s == pytest.approx(5) and m.per_pair_s == pytest.approx(0.1) and "regression" in m.method
    # equal sizes: not separable, start-up stays in the per-pair cost (and says so)
    m = split_cpu(_blocks((1, 0, 9.0, 8, 40), (2, 0, 11.0, 8, 40)))
    assert m.fixed_s == 0 and m.per_pair_s == pytest.approx(20 / 80) and "not separable" in m.method


def test_plan_projects_start_up_per_worker_and_samples(demo_recipe, demo_cube) -> None:
    m = measure(demo_cube)
    p = plan(demo_recipe, 1000, m, workers=10)
    assert p.workers == 10
    assert p.cpu_hours * 3600 == pytest.approx(10 * m.cpu_s_fixed + 1000 * m.cpu_s_per_sample)
    assert p.wall_hours * 3600 == pytest.approx(m.cpu_s_fixed + 100 * m.cpu_s_per_sample)
    assert plan(demo_recipe, 16, m, workers=10).workers == 2  # no more workers than shards (of 8 samples)
    emptier = plan(demo_recipe, 1000, m, workers=10, pairs_per_sample=1.0)
    assert emptier.cpu_hours * 3600 == pytest.approx(10 * m.cpu_s_fixed + 1000 * m.cpu_s_per_pair)
