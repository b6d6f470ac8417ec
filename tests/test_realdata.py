"""Alignment on real data nobody here made: the five TerraMind places (TerraMesh validation tiles).

Each tile is 224 x 224 px at 10 m, the top-left corner of its TerraMesh sub-cell. Served as items of a local
catalog and built with the default grid, the cube must hold the tile's exact values in the sample's top-left
224 x 224 px and mark the rest of the 264 px patch as not valid.
"""

from __future__ import annotations

import datetime as dt
import json

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
