"""The scaled demo world (``eo-dataset demo --cells N --seed S``): placement, determinism, versioning, and a built
cube whose modalities depend on each other the way docs/demo-world.md says.

One two-cell world (32 samples) is generated and built once per module through the CLI; generating and building it
is what these tests are about, so the module takes ~1 min of CPU (most of it in the fixture).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eo_dataset.cli.main import main
from eo_dataset.demo.scaled import GENERATOR_VERSION, make_scaled_world, pick_cells, render_cell
from eo_dataset.demo.world import make_world
from eo_dataset.errors import OutputError
from eo_dataset.spec.grid import Grid

MODALITIES = ("s2l2a", "s1rtc", "landsat", "dem", "lulc", "canopy", "osm")


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(world folder, cube) of ``eo-dataset demo --cells 2 --seed 0`` (world made by 2 worker processes)."""
    tmp = tmp_path_factory.mktemp("scaled")
    world, cube = tmp / "demo-world-2c", tmp / "demo-2c.zarr"  # the names docs/demo-world.md uses
    assert main(["demo", "--cells", "2", "--seed", "0", "--world", str(world), "--out", str(cube),
                 "--workers", "2", "--scheduler", "sync"]) == 0
    return world, cube


def test_cells_spread_over_zones_and_latitudes() -> None:
    names = pick_cells(6, seed=0)
    grid = Grid()
    cells = [grid.cell(n) for n in names]
    assert len(set(names)) == 6
    assert len({c.epsg for c in cells}) >= 2
    lats = [grid.samples_of_cell(c)[0].center_lonlat[1] for c in cells]
    assert max(lats) - min(lats) > 5
    assert pick_cells(3, seed=0) == names[:3]  # a bigger world extends a smaller one
    assert pick_cells(6, seed=1) != names


def test_world_is_versioned_and_lists_its_samples(scaled) -> None:
    world, _ = scaled
    stamp = json.loads((world / "world.json").read_text())
    assert (stamp["version"], stamp["cells"], stamp["seed"], stamp["complete"]) == (GENERATOR_VERSION, 2, 0, True)
    catalog = json.loads((world / "catalog.json").read_text())
    assert catalog["eo_dataset:world"] == {"generator": "eo_dataset.demo.scaled", "version": GENERATOR_VERSION,
                                           "cells": 2, "seed": 0}
    ids = (world / "samples.csv").read_text().split()[1:]
    assert len(ids) == 32 and {i.rsplit("_", 2)[0] for i in ids} == set(stamp["cell_ids"])


def test_same_seed_same_bytes_any_workers_any_folder(scaled, tmp_path) -> None:
    world, _ = scaled
    again = make_scaled_world(tmp_path / "again", cells=2, seed=0, workers=1).parent
    assert _hashes(again) == _hashes(world)


def test_another_seed_another_landscape(scaled, tmp_path) -> None:
    world, _ = scaled
    name = json.loads((world / "world.json").read_text())["cell_ids"][0]
    render_cell(str(tmp_path), 0, name, seed=1)
    ours = sorted((world / "io-lulc-annual-v02").rglob("*.tif"))[0]
    theirs = sorted((tmp_path / "io-lulc-annual-v02").rglob("*.tif"))
    assert len(theirs) == 1 and ours.read_bytes() != theirs[0].read_bytes()


def test_other_world_in_the_folder_is_refused(scaled, tmp_path, capsys) -> None:
    world, _ = scaled
    before = _hashes(world)
    with pytest.raises(OutputError, match=r"holds a scaled demo world with --cells 2 --seed 0 .*not --cells 3"):
        make_scaled_world(world, cells=3, seed=0)
    assert main(["demo", "--cells", "2", "--seed", "5", "--world", str(world), "--out", str(tmp_path / "c")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "--cells 2 --seed 5" in err[0], err
    with pytest.raises(OutputError, match="holds a scaled demo world"):
        make_world(world)  # the default world never replaces a scaled one
    assert _hashes(world) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="not a demo world"):
        make_scaled_world(tmp_path / "mine", cells=1, seed=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert make_scaled_world(world, cells=2, seed=0) == world / "catalog.json"  # the same world: reused
    assert _hashes(world) == before


def test_every_modality_has_available_and_missing_samples(scaled) -> None:
    _, cube = scaled
    ds = xr.open_zarr(cube)
    assert ds.sizes["sample"] == 32
    for m in MODALITIES:
        available = ds[f"{m}_available"].values
        assert 0 < available.sum() < len(available), m
    assert all(isinstance(c, str) and c for c in ds.caption.values)


def test_cross_modal_dependencies(scaled) -> None:
    """Land cover drives S2 (NDVI), S1 (VH) and canopy height; terrain drives elevation-dependent classes."""
    _, cube = scaled
    ds = xr.open_zarr(cube)
    lc = ds.lulc.values[:, 0]
    both = (ds.s2l2a_available & ds.lulc_available).values[:, None, None]
    s2 = ds.s2l2a.sel(s2l2a_band=["B04", "B08"]).values.astype(np.float64)
    ndvi = (s2[:, 1] - s2[:, 0]) / np.maximum(s2[:, 1] + s2[:, 0], 1)
    valid = ds.s2l2a_valid.values.astype(bool) & both
    trees, built = ndvi[valid & (lc == 2)], ndvi[valid & (lc == 7)]
    water = ndvi[valid & (lc == 1)]
    assert trees.size > 1000 and built.size > 100
    assert trees.mean() > built.mean() + 0.3
    if water.size > 100:
        assert water.mean() < built.mean()

    canopy = ds.canopy.values[:, 0]
    ok = (ds.canopy_valid.values.astype(bool) & (ds.canopy_available & ds.lulc_available).values[:, None, None]
          & (lc != 0))
    tall = ok & (canopy > 0)
    assert tall.sum() > 1000
    assert (lc[tall] == 2).mean() > 0.9  # canopy only on trees (boundaries blur a little in the warp)
    assert (canopy[ok & (lc != 2)] > 0).mean() < 0.05

    s1 = ds.s1rtc.sel(s1rtc_band="vh").values
    ok = ds.s1rtc_valid.values.astype(bool) & (ds.s1rtc_available & ds.lulc_available).values[:, None, None]
    low = ok & np.isin(lc, (5, 11))  # crops, rangeland: less volume scattering than a canopy
    assert (ok & (lc == 2)).sum() > 1000 and low.sum() > 1000
    assert np.median(s1[ok & (lc == 2)]) > 1.5 * np.median(s1[low])


def test_the_docs_python_snippet_reuses_the_world_and_resumes_the_cube(scaled, monkeypatch) -> None:
    """docs/demo-world.md's Python example, run where the CLI left the same world and cube: nothing is redone."""
    world, cube = scaled
    text = (Path(__file__).resolve().parents[3] / "docs" / "demo-world.md").read_text()
    code = re.search(r"## From Python\n\n```python\n(.*?)```", text, re.S).group(1)
    before = _hashes(world)
    monkeypatch.chdir(world.parent)
    exec(compile(code, "docs/demo-world.md", "exec"), {})
    assert _hashes(world) == before
    assert xr.open_zarr(cube).sizes["sample"] == 32
