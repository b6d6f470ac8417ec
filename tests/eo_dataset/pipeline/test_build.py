"""Builds: resume skips finished blocks, a changed recipe is refused, one broken item never stops a build."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pystac
import pytest
import xarray as xr

from eo_dataset import CubeError, Grid, build
from eo_dataset.cli import main
from eo_dataset.cube.manifest import done_blocks
from eo_dataset.errors import OutputError
from tests.conftest import demo_source_args


def test_rerun_skips_done_blocks_and_redoes_missing_ones(tmp_path, demo_recipe, demo_samples, demo_cube) -> None:
    out = tmp_path / "cube.zarr"
    shutil.copytree(demo_cube, out)
    assert done_blocks(out) == {0, 1, 2, 3}
    report = build(demo_recipe, demo_samples, out, scheduler="sync")
    assert report.skipped_blocks == 4  # nothing was redone
    assert report.missing == sum(int((~xr.open_zarr(out)[f"{m}_available"]).sum()) for m in demo_recipe.modalities)
    # lose block 2 as a crash would (data half written, manifest entry absent): it alone is rebuilt
    (out / "_build" / "blocks" / "000002.json").unlink()
    ds = xr.open_zarr(out)
    ds.s2l2a[16:24].values  # noqa: B018  (read before damaging)
    report = build(demo_recipe, demo_samples, out, scheduler="sync")
    assert report.skipped_blocks == 3 and report.n_blocks == 4
    a, b = xr.open_zarr(demo_cube), xr.open_zarr(out)
    for name in ("s2l2a", "s1rtc", "lulc", "s2l2a_valid", "s2l2a_available", "s2l2a_item", "anchor_time"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_changed_recipe_is_refused_unless_overwrite(tmp_path, demo_recipe, demo_samples) -> None:
    out = tmp_path / "cube.zarr"
    build(demo_recipe, demo_samples[:8], out, scheduler="sync")
    changed = demo_recipe.model_copy(update={"build": demo_recipe.build.model_copy(update={"codec": "zstd"})})
    with pytest.raises(CubeError, match="another recipe.*--overwrite"):
        build(changed, demo_samples[:8], out, scheduler="sync")
    with pytest.raises(CubeError, match="another sample list"):
        build(demo_recipe, demo_samples[:16], out, scheduler="sync")
    report = build(changed, demo_samples[:8], out, scheduler="sync", overwrite=True)
    assert report.skipped_blocks == 0
    assert xr.open_zarr(out).attrs["recipe_hash"] == changed.hash


@pytest.mark.parametrize("overwrite", [False, True])
def test_existing_non_cube_is_refused_whatever_the_flags(tmp_path, demo_recipe, demo_samples, overwrite) -> None:
    """A user's folder is never replaced, even with --overwrite; the message suggests no destructive flag."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(OutputError, match="not a cube built by eo-dataset") as err:
        build(demo_recipe, demo_samples[:8], tmp_path / "results", scheduler="sync", overwrite=overwrite)
    assert "--overwrite" not in str(err.value)
    assert (tmp_path / "results" / "results.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["results.csv"]


def test_overwrite_refuses_a_cube_holding_other_files(tmp_path, demo_recipe, demo_samples, demo_cube) -> None:
    """--overwrite replaces a cube only if every file in it is the cube's: a user's file inside survives."""
    out = tmp_path / "cube.zarr"
    shutil.copytree(demo_cube, out)
    (out / "notes.txt").write_text("mine")
    (out / "s2l2a" / "mine.npy").write_bytes(b"x")
    with pytest.raises(OutputError, match="also holds other files") as err:
        build(demo_recipe, demo_samples[:8], out, scheduler="sync", overwrite=True)
    assert "notes.txt" in str(err.value) and "--overwrite" not in str(err.value)
    assert (out / "notes.txt").read_text() == "mine" and (out / "s2l2a" / "mine.npy").exists()
    assert xr.open_zarr(out).sizes["sample"] == 32  # the cube itself is untouched too


def test_empty_folder_is_built_into(tmp_path, demo_recipe, demo_samples) -> None:
    (tmp_path / "x.zarr").mkdir()
    report = build(demo_recipe, demo_samples[:8], tmp_path / "x.zarr", scheduler="sync")
    assert report.n_samples == 8 and xr.open_zarr(tmp_path / "x.zarr").sizes["sample"] == 8


def test_broken_item_marks_only_its_samples(tmp_path, demo_recipe, demo_samples, world, demo_cube) -> None:
    """A Sentinel-1 scene whose file is gone: its samples lose s1rtc (with the reason), nothing else changes."""
    items = list(pystac.Catalog.from_file(str(world)).get_items(recursive=True))
    broken = "S1A_IW_GRDH_1SDV_20230708T053012_049087_rtc_32632"
    for item in items:
        for asset in item.assets.values():
            asset.href = asset.get_absolute_href()
        if item.id == broken:
            item.assets["vv"].href = str(tmp_path / "gone" / "vv.tif")
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    recipe = demo_recipe.with_sources({"demo": str(coll)})
    out = tmp_path / "cube.zarr"
    report = build(recipe, demo_samples, out, scheduler="sync")
    ref, ds = xr.open_zarr(demo_cube), xr.open_zarr(out)
    used = np.array([broken in s for s in ref.s1rtc_item.values])
    assert used.sum() > 0
    assert not ds.s1rtc_available.values[used].any()
    np.testing.assert_array_equal(ds.s1rtc_available.values[~used], ref.s1rtc_available.values[~used])
    for name in ("s2l2a", "landsat", "dem", "lulc", "canopy"):
        np.testing.assert_array_equal(ds[f"{name}_available"].values, ref[f"{name}_available"].values)
    np.testing.assert_array_equal(ds.s2l2a.values, ref.s2l2a.values)
    reasons = [m["s1rtc"] for e in json.loads("[" + ",".join(
        p.read_text() for p in sorted((out / "_build" / "blocks").glob("*.json"))) + "]")
        for m in e["missing"].values() if "s1rtc" in m]
    assert sum("cannot open" in r and "gone" in r for r in reasons) == used.sum()
    assert report.missing > 0


def test_cli_demo_on_a_local_cluster_then_info(tmp_path, world, capsys) -> None:
    """`eo-dataset demo` end to end (LocalCluster with 2 worker processes), then `info` and a resume."""
    out = tmp_path / "demo.zarr"
    assert main(["demo", "--world", str(world.parent), "--out", str(out), "--workers", "2"]) == 0
    ds = xr.open_zarr(out)
    assert ds.sizes["sample"] == 32 and bool(ds.s2l2a_available.any())
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "s2l2a" in text and "31/32" in text and "no item intersects" in text
    assert main(["demo", "--world", str(world.parent), "--out", str(out), "--scheduler", "sync"]) == 0
    assert "4 of 4 blocks already done" in capsys.readouterr().err.replace("\n", " ")


def test_cli_build_from_region_and_cell(tmp_path, world, capsys) -> None:
    out = tmp_path / "r.zarr"
    rc = main(["build", "demo", "--region", "11.90,47.80,11.95,47.83", "--out", str(out),
               *demo_source_args(world), "--scheduler", "sync"])
    assert rc == 0
    ds = xr.open_zarr(out)
    expected = [s.id for s in Grid().samples_in((11.90, 47.80, 11.95, 47.83))]
    assert 0 < len(expected) < 16 and list(ds.sample_id.values) == expected
    assert main(["cell", "--", "-48.11", "-25.32"]) == 0
    cell = json.loads(capsys.readouterr().out)
    assert cell["sample_id"] == "282D_485L_3_3" and cell["epsg"] == 32722
    assert cell["resolutions"]["30 m"] == [88, 88]


@pytest.mark.parametrize(("argv", "message"), [
    (["build", "nope.yaml", "--out", "x.zarr", "--cells", "532U_89R"], "recipe file 'nope.yaml' not found"),
    (["build", "demo", "--out", "x.zarr"], "say which samples"),
    (["build", "demo", "--out", "x.zarr", "--cells", "532X_89R"], "not of the form"),
    (["build", "demo", "--out", "x.zarr", "--region", "1,2,3"], "WEST,SOUTH,EAST,NORTH"),
    (["build", "demo", "--out", "x.zarr", "--cells", "532U_89R", "--source", "nope=a"], "recipe's sources"),
    (["info", "missing.zarr"], "not a Zarr v3 store"),
])
def test_cli_errors_are_clear(tmp_path, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_finalize_removes_writes_a_dead_worker_left(tmp_path, demo_cube) -> None:
    """A worker killed mid-write leaves ``<key>.<uuid>.partial``; its block is redone elsewhere, and finalize
    (all blocks written) removes the leftover, so the cube equals an uninterrupted build."""
    from eo_dataset.cube.store import finalize
    from tests.eo_dataset.cube.test_resume import cube_files

    out = tmp_path / "cube.zarr"
    shutil.copytree(demo_cube, out)
    stray = out / "s1rtc" / "c" / "0" / "0" / "0" / "0.b6ea359db13a4b2baa9c916677a589ea.partial"
    stray.write_bytes(b"half a shard")
    finalize(out)
    assert not stray.exists()
    assert cube_files(out) == cube_files(demo_cube)
