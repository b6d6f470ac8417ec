"""Changing a built cube: appending a region, rebuilding one modality, without rewriting the rest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import xarray as xr

from eo_dataset import CubeError, build
from eo_dataset.cli import main
from eo_dataset.cube.manifest import done_blocks, read_manifest
from tests.conftest import demo_source_args
from tests.eo_dataset.cube.test_resume import cube_files


def _stamp(path: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of every object: a rewrite (Zarr writes temp file + rename) changes the inode."""
    return {str(p.relative_to(path)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.rglob("*")
            if p.is_file() and p.relative_to(path).parts[0] != "_build"}


def test_append_a_region(tmp_path, demo_recipe, demo_samples, demo_cube) -> None:
    out = tmp_path / "cube.zarr"
    build(demo_recipe, demo_samples[:12], out, scheduler="sync")  # blocks: 0 (8 samples) and 1 (4, partial)
    before = _stamp(out)
    # the new region overlaps the old one: known samples are not added twice
    report = build(demo_recipe, demo_samples[8:], out, scheduler="sync", append=True)
    assert report.n_samples == 32 and report.skipped_blocks == 1  # block 0 kept; block 1 redone with new samples
    after = _stamp(out)
    assert after["s2l2a/c/0/0/0/0"] == before["s2l2a/c/0/0/0/0"]  # the full shard of block 0 was not rewritten
    assert after["s2l2a/c/1/0/0/0"] != before["s2l2a/c/1/0/0/0"]
    ds = xr.open_zarr(out)
    assert list(ds.sample_id.values) == [s.id for s in demo_samples]
    assert cube_files(out) == cube_files(demo_cube)  # exactly the cube a single build of all 32 samples writes
    assert read_manifest(out).get("append_from") is None


def test_append_refuses_another_recipe(tmp_path, demo_recipe, demo_samples) -> None:
    out = tmp_path / "cube.zarr"
    build(demo_recipe, demo_samples[:8], out, scheduler="sync")
    other = demo_recipe.model_copy(update={"build": demo_recipe.build.model_copy(update={"zstd_level": 9})})
    with pytest.raises(CubeError, match="appending needs the same recipe"):
        build(other, demo_samples[8:16], out, scheduler="sync", append=True)


def _lulc_changed(recipe):
    lulc = recipe.modalities["lulc"].model_copy(update={"resolution_m": 30.0, "resampling": "mode"})
    return recipe.model_copy(update={"modalities": {**recipe.modalities, "lulc": lulc}})


def test_update_one_modality(tmp_path, demo_recipe, demo_samples, demo_cube) -> None:
    changed = _lulc_changed(demo_recipe)
    reference = tmp_path / "ref.zarr"
    build(changed, demo_samples, reference, scheduler="sync")
    out = tmp_path / "cube.zarr"
    shutil.copytree(demo_cube, out)
    before = _stamp(out)
    with pytest.raises(CubeError, match=r"--update lulc"):
        build(changed, demo_samples, out, scheduler="sync")  # a plain build says how to update
    build(changed, demo_samples, out, scheduler="sync", update=["lulc"])
    after = _stamp(out)
    untouched = [k for k in before if k.split("/")[0] in ("s2l2a", "s1rtc", "landsat", "dem", "canopy")
                 or k.startswith("anchor_time")]
    assert untouched and all(after[k] == before[k] for k in untouched)
    ds = xr.open_zarr(out)
    assert ds.lulc.dims[-1] == "x_30" and ds.lulc.shape == (32, 1, 88, 88)
    assert cube_files(out) == cube_files(reference)
    assert done_blocks(out) == {0, 1, 2, 3} and read_manifest(out)["recipe_hash"] == changed.hash


def test_update_refuses_other_changes(tmp_path, demo_recipe, demo_samples, demo_cube) -> None:
    out = tmp_path / "cube.zarr"
    shutil.copytree(demo_cube, out)
    changed = _lulc_changed(demo_recipe)
    with pytest.raises(CubeError, match=r"not only in \['dem'\]"):
        build(changed, demo_samples, out, scheduler="sync", update=["dem"])
    with pytest.raises(CubeError, match="anchor modality"):
        build(demo_recipe, demo_samples, out, scheduler="sync", update=["s2l2a"])
    with pytest.raises(CubeError, match="not modalities of the recipe"):
        build(demo_recipe, demo_samples, out, scheduler="sync", update=["nope"])


def test_cli_append_and_update(tmp_path, world) -> None:
    out = tmp_path / "cube.zarr"
    base = ["build", "demo", *demo_source_args(world), "--out", str(out), "--scheduler", "sync"]
    assert main(base + ["--region", "11.90,47.80,11.95,47.83"]) == 0
    n = xr.open_zarr(out).sizes["sample"]
    assert main(base + ["--region", "12.05,47.80,12.10,47.83", "--append"]) == 0
    assert xr.open_zarr(out).sizes["sample"] > n
    assert main(base + ["--region", "12.05,47.80,12.10,47.83", "--update", "lulc"]) == 2  # samples differ
