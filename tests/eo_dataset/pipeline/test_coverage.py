"""No silent empty builds: a region outside every source fails before writing; an empty modality is named, loudly."""

from __future__ import annotations

import datetime

import pytest
import xarray as xr
import yaml

from eo_dataset import Grid, SourceError, build
from eo_dataset.cli import main
from eo_dataset.errors import GridError
from eo_dataset.spec.recipe import catalogs_dir
from tests.conftest import demo_source_args

EAST = (12.15, 47.80, 12.19, 47.81)  # in the demo world's S2 scenes, east of its land cover, Landsat and OSM


def test_region_outside_every_source_fails_before_writing(tmp_path, demo_recipe) -> None:
    """Longitude and latitude swapped: the samples exist (near Somalia) but no source covers them."""
    samples = Grid().samples_in((47.80, 11.90, 47.85, 12.00))
    assert samples
    out = tmp_path / "swapped.zarr"
    with pytest.raises(GridError, match=r"outside every source of recipe 'demo'.*longitude first"):
        build(demo_recipe, samples, out, scheduler="sync")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_collection_the_source_does_not_hold_is_named(tmp_path, demo_recipe, demo_samples) -> None:
    """A typo in a collection id: the build goes on with the other modalities and says so, naming the ids."""
    m = demo_recipe.modalities["s1rtc"]
    typo = m.model_copy(update={"collection": m.collection.model_copy(update={"name": "sentinel-1-rtcc"})})
    recipe = demo_recipe.model_copy(update={"modalities": {**demo_recipe.modalities, "s1rtc": typo}})
    report = build(recipe, demo_samples[:8], tmp_path / "c.zarr", scheduler="sync")
    (first, *_) = [w for w in report.warnings if w.startswith("modality 's1rtc'")]
    assert "no item of collection 'sentinel-1-rtcc'" in first and "'sentinel-1-rtc'" in first  # what is there
    assert any("found no data for any of the 8 samples" in w and "'sentinel-1-rtcc'" in w for w in report.warnings)


def test_no_collection_anywhere_fails_before_writing(tmp_path, demo_recipe, demo_samples) -> None:
    mods = {name: m.model_copy(update={"collection": m.collection.model_copy(update={"name": f"{name}-nope"})})
            for name, m in demo_recipe.modalities.items() if m.source == "demo"}
    recipe = demo_recipe.model_copy(update={"modalities": mods, "captions": None})
    with pytest.raises(SourceError, match="no modality of recipe 'demo' can find data.*s2l2a-nope"):
        build(recipe, demo_samples[:8], tmp_path / "c.zarr", scheduler="sync")
    assert not (tmp_path / "c.zarr").exists()


def test_modality_without_data_anywhere_is_named_with_why(tmp_path, demo_recipe) -> None:
    samples = Grid().samples_in(EAST)
    report = build(demo_recipe, samples, tmp_path / "east.zarr", scheduler="sync")
    named = {w.split("'")[1] for w in report.warnings if w.startswith("modality")}
    ds = xr.open_zarr(tmp_path / "east.zarr")
    empty = {m for m in demo_recipe.modalities if not bool(ds[f"{m}_available"].any())}
    assert empty and named == empty  # exactly the modalities with no data, each named
    lulc = next(w for w in report.warnings if w.startswith("modality 'lulc'"))
    assert "io-lulc-annual-v02" in lulc and "2023-01-01 to 2023-12-31" in lulc and "no item intersects" in lulc
    assert not report.empty


def test_cli_prints_the_warnings(tmp_path, world, capsys) -> None:
    rc = main(["build", "demo", "--region", ",".join(map(str, EAST)), "--out", str(tmp_path / "e.zarr"),
               *demo_source_args(world), "--scheduler", "sync"])
    err = capsys.readouterr().err.replace("\n", " ")
    assert rc == 0
    assert "warning: modality 'lulc' found no data for any of the" in err


def test_a_cube_with_no_data_at_all_exits_1(tmp_path, world, capsys) -> None:
    """The demo recipe's dated modalities in a summer without scenes: every sample is empty, and the exit code
    says so (the region is inside the sources' extents, so the check before writing lets it through)."""
    recipe = yaml.safe_load((catalogs_dir() / "demo.yaml").read_text())
    recipe["time"].update(start=datetime.date(2019, 6, 1), end=datetime.date(2019, 8, 31))
    recipe["modalities"] = {m: recipe["modalities"][m] for m in ("s2l2a", "s1rtc", "landsat", "lulc")}
    recipe.pop("captions")
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(recipe))
    rc = main(["build", str(path), "--region", ",".join(map(str, EAST)), "--out", str(tmp_path / "n.zarr"),
               *demo_source_args(world), "--scheduler", "sync"])
    err = capsys.readouterr().err.replace("\n", " ")
    n = len(Grid().samples_in(EAST))
    assert rc == 1, err
    assert f"{n} of {n} samples have no data in any modality" in err
    assert f"holds no data: none of its {n} samples found data in any modality" in err


def test_plan_refuses_a_region_outside_every_source(world, monkeypatch, capsys) -> None:
    monkeypatch.chdir(world.parent.parent)  # the demo recipe's sources are relative: demo-world/...
    assert main(["plan", "demo", "--region", "47.80,11.90,47.85,12.00"]) == 2
    assert "lies outside every source of recipe 'demo'" in capsys.readouterr().err.replace("\n", " ")
    assert main(["plan", "demo", "--region", "11.90,47.80,12.00,47.85"]) == 0


def test_expected_availability_bounds_what_a_build_finds(demo_recipe, demo_samples, demo_cube) -> None:
    """plan's estimate (a search per sample, no scene rules) is an upper bound of the build's availability, and
    close to it on the demo world."""
    from eo_dataset.pipeline.coverage import expected_availability

    expected = expected_availability(demo_recipe, demo_samples)
    ds = xr.open_zarr(demo_cube)
    assert set(expected) == set(demo_recipe.modalities)  # all local sources
    for m, frac in expected.items():
        found = float(ds[f"{m}_available"].mean())
        assert found <= frac <= found + 0.4, (m, found, frac)
