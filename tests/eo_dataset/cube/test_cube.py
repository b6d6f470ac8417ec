"""The cube contract of DESIGN.md, on a cube of the whole demo world, and its values against the source COGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import rasterio.windows
import xarray as xr
import zarr

from eo_dataset import __version__, build

MODALITIES = ["s2l2a", "s1rtc", "landsat", "dem", "lulc", "canopy", "osm"]


@pytest.fixture(scope="module")
def ds(demo_cube):
    return xr.open_zarr(demo_cube)


def test_coords(ds: xr.Dataset, demo_samples) -> None:
    assert ds.sizes["sample"] == len(demo_samples) == 32
    assert list(ds.sample_id.values) == [s.id for s in demo_samples]
    assert ds.epsg.dtype == np.int32 and set(ds.epsg.values) == {32632, 32633}
    np.testing.assert_array_equal(ds.x0.values, [s.x0 for s in demo_samples])
    np.testing.assert_array_equal(ds.y0.values, [s.y0 for s in demo_samples])
    assert ds.lon.values.min() > 11.8 and ds.lon.values.max() < 12.2
    assert ds.lat.values.min() > 47.7 and ds.lat.values.max() < 47.9
    assert np.issubdtype(ds.anchor_time.dtype, np.datetime64)
    np.testing.assert_array_equal(ds.anchor_time.values, ds.s2l2a_time.values)


@pytest.mark.parametrize(("m", "bands", "dtype", "px"), [
    ("s2l2a", 12, np.uint16, 264), ("s1rtc", 2, np.float32, 264), ("landsat", 6, np.uint16, 88),
    ("dem", 1, np.float32, 88), ("lulc", 1, np.uint8, 264), ("canopy", 1, np.uint8, 264),
    ("osm", 9, np.uint8, 264),
])
def test_modality_variables(ds: xr.Dataset, m: str, bands: int, dtype, px: int) -> None:
    res = 10 if px == 264 else 30
    var = ds[m]
    assert var.dims == ("sample", f"{m}_band", f"y_{res}", f"x_{res}")
    assert var.dtype == dtype  # the storage dtype, not decoded to float by xarray
    assert var.shape == (32, bands, px, px)
    assert ds[f"{m}_band"].size == bands
    assert ds[f"{m}_valid"].dims == ("sample", f"y_{res}", f"x_{res}") and ds[f"{m}_valid"].dtype == bool
    assert ds[f"{m}_available"].dtype == bool
    assert np.issubdtype(ds[f"{m}_time"].dtype, np.datetime64)
    assert ds[f"{m}_item"].dims == ("sample",)
    for key in ("units", "scale", "offset", "nodata", "licence", "collection"):
        assert key in var.attrs, key


def test_every_modality_has_available_and_missing_samples(ds: xr.Dataset) -> None:
    for m in MODALITIES:
        avail = ds[f"{m}_available"].values
        assert 0 < avail.sum() < avail.size, m


def test_missing_means_fill_values_not_data(ds: xr.Dataset) -> None:
    for m in MODALITIES:
        avail = ds[f"{m}_available"].values
        data = ds[m].values[~avail]
        fill = ds[m].attrs["nodata"]
        if fill == "nan":
            assert np.isnan(data).all(), m
        else:
            assert (data == fill).all(), m
        assert not ds[f"{m}_valid"].values[~avail].any(), m
        assert np.isnat(ds[f"{m}_time"].values[~avail]).all(), m
        assert (ds[f"{m}_item"].values[~avail] == "").all(), m
        assert all(ds[f"{m}_item"].values[avail]), m


def test_valid_masks_cover_clouds_and_nodata_edges(ds: xr.Dataset) -> None:
    valid = ds.s2l2a_valid.values[ds.s2l2a_available.values]
    frac = valid.mean(axis=(1, 2))
    assert (frac < 1).any() and (frac > 0.9).any()
    # a nodata pixel (0) is never valid; and the swath edge of the zone-33 tile leaves some
    data = ds.s2l2a.values
    assert not valid[(data[ds.s2l2a_available.values] == 0).all(axis=1)].any()
    assert (data[ds.s2l2a_available.values] == 0).all(axis=1).any()


def test_categorical_values_stay_classes(ds: xr.Dataset) -> None:
    classes = {int(k) for k in ds.lulc.attrs["classes"]}
    values = set(np.unique(ds.lulc.values[ds.lulc_available.values]).tolist())
    assert values <= classes | {0} and len(values & classes) >= 4


def test_root_attrs(ds: xr.Dataset, demo_recipe) -> None:
    attrs = ds.attrs
    assert attrs["recipe"]["name"] == "demo" and attrs["recipe_hash"] == demo_recipe.hash
    assert attrs["eo_dataset_version"] == __version__
    assert attrs["grid"]["rows"] == 2004 and attrs["grid"]["patch_px"] == 264
    assert set(attrs["modalities"]) == set(MODALITIES)
    assert attrs["modalities"]["lulc"]["classes"]["5"] == "crops"
    text = json.dumps(attrs).lower()
    for secret in ("sig=", "token", "sv=20", "se=20"):
        assert secret not in text


def test_zarr_v3_sharded_layout(demo_cube, demo_recipe) -> None:
    g = zarr.open_group(str(demo_cube), mode="r")
    assert g.metadata.zarr_format == 3
    b = demo_recipe.build.shard_samples
    s2 = g["s2l2a"]
    assert s2.chunks == (1, 12, 264, 264) and s2.shards == (b, 12, 264, 264)
    assert g["s2l2a_valid"].chunks == (1, 264, 264) and g["s2l2a_valid"].shards == (b, 264, 264)
    assert g["s2l2a_available"].chunks == (b,)
    # one object per shard: 32 samples / 8 per shard = 4 objects at most for each array
    files = list((demo_cube / "s2l2a" / "c").rglob("*"))
    assert len([f for f in files if f.is_file()]) <= 32 // b


def _read_cog(item_href: str, sample, res: float) -> np.ndarray:
    with rasterio.open(item_href) as src:
        win = rasterio.windows.from_bounds(*sample.bounds, transform=src.transform)
        return src.read(1, window=win.round_offsets().round_lengths(), boundless=True, fill_value=0)


def test_pixels_equal_source_cog_where_grids_coincide(tmp_path, demo_recipe, demo_samples, world) -> None:
    """With origin: snap the sample grid is the S2 tile grid, so every 10 m pixel is a copy of the COG's."""
    grid = demo_recipe.grid.model_copy(update={"origin": "snap"})
    recipe = demo_recipe.model_copy(update={"grid": grid})
    from eo_dataset import Grid

    g = Grid(grid.spec())
    samples = [g.sample(s.id) for s in demo_samples[:16]]  # the zone-32 cell: one S2 tile grid
    build(recipe, samples, tmp_path / "snap.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "snap.zarr")
    checked = 0
    for i, s in enumerate(samples):
        if not ds.s2l2a_available.values[i]:
            continue
        item = ds.s2l2a_item.values[i].split(",")[0]
        for band in ("B02", "B04", "B08"):
            href = world.parent / "sentinel-2-l2a" / item / f"{band}.tif"
            src = _read_cog(str(href), s, 10)
            got = ds.s2l2a.sel(s2l2a_band=band).values[i]
            has = src != 0
            np.testing.assert_array_equal(got[has], src[has])
            checked += int(has.sum())
        lulc_item = ds.lulc_item.values[i]
        src = _read_cog(str(world.parent / "io-lulc-annual-v02" / lulc_item / "data.tif"), s, 10)
        np.testing.assert_array_equal(ds.lulc.values[i, 0][src != 0], src[src != 0])
    assert checked > 16 * 3 * 264 * 264 * 0.5


def test_exact_origin_resamples_onto_the_terramesh_grid(ds: xr.Dataset, demo_samples, world) -> None:
    """Default (exact) origin: nearest-resampled land cover equals the source pixel under each pixel centre."""
    i = 5
    s = demo_samples[i]
    item = ds.lulc_item.values[i]
    with rasterio.open(world.parent / "io-lulc-annual-v02" / item / "data.tif") as src:
        assert src.crs.to_epsg() == s.epsg
        cols = s.x0 + 5 + 10 * np.arange(264)
        rows = s.y0 - 5 - 10 * np.arange(264)
        xx, yy = np.meshgrid(cols, rows)
        r, c = rasterio.transform.rowcol(src.transform, xx.ravel(), yy.ravel())
        expected = src.read(1)[np.asarray(r), np.asarray(c)].reshape(264, 264)
    np.testing.assert_array_equal(ds.lulc.values[i, 0], expected)


def test_normalisation_stats_travel_with_the_cube(ds: xr.Dataset) -> None:
    """Per-band stats of valid pixels, computed at build time, equal a direct computation on the cube."""
    stats = ds.attrs["stats"]
    assert set(stats) == set(MODALITIES)
    for m in ("s2l2a", "s1rtc", "dem"):
        avail = ds[f"{m}_available"].values
        mask = ds[f"{m}_valid"].values & avail[:, None, None]
        for b, band in enumerate(ds[f"{m}_band"].values):
            v = ds[m].values[:, b][mask].astype(np.float64)
            s = stats[m]["bands"][str(band)]
            assert s["count"] == v.size > 0
            assert s["mean"] == pytest.approx(v.mean(), rel=1e-9)
            assert s["std"] == pytest.approx(v.std(), rel=1e-6)
            assert (s["min"], s["max"]) == (v.min(), v.max())
    classes = stats["lulc"]["classes"]
    mask = ds.lulc_valid.values & ds.lulc_available.values[:, None, None]
    ids, counts = np.unique(ds.lulc.values[:, 0][mask], return_counts=True)
    assert classes == {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)}


def test_manifest_entries_stream_one_at_a_time(demo_cube) -> None:
    """finalize and the build's report read a planet's 70,000 block entries as a stream, in block order."""
    import inspect

    from eo_dataset.cube.manifest import block_reports, iter_block_reports
    from eo_dataset.cube.stats import merge

    entries = iter_block_reports(demo_cube)
    assert inspect.isgenerator(entries)
    assert list(entries) == sorted(block_reports(demo_cube).items()) and len(block_reports(demo_cube)) == 4
    # the stats finalize stored are those of the streamed entries
    assert xr.open_zarr(demo_cube).attrs["stats"] == merge(e["stats"] for _, e in iter_block_reports(demo_cube))


def test_captions_the_text_modality(ds: xr.Dataset) -> None:
    assert ds.caption.dims == ("sample",)
    captions = [str(c) for c in ds.caption.values]
    assert all(len(c) > 20 for c in captions) and len(set(captions)) == len(captions)
    assert ds.caption.attrs["seed"] == 0


def test_osm_layers(ds: xr.Dataset) -> None:
    avail = ds.osm_available.values
    valid = ds.osm_valid.values[avail]
    data = ds.osm.values[avail]
    inside = np.broadcast_to(valid[:, None], data.shape)
    assert set(np.unique(data[inside])) <= {0, 1} and (data[~inside] == 255).all()
    assert (valid.mean(axis=(1, 2)) < 1).any()  # the extract ends inside the eastern cell
    per_band = {str(b): int((ds.osm.sel(osm_band=b).values[avail] == 1).sum()) for b in ds.osm_band.values}
    assert all(per_band[b] > 0 for b in ("buildings", "roads_major", "water", "forest", "railways"))


def test_build_codec_is_the_recipes(demo_cube, demo_recipe) -> None:
    from eo_dataset.cube.store import compressors

    assert demo_recipe.build.codec == "blosc-lz4"
    g = zarr.open_group(str(demo_cube), mode="r")
    for name in ("s2l2a", "s2l2a_valid", "lulc"):
        (blosc,) = g[name].compressors
        assert (blosc.cname.value, blosc.clevel, blosc.shuffle.value) == ("lz4", 5, "shuffle")
    build = demo_recipe.build
    assert compressors(build.model_copy(update={"codec": None}))[0].level == build.zstd_level  # unset: zstd
    assert compressors(build.model_copy(update={"codec": "none"})) == []
