"""The synthetic source: pixels from the sample id, built through the normal engine."""

from __future__ import annotations

import numpy as np
import xarray as xr

from eo_dataset.pipeline.run import build
from eo_dataset.sources import SOURCES, PixelSource, SyntheticSource, open_source
from eo_dataset.spec.grid import Grid
from eo_dataset.spec.recipe import load_recipe

CELL = "489U_44R"


def test_registered_and_opened_from_the_recipe() -> None:
    recipe = load_recipe("synthetic")
    assert SOURCES["synthetic"] is SyntheticSource
    source = open_source(recipe.sources["synthetic"])
    assert isinstance(source, PixelSource)
    items = source.search("sentinel-2-l2a", (10.0, 45.0, 10.1, 45.1), None, None)
    assert len(items) == 1 and items[0].bbox == [10.0, 45.0, 10.1, 45.1]


def test_pixels_depend_only_on_the_sample_and_fit_the_collection() -> None:
    recipe = load_recipe("synthetic")
    source = open_source(recipe.sources["synthetic"])
    s0, s1 = Grid(recipe.grid.spec()).samples_of_cell(CELL)[:2]
    for name, m in recipe.modalities.items():
        item = source.search(m.collection.name, (10.0, 45.0, 10.1, 45.1), None, None)[0]
        a, valid = source.pixels(item, m, s0)
        b, _ = source.pixels(item, m, s0)
        c, _ = source.pixels(item, m, s1)
        assert a.shape == (len(m.band_specs), 8, 8) and a.dtype == m.storage_dtype, name
        assert np.array_equal(a, b) and not np.array_equal(a, c), name
        assert valid.all()
        if m.collection.kind == "categorical":
            assert set(np.unique(a).tolist()) <= set(m.collection.classes), name


def test_a_synthetic_recipe_builds_through_the_engine_byte_identically(tmp_path) -> None:
    recipe = load_recipe("synthetic")
    samples = Grid(recipe.grid.spec()).samples_of_cell(CELL)
    cubes = []
    for name in ("a", "b"):
        report = build(recipe, samples, tmp_path / f"{name}.zarr", scheduler="sync")
        assert report.n_samples == 16 and report.missing == 0 and not report.warnings
        cubes.append(xr.open_zarr(tmp_path / f"{name}.zarr").load())
    a, b = cubes
    xr.testing.assert_identical(a, b)
    for m in recipe.modalities:
        assert bool(a[f"{m}_available"].all()) and a[m].shape[-2:] == (8, 8)
    assert a.attrs["stats"]["s2l2a"]["bands"]["B04"]["count"] == 16 * 64
