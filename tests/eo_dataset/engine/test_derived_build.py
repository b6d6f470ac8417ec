"""Derived modalities built over the demo world: NDVI equals (B08 - B04) / (B08 + B04) of the built S2 arrays, is
invalid exactly where an input is, is described by the cube schema, loads with CubeDataset, and is computed from the
cube's inputs when an update rebuilds it alone."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml

from eo_dataset import CubeError, Grid, build
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.cube.update import begin_update
from eo_dataset.engine.align import align_block
from eo_dataset.engine.derived import derive_block
from eo_dataset.spec.recipe import Recipe, catalogs_dir, parse_recipe

NDVI = "(s2l2a.B08 - s2l2a.B04) / (s2l2a.B08 + s2l2a.B04)"
N_SAMPLES = 8  # one block of the demo recipe


def make_recipe(world: Path) -> Recipe:
    """The demo recipe with S2 and land cover, NDVI as int16 and float32, and a tree mask from land cover and NDVI."""
    from eo_dataset.demo.world import demo_sources

    data: dict[str, Any] = yaml.safe_load((catalogs_dir() / "demo.yaml").read_text())
    data["modalities"] = {k: v for k, v in data["modalities"].items() if k in ("s2l2a", "lulc")}
    ndvi_f32 = {"name": "ndvi-f32", "kind": "continuous", "dtype": "float32", "units": "NDVI", "licence": "test",
                "bands": [{"name": "ndvi"}]}
    trees = {"name": "trees", "kind": "multilabel", "dtype": "uint8", "nodata": 255, "units": "presence",
             "licence": "test", "bands": [{"name": "trees"}]}
    data["modalities"] |= {
        "ndvi": {"collection": "ndvi", "resolution_m": 10, "derived": {"expression": NDVI}},
        "ndvi_f": {"collection": ndvi_f32, "resolution_m": 10,
                   "derived": {"inputs": {"nir": "s2l2a.B08", "red": "s2l2a.B04"},
                               "expression": "(nir - red) / (nir + red)"}},
        "trees": {"collection": trees, "resolution_m": 10,
                  "derived": {"expression": "where((lulc.lulc == 2) & (ndvi.NDVI > 0.5), 1, 0)"}},
    }
    return parse_recipe(data, catalogs_dir()).with_sources(demo_sources(world))


@pytest.fixture(scope="module")
def samples(demo_samples):
    return demo_samples[:N_SAMPLES]


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory, world: Path, samples) -> Path:
    out = tmp_path_factory.mktemp("derived") / "ndvi.zarr"
    build(make_recipe(world), samples, out, scheduler="sync")
    return out


@pytest.fixture(scope="module")
def ds(cube: Path) -> xr.Dataset:
    return xr.open_zarr(cube).load()


def expected_ndvi(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """NDVI and where it is defined, computed here from the cube's S2 arrays and attrs."""
    s2 = ds.s2l2a
    scale, offset, nodata = s2.attrs["scale"], s2.attrs["offset"], s2.attrs["nodata"]
    b08, b04 = (s2.sel(s2l2a_band=b).values for b in ("B08", "B04"))
    nir, red = (b.astype(np.float64) * scale + offset for b in (b08, b04))
    valid = (ds.s2l2a_valid.values & ds.s2l2a_available.values[:, None, None] & (b08 != nodata) & (b04 != nodata)
             & (nir + red != 0))
    with np.errstate(all="ignore"):
        return (nir - red) / (nir + red), valid


def test_ndvi_values_and_validity_match_an_independent_computation(ds: xr.Dataset) -> None:
    ndvi, valid = expected_ndvi(ds)
    assert valid.any() and (~valid & ds.s2l2a_available.values[:, None, None]).any()  # clouds: some invalid pixels
    assert np.array_equal(ds.ndvi_valid.values, valid)
    assert np.array_equal(ds.ndvi_available.values, ds.s2l2a_available.values)
    stored = ds.ndvi.values[:, 0]
    assert ds.ndvi.dtype == np.int16 and ds.ndvi.attrs["scale"] == 0.0001 and ds.ndvi.attrs["nodata"] == -32768
    assert np.array_equal(stored[valid], np.rint(ndvi[valid] / 0.0001).astype(np.int16))
    assert (stored[~valid] == -32768).all()
    physical = stored * ds.ndvi.attrs["scale"] + ds.ndvi.attrs["offset"]
    assert np.abs(physical[valid] - ndvi[valid]).max() <= 0.00005 + 1e-9
    assert -1 <= physical[valid].min() < 0.2 < physical[valid].max() <= 1  # vegetation and more in the demo world
    f = ds.ndvi_f.values[:, 0]
    assert ds.ndvi_f.dtype == np.float32 and np.array_equal(ds.ndvi_f_valid.values, valid)
    assert np.array_equal(f[valid], ndvi[valid].astype(np.float32)) and np.isnan(f[~valid]).all()


def test_derived_from_derived_and_categorical_inputs(ds: xr.Dataset) -> None:
    _, ndvi_valid = expected_ndvi(ds)
    lulc_valid = ds.lulc_valid.values & ds.lulc_available.values[:, None, None]
    valid = ndvi_valid & lulc_valid
    assert np.array_equal(ds.trees_valid.values, valid)
    trees = (ds.lulc.values[:, 0] == 2) & (ds.ndvi.values[:, 0] * 0.0001 > 0.5)
    assert np.array_equal(ds.trees.values[:, 0][valid], trees[valid].astype(np.uint8))
    assert (ds.trees.values[:, 0][~valid] == 255).all() and trees[valid].any() and not trees[valid].all()


def test_time_and_items_follow_the_inputs(ds: xr.Dataset) -> None:
    avail = ds.ndvi_available.values
    assert np.array_equal(ds.ndvi_time.values[avail], ds.s2l2a_time.values[avail])
    assert np.isnat(ds.ndvi_time.values[~avail]).all()
    assert list(ds.ndvi_item.values[avail]) == list(ds.s2l2a_item.values[avail])
    both = ds.trees_available.values  # trees reads lulc first, then ndvi (whose items are s2l2a's)
    assert np.array_equal(ds.trees_time.values[both], ds.lulc_time.values[both])
    items = [f"{a},{b}" for a, b in zip(ds.lulc_item.values, ds.s2l2a_item.values, strict=True)]
    assert list(ds.trees_item.values[both]) == [i for i, ok in zip(items, both, strict=True) if ok]


def test_the_schema_records_the_expression(ds: xr.Dataset) -> None:
    meta = CubeMeta.from_attrs(ds.attrs)
    ndvi = meta.modality("ndvi")
    assert ndvi.derived is not None and ndvi.derived.expression == NDVI
    assert ndvi.derived.reads == ("s2l2a.B08", "s2l2a.B04") and ndvi.source is None and ndvi.rule is None
    assert meta.modality("ndvi_f").derived.inputs == {"nir": "s2l2a.B08", "red": "s2l2a.B04"}
    assert meta.modality("s2l2a").derived is None and "derived" not in ds.attrs["modalities"]["s2l2a"]
    assert ds.ndvi.attrs["derived"]["expression"] == NDVI and ds.ndvi.attrs["resampling"] == "derived"
    bands, means, stds = meta.band_stats("ndvi")  # statistics like any modality
    stored = ds.ndvi.values[:, 0][ds.ndvi_valid.values]
    assert bands == ["NDVI"] and abs(means[0] - stored.mean()) < 1 and abs(stds[0] - stored.std()) < 1


def test_cube_dataset_loads_it(cube: Path, ds: xr.Dataset) -> None:
    pytest.importorskip("torch")
    from eo_dataset.torch import CubeDataset

    raw = CubeDataset(cube, ["ndvi", "s2l2a"], normalize=False)
    i = int(np.flatnonzero(ds.ndvi_available.values)[0])
    s = raw[i]
    assert np.array_equal(s["ndvi"].numpy(), ds.ndvi.values[i]) and np.array_equal(s["ndvi_valid"].numpy(),
                                                                                    ds.ndvi_valid.values[i])
    norm = CubeDataset(cube, ["ndvi"])[i]["ndvi"]
    assert norm.shape == (1, 264, 264) and str(norm.dtype) == "torch.float32"


def test_an_update_of_the_derived_modalities_alone_reads_the_cube_s_inputs(tmp_path: Path, cube: Path, world: Path,
                                                                          samples, ds: xr.Dataset) -> None:
    out = tmp_path / "update.zarr"
    shutil.copytree(cube, out)
    build(make_recipe(world), samples, out, scheduler="sync", update=["ndvi", "ndvi_f", "trees"])  # arrays emptied,
    got = xr.open_zarr(out)                                                                         # then derived
    for v in ("ndvi", "ndvi_valid", "ndvi_available", "ndvi_f_valid", "trees", "trees_valid", "ndvi_item"):
        assert np.array_equal(got[v].values, ds[v].values), v
    assert CubeMeta.from_attrs(got.attrs).modality("ndvi").derived.expression == NDVI


def test_reasons_for_samples_without_ndvi(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path)  # nothing is read: the inputs are given
    grid = Grid(recipe.grid.spec())
    two = [grid.sample("532U_89R_0_0"), grid.sample("532U_89R_1_0")]
    valid = np.ones((2, 264, 264), bool)
    valid[0, :10] = False  # clouds
    s2 = np.full((2, 12, 264, 264), 1000, np.uint16)
    s2[1] = 0  # nodata everywhere: available (as read) but no valid NDVI pixel
    arrays = {"s2l2a": s2, "s2l2a_valid": valid, "s2l2a_available": np.array([True, True]),
              "s2l2a_time": np.array(["2023-07-01", "NaT"], "datetime64[ns]"), "s2l2a_item": np.array(["a", "b"]),
              "lulc": np.full((2, 1, 264, 264), 2, np.uint8), "lulc_valid": np.ones((2, 264, 264), bool),
              "lulc_available": np.array([False, True]), "lulc_time": np.full(2, "NaT", "datetime64[ns]"),
              "lulc_item": np.array(["", "c"])}
    reasons: dict[str, dict[str, str]] = {}
    derive_block(recipe, two, ["ndvi", "trees"], arrays, reasons)
    assert arrays["ndvi_available"].tolist() == [True, False] and "trees" not in arrays["ndvi"]
    assert np.array_equal(arrays["ndvi_valid"][0], valid[0]) and not arrays["ndvi_valid"][1].any()
    assert (arrays["ndvi"][0, 0][valid[0]] == 0).all() and (arrays["ndvi"][0, 0][~valid[0]] == -32768).all()
    assert reasons == {
        two[0].id: {"trees": "input modality lulc has no data"},
        two[1].id: {"ndvi": "no pixel where every input of '(s2l2a.B08 - s2l2a.B04) / (s2l2a.B08 + s2l2a.B04)' is "
                            "valid and the expression is defined",
                    "trees": "input modality ndvi has no data"}}


def test_inputs_neither_aligned_nor_stored_are_refused(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path)  # nothing is read: only ndvi is asked for
    with pytest.raises(CubeError, match="derived modality 'ndvi' reads 's2l2a', which is neither built in this block "
                                        r"nor in the cube; build 's2l2a' too \(e.g. --update s2l2a,ndvi\)"):
        align_block(recipe, [Grid(recipe.grid.spec()).sample("532U_89R_0_0")], only=["ndvi"], anchor_times=[None])


def test_updating_an_input_without_its_derived_modalities_is_refused(cube: Path, world: Path, samples) -> None:
    with pytest.raises(CubeError, match=r"derived modalities \['trees'\] read \['lulc'\]; update them together: "
                                        "--update lulc,trees"):
        begin_update(cube, make_recipe(world), samples, ["lulc"])


def test_the_ndvi_page_s_reading_snippet_runs(cube: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """docs/modalities/ndvi.md's "Reading" block runs as written, in a folder with cube.zarr (NDVI built)."""
    import re

    text = (Path(__file__).resolve().parents[3] / "docs" / "modalities" / "ndvi.md").read_text()
    code = re.search(r"```python\n(.*?)```", text.split("## Reading", 1)[1], re.S).group(1)
    (tmp_path / "cube.zarr").symlink_to(cube)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/modalities/ndvi.md", "exec"), {})
    expression, mean = capsys.readouterr().out.rsplit(" ", 1)
    assert expression == NDVI and 0.2 < float(mean) < 0.9
