"""Alignment on real data nobody here made: the five TerraMind places (TerraMesh validation tiles).

Each tile is 224 x 224 px at 10 m, the top-left corner of its TerraMesh sub-cell. Served as items of a local
catalog and built with the default grid, the cube must hold the tile's exact values in the sample's top-left
224 x 224 px and mark the rest of the 264 px patch as not valid.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
import xarray as xr
from shapely.geometry import mapping

from eo_dataset import Grid, build, parse_recipe
from tests.conftest import realdata

PLACES = {"282D_485L_3_3": "2021-07-15", "38D_378R_2_3": "2023-06-15", "433D_629L_3_1": "2020-04-15",
          "609U_541L_3_0": "2020-01-15", "637U_59R_1_3": "2017-10-15"}
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def _collection(name: str, bands: list[str], dtype: str, kind: str = "continuous", temporal: str = "dynamic"):
    return {"name": name, "kind": kind, "temporal": temporal, "dtype": dtype, "units": "as TerraMesh",
            "licence": "CC-BY-SA-4.0 (TerraMesh)", "cloud_cover_property": None,
            "bands": [{"name": b, "asset": "data", "index": i + 1} for i, b in enumerate(bands)]}


@pytest.fixture(scope="module")
def terramind_catalog(tmp_path_factory) -> str:
    root = realdata("terramind")
    features = []
    for sid, date in PLACES.items():
        for mod in ("S2L2A", "S1RTC", "DEM", "LULC"):
            path = root / mod / f"{sid}.tif"
            with rasterio.open(path) as src:
                lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", *zip(*[
                    (src.bounds.left, src.bounds.bottom), (src.bounds.right, src.bounds.bottom),
                    (src.bounds.right, src.bounds.top), (src.bounds.left, src.bounds.top)], strict=True))
            geom = shapely.Polygon(zip(lon, lat, strict=True))
            features.append({
                "type": "Feature", "stac_version": "1.0.0", "id": f"{mod}_{sid}", "collection": f"terramind-{mod}",
                "geometry": mapping(geom), "bbox": list(geom.bounds),
                "properties": {"datetime": f"{date}T10:00:00Z"}, "links": [],
                "assets": {"data": {"href": str(path), "type": "image/tiff; application=geotiff"}},
            })
    out = tmp_path_factory.mktemp("terramind") / "items.json"
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return str(out)


def test_terramind_tiles_land_exactly_in_their_samples(terramind_catalog, tmp_path) -> None:
    recipe = parse_recipe({
        "name": "terramind-check",
        "time": {"anchor": "s2", "start": dt.date(2017, 1, 1), "end": dt.date(2023, 12, 31)},
        "sources": {"tm": {"type": "static_catalog", "href": terramind_catalog}},
        "modalities": {
            "s2": {"collection": _collection("terramind-S2L2A", S2_BANDS, "int16"), "source": "tm",
                   "resolution_m": 10, "rule": {"type": "least_cloudy"}},
            "s1": {"collection": _collection("terramind-S1RTC", ["vv", "vh"], "float32"), "source": "tm",
                   "resolution_m": 10, "rule": {"type": "nearest", "tolerance_days": 1}},
            "dem": {"collection": _collection("terramind-DEM", ["elevation"], "int16", temporal="static"),
                    "source": "tm", "resolution_m": 10, "rule": {"type": "static"}},
            "lulc": {"collection": _collection("terramind-LULC", ["lulc"], "uint8", "categorical", "static"),
                     "source": "tm", "resolution_m": 10, "rule": {"type": "static"}},
        },
        "build": {"shard_samples": 5},
    })
    grid = Grid(recipe.grid.spec())
    samples = [grid.sample(sid) for sid in PLACES]
    build(recipe, samples, tmp_path / "tm.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "tm.zarr")
    root = realdata("terramind")
    for i, sid in enumerate(PLACES):
        for m, mod in (("s2", "S2L2A"), ("s1", "S1RTC"), ("dem", "DEM"), ("lulc", "LULC")):
            assert bool(ds[f"{m}_available"].values[i]), (sid, m)
            with rasterio.open(root / mod / f"{sid}.tif") as src:
                tile = src.read()
            cube = ds[m].values[i]
            expected = tile.astype(cube.dtype)
            np.testing.assert_array_equal(cube[:, :224, :224], expected, err_msg=f"{sid} {m}")
            valid = ds[f"{m}_valid"].values[i]
            assert valid[:224, :224].all() and not valid[224:, :].any() and not valid[:, 224:].any()


# -- ESA WorldCover (EPSG:4326 -> UTM, nearest) and Landsat 8 (30 m, EPSG:32616): against rasterio.warp.reproject --
WORLDCOVER = {"2020": "ESA_WorldCover_10m_2020_v100_N00E006_Map.tif",
              "2021": "ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"}
SAO_TOME = ["3U_74R_3_0", "3U_74R_2_1", "2U_73R_1_3", "2U_73R_0_0"]  # land, coast and sea around Sao Tome
PENSACOLA = ["341U_839L_3_0", "341U_839L_3_2", "342U_838L_2_1", "342U_836L_0_3"]  # inside the Landsat 8 band


def local_item(path: Path | str, collection: str, item_id: str, props: dict, href: str | None = None,
               asset: str = "data") -> dict:
    """A STAC item (dict) for a local raster: footprint from its bounds, one asset (``href`` or the path)."""
    with rasterio.open(path) as src:
        b = src.bounds
        xs = np.concatenate([np.linspace(b.left, b.right, 11), np.full(11, b.right), np.linspace(b.right, b.left, 11),
                             np.full(11, b.left)])
        ys = np.concatenate([np.full(11, b.bottom), np.linspace(b.bottom, b.top, 11), np.full(11, b.top),
                             np.linspace(b.top, b.bottom, 11)])
        lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", xs, ys)
        epsg = src.crs.to_epsg()
    geom = shapely.Polygon(zip(lon, lat, strict=True))
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
            "geometry": mapping(geom), "bbox": list(geom.bounds), "properties": {"proj:epsg": epsg, **props},
            "links": [], "stac_extensions": [],
            "assets": {asset: {"href": href or str(path), "type": "image/tiff; application=geotiff"}}}


def worldcover_items(href_of=lambda name: None) -> list[dict]:
    """The two real WorldCover tiles as esa-worldcover items (asset 'map', as on the Planetary Computer)."""
    root = realdata("worldcover")
    return [local_item(root / name, "esa-worldcover", name[:-8], {
        "datetime": None, "start_datetime": f"{year}-01-01T00:00:00Z", "end_datetime": f"{year}-12-31T23:59:59Z"},
        href=href_of(name), asset="map") for year, name in WORLDCOVER.items()]


def worldcover_recipe(href: str, year: int = 2021, source_type: str = "static_catalog") -> dict:
    """Land cover only: the S2 anchor has no items here, so same_year takes the window's year."""
    return {
        "name": "worldcover-check",
        "time": {"anchor": "s2", "start": dt.date(year, 1, 1), "end": dt.date(year, 12, 31)},
        "sources": {"local": {"type": source_type, "href": href}},
        "modalities": {
            "s2": {"collection": "sentinel-2-l2a", "source": "local", "resolution_m": 10, "bands": ["B04"],
                   "rule": {"type": "least_cloudy"}},
            "worldcover": {"collection": "esa-worldcover", "source": "local", "resolution_m": 10,
                           "rule": {"type": "same_year"}},
        },
        "build": {"shard_samples": 4},
    }


def reference(path: Path | str, sample, resolution_m: float, resampling: str, nodata: float | None,
              dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """An independent rasterio.warp.reproject of the sample's window of ``path`` (band 1) onto its grid.

    Only the window (sample bounds + 8 px) is read, never the whole band.
    Returns the values and where the source had data.
    """
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    h, w = sample.shape(resolution_m)
    with rasterio.open(path) as src:
        left, bottom, right, top = rasterio.warp.transform_bounds(sample.crs, src.crs, *sample.bounds, densify_pts=21)
        px = abs(src.res[0]) * 8
        win = from_bounds(left - px, bottom - px, right + px, top + px, src.transform).round_offsets().round_lengths()
        win = win.intersection(rasterio.windows.Window(0, 0, src.width, src.height))
        arr = src.read(1, window=win)
        src_transform, src_crs = src.window_transform(win), src.crs
        src_nodata = src.nodata if src.nodata is not None else nodata
    out = np.zeros((h, w), dtype=dtype)
    has = np.zeros((h, w), dtype=np.uint8)
    common = dict(src_transform=src_transform, src_crs=src_crs, dst_transform=sample.transform(resolution_m),
                  dst_crs=sample.crs, resampling=Resampling[resampling])
    rasterio.warp.reproject(arr, out, src_nodata=src_nodata, dst_nodata=src_nodata, **common)
    mask = (arr != src_nodata).astype(np.uint8) if src_nodata is not None else np.ones_like(arr, dtype=np.uint8)
    rasterio.warp.reproject(mask, has, src_nodata=None, dst_nodata=0, **{**common, "resampling": Resampling.nearest})
    return out, has.astype(bool)


def compare(cube: np.ndarray, ref: np.ndarray, ref_has: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Max abs difference and mismatch share where both have data."""
    both = ref_has & valid
    diff = np.abs(cube.astype(np.float64) - ref.astype(np.float64))[both]
    return {"pixels": int(both.sum()), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mismatch_share": float((diff > 0).mean()) if diff.size else 0.0,
            "mask_disagreement": int((ref_has != valid).sum())}


def test_worldcover_tile_warped_to_utm_by_window(tmp_path) -> None:
    """A real 3 x 3 degree WorldCover tile (EPSG:4326, 36000 px square) -> UTM 32N samples with nearest.

    The cube must equal an independent rasterio.warp.reproject (nearest) of the same window, class for class.
    """
    items = tmp_path / "worldcover.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": worldcover_items()}))
    recipe = parse_recipe(worldcover_recipe(str(items)))
    grid = Grid(recipe.grid.spec())
    samples = [grid.sample(sid) for sid in SAO_TOME]
    build(recipe, samples, tmp_path / "wc.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "wc.zarr")
    assert ds.worldcover.attrs["classes"]["80"] == "permanent water bodies"
    assert ds.worldcover.attrs["resampling"] == "nearest"
    path = realdata("worldcover", WORLDCOVER["2021"])
    worst = {}
    for i, s in enumerate(samples):
        assert ds.worldcover_available.values[i] and ds.worldcover_item.values[i] == WORLDCOVER["2021"][:-8]
        assert np.datetime_as_string(ds.worldcover_time.values[i], "D") == "2021-01-01"
        cube = ds.worldcover.values[i, 0]
        ref, has = reference(path, s, 10, "nearest", 0, "uint8")
        stats = compare(cube, ref, has, ds.worldcover_valid.values[i])
        worst[s.id] = stats
        assert set(np.unique(cube[ds.worldcover_valid.values[i]])) <= {10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100}
        assert stats["pixels"] > 0.99 * 264 * 264 and stats["max_abs_diff"] == 0, (s.id, stats)
    print("worldcover vs reproject:", worst)
    land = ds.worldcover.values[0, 0]
    assert (land != 80).mean() > 0.3  # the first sample is on Sao Tome: not all water


def test_landsat8_band_at_30m_matches_reproject(tmp_path) -> None:
    """The real Landsat 8 band 4 (30 m, EPSG:32616) on 30 m samples in the same zone, bilinear.

    The sample origin is fractional (TerraMesh), so every pixel is interpolated: compared with an independent
    rasterio.warp.reproject (bilinear) of the same window, values agree to within 1 DN (rounding).
    """
    path = realdata("landsat8", "l8_B4.tif")
    item = local_item(path, "landsat-8-l1", "LC80200392015216LGN00_B4",
                      {"datetime": "2015-08-04T16:19:21Z", "eo:cloud_cover": 0.0, "platform": "landsat-8"})
    items = tmp_path / "l8.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    collection = {"name": "landsat-8-l1", "kind": "continuous", "dtype": "uint16", "nodata": 0,
                  "units": "DN (Level-1)", "licence": "public domain (USGS)",
                  "bands": [{"name": "red", "asset": "data", "resolution_m": 30}]}
    recipe = parse_recipe({
        "name": "landsat-check", "time": {"anchor": "l8", "start": dt.date(2015, 8, 1), "end": dt.date(2015, 8, 31)},
        "sources": {"local": {"type": "static_catalog", "href": str(items)}},
        "modalities": {"l8": {"collection": collection, "source": "local", "resolution_m": 30,
                              "rule": {"type": "least_cloudy"}}},
        "build": {"shard_samples": 4},
    })
    grid = Grid(recipe.grid.spec())
    samples = [grid.sample(sid) for sid in PENSACOLA]
    build(recipe, samples, tmp_path / "l8.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "l8.zarr")
    assert ds.l8.shape == (4, 1, 88, 88) and ds.l8.dtype == np.uint16
    worst = {}
    for i, s in enumerate(samples):
        assert s.epsg == 32616 and ds.l8_available.values[i]
        assert str(ds.anchor_time.values[i]).startswith("2015-08-04T16:19:21")
        ref, has = reference(path, s, 30, "bilinear", 0, "float64")
        stats = compare(ds.l8.values[i, 0], np.rint(ref), has, ds.l8_valid.values[i])
        worst[s.id] = stats
        assert stats["pixels"] == 88 * 88 and stats["mask_disagreement"] == 0, (s.id, stats)
        assert stats["max_abs_diff"] <= 1, (s.id, stats)
    print("landsat vs reproject:", worst)
