"""The corpus recipe on Earth Search (catalogs/4m4eo-earthsearch.yaml) against real Earth Search v1 items.

``earthsearch_items.json`` holds real items and collections as https://earth-search.aws.element84.com/v1 published
them (copied verbatim from pystac-client's and eodm's public test data; its ``about`` says where from). They are
served by the loopback pgstac API the STAC API tests use. The S2 build reads stand-in COGs written on the items' own
pixel grids (their proj:transform), served by a loopback file server in place of s3://sentinel-cogs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from affine import Affine
from rasterio.windows import Window, from_bounds

from eo_dataset import Grid, build, parse_recipe
from eo_dataset.sources import open_source
from eo_dataset.spec.recipe import Recipe, catalogs_dir
from tests.servers import FileServer, collection_stub, require_pgstac, start_pgstac_api

DATA = Path(__file__).with_name("earthsearch_items.json")
COGS = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/"
S2_ITEM = "S2A_39QTA_20230628_0_L2A"  # Oman, baseline 05.09
UTC = dt.UTC


def _data() -> dict:
    return json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def cogs(tmp_path_factory) -> Iterator[FileServer]:
    with FileServer(tmp_path_factory.mktemp("sentinel-cogs")) as server:
        yield server


@pytest.fixture(scope="module")
def api(cogs) -> Iterator[str]:
    """The real items on a loopback pgstac API, their sentinel-cogs hrefs pointed at the loopback file server."""
    require_pgstac()
    data = _data()
    items = json.loads(json.dumps(data["items"]).replace(COGS, f"{cogs.url}/"))
    have = {c["id"] for c in data["collections"]}
    collections = data["collections"] + [collection_stub(i["collection"]) for i in items
                                         if i["collection"] not in have and not have.add(i["collection"])]
    server = start_pgstac_api(collections, items)
    try:
        yield server.url
    finally:
        server.stop()


def _recipe(url: str, **time: str) -> Recipe:
    """catalogs/4m4eo-earthsearch.yaml with its Earth Search source pointed at the loopback API."""
    data = yaml.safe_load((catalogs_dir() / "4m4eo-earthsearch.yaml").read_text())
    data["sources"]["es"] = {"type": "stac_api", "href": url, "cache": False}
    data["time"].update(time)
    return parse_recipe(data, base_dir=catalogs_dir())


def test_the_recipe_resolves_its_bands_on_real_earth_search_items(api) -> None:
    recipe = _recipe(api)
    source = open_source(recipe.sources["es"])
    items = {i["id"]: i for i in _data()["items"]}
    window = (dt.datetime(2023, 1, 1, tzinfo=UTC), dt.datetime(2023, 12, 31, tzinfo=UTC))
    expected = {"s2l2a": {"S2A_13TDE_20231008_0_L2A", S2_ITEM}, "landsat": {"LC08_L2SP_033032_20231008_02_T1"},
                "dem": {"Copernicus_DSM_COG_10_S90_00_W180_00_DEM", "Copernicus_DSM_COG_10_S90_00_W179_00_DEM"}}
    for name, ids in expected.items():
        m = recipe.modalities[name]
        found = set()
        for item_id in ids:
            bbox = items[item_id]["bbox"]
            hits = source.search(m.collection.name, bbox, *(window if m.rule.type != "static" else (None, None)),
                                 m.query, m.filter)
            found |= {h.id for h in hits}
            (item,) = [h for h in hits if h.id == item_id]
            for band in m.band_specs:  # every band the recipe reads is an asset of the real item
                assert band.asset_key in item.assets, (name, band.name, sorted(item.assets))
            if m.collection.quality is not None:
                assert m.collection.quality.asset in item.assets
        assert found >= ids, name
    s2 = recipe.modalities["s2l2a"]
    assert [b.asset_key for b in s2.band_specs if b.name in ("B04", "B08")] == ["red", "nir"]
    real = items[S2_ITEM]
    assert s2.collection.harmonize.applies(real["properties"])  # baseline 05.09: DN carry the +1000 offset
    assert real["assets"]["red"]["raster:bands"][0]["offset"] == -0.1  # Earth Search says so, pixels unchanged
    # the requester-pays buckets the recipe documents, as the items declare them
    landsat = items["LC08_L2SP_033032_20231008_02_T1"]["assets"]["red"]
    assert landsat["href"].startswith("s3://usgs-landsat/") and landsat["storage:requester_pays"] is True
    dem = items["Copernicus_DSM_COG_10_S90_00_W180_00_DEM"]
    assert dem["assets"]["data"]["href"].startswith("s3://copernicus-dem-30m/")
    assert dem["properties"]["storage:requester_pays"] is False
    l1c = {c["id"]: c for c in _data()["collections"]}["sentinel-2-l1c"]["item_assets"]
    assert {b.asset_key for b in recipe.modalities["s2l1c"].band_specs} <= set(l1c)


def _write_window(path: Path, asset: dict, crs: str, bounds, dtype: str, values) -> None:
    t = Affine(*asset["proj:transform"][:6])
    win = from_bounds(*bounds, t)
    c0, r0 = int(np.floor(win.col_off)) - 8, int(np.floor(win.row_off)) - 8
    c1, r1 = int(np.ceil(win.col_off + win.width)) + 8, int(np.ceil(win.row_off + win.height)) + 8
    win = Window(c0, r0, c1 - c0, r1 - r0)
    rows, cols = np.mgrid[r0:r1, c0:c1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=c1 - c0, height=r1 - r0, count=1, dtype=dtype, crs=crs,
                       transform=rasterio.windows.transform(win, t), nodata=0, tiled=True, blockxsize=128,
                       blockysize=128, compress="deflate") as dst:
        dst.write(values(rows, cols).astype(dtype), 1)


def test_a_small_build_reads_the_earth_search_asset_keys(api, cogs, tmp_path) -> None:
    """One Sentinel-2 sample from a real Earth Search item: bands from the common-name assets, SCL from 'scl',
    the baseline-05.09 offset taken off."""
    item = {i["id"]: i for i in _data()["items"]}[S2_ITEM]
    w, s, e, n = item["bbox"]
    sample = Grid().sample_at(w + 0.6 * (e - w), s + 0.5 * (n - s))
    crs = f"EPSG:{item['properties']['proj:epsg']}"
    bounds = rasterio.warp.transform_bounds(sample.crs, crs, *sample.bounds, densify_pts=21)
    recipe = _recipe(api, start="2023-06-01", end="2023-06-30")
    recipe = recipe.model_copy(update={"modalities": {"s2l2a": recipe.modalities["s2l2a"]},
                                       "sources": {"es": recipe.sources["es"]}})
    s2 = recipe.modalities["s2l2a"]
    for b, band in enumerate(s2.band_specs):
        href = item["assets"][band.asset_key]["href"]
        _write_window(cogs.root / href[len(COGS):], item["assets"][band.asset_key], crs, bounds, "uint16",
                      lambda r, c, b=b: 2000 + 100 * b + 0 * r)
    scl = item["assets"]["scl"]
    _write_window(cogs.root / scl["href"][len(COGS):], scl, crs, bounds, "uint8",
                  lambda r, c: np.where(c % 50 < 5, 9, 5))  # cloud stripes
    build(recipe, [sample], tmp_path / "cube.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "cube.zarr")
    assert ds.s2l2a_available.values.all() and list(ds.s2l2a_item.values) == [S2_ITEM]
    data = ds.s2l2a.values[0]
    for b, band in enumerate(ds.s2l2a_band.values):
        assert np.all(data[b] == 1000 + 100 * b), band  # 2000 + 100 b written, the +1000 offset taken off
    valid = ds.s2l2a_valid.values[0]
    assert 0.05 < 1 - valid.mean() < 0.2  # the cloud stripes (SCL 9), about a tenth of the pixels
