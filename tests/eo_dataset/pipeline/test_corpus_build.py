"""``eo-dataset build 4m4eo`` end to end, offline: the corpus recipe over two samples in Vaduz (Liechtenstein).

What the build reads, all on 127.0.0.1:

- **The Planetary Computer's STAC API** (``--source pc=...``): PostgreSQL + pgstac behind ``rustac serve``
  (tests/servers.py), loaded with *real Planetary Computer items relocated*: one real item of every collection the
  recipe searches (sentinel-2-l2a, sentinel-1-rtc, sentinel-1-grd, landsat-c2-l2, cop-dem-glo-30,
  io-lulc-annual-v02, esa-worldcover, from ../shared/realdata/stac/planetary-computer), with their schema, asset keys
  and properties kept, and only their ids, geometry/bbox, projection fields (proj:epsg/transform/shape) and dates
  moved onto Vaduz in 2021. Their blob-storage hrefs (http instead of https, same host and path, renamed after the
  new ids) are served by the loopback file server acting as GDAL's HTTP proxy, which checks the SAS signature the
  build gets from a local Planetary Computer token endpoint. Pixels are written locally on each item's grid (the
  Sentinel-1 GRD file placed by ground control points, as the real GRD files are). The Landsat footprint is cut to
  the first sample, so the second sample has no Landsat (availability False).
- **Canopy height**: a ``tiles.geojson`` in Meta/WRI's published schema (one ``tile`` quadkey property) and a
  stand-in ``chm/<quadkey>.tif`` on the tile's own 1.19 m EPSG:3857 grid (as in
  tests/eo_dataset/sources/test_canopy_tiles.py).
- **OpenStreetMap**: an ``index-v1.json`` in Geofabrik's schema over the real Liechtenstein PBF (as in
  tests/eo_dataset/sources/test_osm_extract_index.py), downloaded over loopback HTTP.

The bundled recipe is built as it is; only source locations are overridden on the command line: the hrefs with
``--source NAME=HREF`` and the canopy tiles' URL template (``https://dataforgood-fb-data.s3.amazonaws.com/...``,
which no offline server can answer) with ``--source canopy_tiles.href_template=URL``, as a user points a build at a
mirror.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from eo_dataset import Grid, load_recipe
from eo_dataset.cli.main import main as cli_main
from eo_dataset.cube.manifest import block_reports
from eo_dataset.sources.osm import extract_coverage
from tests.conftest import REALDATA
from tests.eo_dataset.sources.test_canopy_tiles import PREFIX, _stand_in, meta_feature, quadkey
from tests.eo_dataset.sources.test_osm_extract_index import EUROPE, _feature
from tests.eo_dataset.sources.test_stac_api import _local_path, _repoint, _write_window
from tests.eo_dataset.test_realdata import compare, reference
from tests.servers import (
    FileServer,
    collection_stub,
    forget_pc_tokens,
    loopback_only,
    point_pc_sdk_at,
    require_pgstac,
    start_pgstac_api,
)

PC = REALDATA / "stac" / "planetary-computer"
PBF = REALDATA / "osm" / "liechtenstein.osm.pbf"
VADUZ = (9.52, 47.14)
EPSG = 32632  # Vaduz's UTM zone
# the eight families as the recipe's modalities (Sentinel-1: RTC and GRD; land cover: io-lulc and WorldCover)
FAMILIES = ("s2l2a", "s1rtc", "s1grd", "landsat", "dem", "lulc", "worldcover", "canopy", "osm")
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S2_RES = {"B01": 60, "B09": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20, "SCL": 20}
LANDSAT_BANDS = ["coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "qa_pixel"]
PUBLIC_CANOPY = "https://dataforgood-fb-data.s3.amazonaws.com/"


def _samples():
    grid = Grid(load_recipe("4m4eo").grid.spec())
    s = grid.sample_at(*VADUZ)
    cell, a, b = s.id.rsplit("_", 2)
    return [s, grid.sample(f"{cell}_{int(a) + 1 if int(a) < 3 else int(a) - 1}_{b}")]


def _real(collection: str) -> dict:
    return _repoint(json.loads((PC / f"{collection}.json").read_text())[0])


def _relocate(item: dict, new_id: str, footprint, props: dict) -> dict:
    """The real item under a new id (also in its asset hrefs), with a new footprint and updated properties."""
    text = json.dumps(item)
    for part in (item["id"], item["id"].replace("_rtc", "")):
        text = text.replace(part, new_id)
    out = json.loads(text)
    out["id"] = new_id
    out["geometry"], out["bbox"] = mapping(footprint), list(footprint.bounds)
    out["properties"].update(props)
    return out


def _dates(start: str, end: str | None = None, at: str | None = None) -> dict:
    return {"datetime": at or start, "start_datetime": start, "end_datetime": end or start}


def _utm_footprint(bounds) -> object:
    return box(*transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *bounds, densify_pts=21))


def _items(root: Path, samples) -> list[dict]:
    """The relocated items, with pixels written under ``root`` (the blob stand-in) for the assets the build reads."""
    xs = [s.bounds for s in samples]
    both = (min(b[0] for b in xs), min(b[1] for b in xs), max(b[2] for b in xs), max(b[3] for b in xs))
    lonlat = transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *both, densify_pts=21)
    utm = f"EPSG:{EPSG}"
    items = []

    # Sentinel-2 L2A: tile 32TNT's grid (origin 499980, 5300040), baseline 05.10 (DN + 1000), SCL with cloud squares
    s2 = _real("sentinel-2-l2a")
    s2 = _relocate(s2, "S2A_MSIL2A_20210718T101031_R022_T32TNT_20210718T131441", _utm_footprint(
        (499980, 5190240, 609780, 5300040)), {"datetime": "2021-07-18T10:10:31.024000Z", "proj:epsg": EPSG,
                                             "eo:cloud_cover": 3.5, "s2:mgrs_tile": "32TNT"})
    for key in [*S2_BANDS, "SCL"]:
        res = S2_RES.get(key, 10)
        asset = s2["assets"][key]
        asset.update({"proj:transform": [res, 0.0, 499980.0, 0.0, -res, 5300040.0],
                      "proj:shape": [109800 // res, 109800 // res], "proj:bbox": [499980, 5190240, 609780, 5300040]})
        if key == "SCL":
            def scl(r, c):
                return np.where((r % 40 < 6) & (c % 40 < 6), 9, 4)
            _write_window(_local_path(root, asset["href"]), asset, utm, both, "uint8", 0, scl)
        else:
            b = S2_BANDS.index(key)
            def dn(r, c, b=b):
                return 1000 + 300 * b + (r * 7 + c * 3) % 500
            _write_window(_local_path(root, asset["href"]), asset, utm, both, "uint16", 0, dn)
    items.append(s2)

    # Sentinel-1 RTC: two days after the anchor, float32 gamma0 on a 10 m UTM grid
    rtc = _real("sentinel-1-rtc")
    rtc = _relocate(rtc, "S1A_IW_GRDH_1SDV_20210720T053258_20210720T053323_038870_0496A2_rtc",
                    _utm_footprint((450000, 5150000, 650000, 5300000)),
                    {**_dates("2021-07-20T05:32:58.5Z", "2021-07-20T05:33:23.5Z", "2021-07-20T05:33:11Z"),
                     "proj:epsg": EPSG, "proj:transform": [10.0, 0.0, 450000.0, 0.0, -10.0, 5300000.0, 0.0, 0.0, 1.0],
                     "proj:shape": [15000, 20000], "proj:bbox": [450000, 5150000, 650000, 5300000]})
    for n, key in enumerate(("vv", "vh")):
        asset = dict(rtc["assets"][key], **{"proj:transform": rtc["properties"]["proj:transform"]})
        _write_window(_local_path(root, asset["href"]), asset, utm, both, "float32", -32768,
                      lambda r, c, n=n: 0.01 * (n + 1) + ((r + c) % 50) / 1000)
    items.append(rtc)

    # Sentinel-1 GRD: no projection extension; the files are placed by their ground control points (lon/lat)
    grd = _real("sentinel-1-grd")
    w, s, e, nn = lonlat[0] - 0.05, lonlat[1] - 0.05, lonlat[2] + 0.05, lonlat[3] + 0.05
    grd = _relocate(grd, "S1A_IW_GRDH_1SDV_20210721T171707_20210721T171732_038892_04975C",
                    box(w, s, e, nn), _dates("2021-07-21T17:17:07.6Z", "2021-07-21T17:17:32.6Z",
                                             "2021-07-21T17:17:20.1Z"))
    assert "proj:epsg" not in grd["properties"] and grd["properties"]["sar:polarizations"] == ["VV", "VH"]
    size = 600
    gcps = [GroundControlPoint(0, 0, w, nn), GroundControlPoint(0, size, e, nn),
            GroundControlPoint(size, 0, w, s), GroundControlPoint(size, size, e, s)]
    for n, key in enumerate(("vv", "vh")):
        path = _local_path(root, grd["assets"][key]["href"])
        path.parent.mkdir(parents=True, exist_ok=True)
        rows, cols = np.mgrid[0:size, 0:size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # until the GCPs are set
            with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint16",
                               nodata=0, tiled=True, blockxsize=256, blockysize=256) as dst:
                dst.gcps = (gcps, CRS.from_epsg(4326))
                dst.write((100 + 50 * n + (rows + 2 * cols) % 200).astype("uint16"), 1)
    items.append(grd)

    # Landsat 8 C2 L2: five days after the anchor; its footprint covers the first sample only
    ls = _real("landsat-c2-l2")
    first = samples[0].bounds
    ls = _relocate(ls, "LC08_L2SP_194027_20210723_02_T1", _utm_footprint(
        (first[0] - 100, first[1] - 100, first[2] + 100, first[3] + 100)),
        {"datetime": "2021-07-23T10:15:40.1Z", "platform": "landsat-8", "eo:cloud_cover": 12.0, "proj:epsg": EPSG,
         "proj:transform": [30.0, 0.0, 399885.0, 0.0, -30.0, 5360115.0], "proj:shape": [7861, 7741]})
    for b, key in enumerate(LANDSAT_BANDS):
        asset = dict(ls["assets"][key], **{"proj:transform": ls["properties"]["proj:transform"]})
        if key == "qa_pixel":
            _write_window(_local_path(root, asset["href"]), asset, utm, first, "uint16", 1, lambda r, c: r * 0 + 21824)
        else:
            _write_window(_local_path(root, asset["href"]), asset, utm, first, "uint16", 0,
                          lambda r, c, b=b: 8000 + 500 * b + (r + c) % 300)
    items.append(ls)

    # Copernicus DEM GLO-30: the 1 degree tile N47 E009 (1 arc-second pixels below 50 degrees)
    dem = _real("cop-dem-glo-30")
    t = [1 / 3600, 0.0, 9 - 0.5 / 3600, 0.0, -1 / 3600, 48 + 0.5 / 3600]
    dem = _relocate(dem, "Copernicus_DSM_COG_10_N47_00_E009_00_DEM", box(t[2], 47 + 0.5 / 3600, 10 - 0.5 / 3600,
                                                                         t[5]),
                    {"proj:transform": t, "proj:shape": [3600, 3600]})
    asset = dict(dem["assets"]["data"], **{"proj:transform": t})
    _write_window(_local_path(root, asset["href"]), asset, "EPSG:4326", lonlat, "float32", -32767,
                  lambda r, c: 450.0 + (r % 400) + 0.5 * (c % 300))
    items.append(dem)

    # Impact Observatory annual land cover: UTM zone 32T, 2021
    lulc = _real("io-lulc-annual-v02")
    t = [10.0, 0.0, 166020.0, 0.0, -10.0, 5423240.0]
    lulc = _relocate(lulc, "32T-2021", _utm_footprint((450000, 5150000, 650000, 5300000)),
                     {**_dates("2021-01-01T00:00:00Z", "2022-01-01T00:00:00Z"), "datetime": None, "proj:epsg": EPSG,
                      "io:tile_id": "32T", "supercell": "32T", "proj:transform": t})
    classes = np.array([1, 2, 5, 7, 8, 11], np.uint8)
    asset = dict(lulc["assets"]["data"], **{"proj:transform": t})
    _write_window(_local_path(root, asset["href"]), asset, utm, both, "uint8", 0,
                  lambda r, c: classes[(r // 9 + c // 7) % 6])
    items.append(lulc)

    # ESA WorldCover 2021: the 3 degree tile N45E009
    wc = _real("esa-worldcover")
    t = [1 / 12000, 0.0, 9.0, 0.0, -1 / 12000, 48.0]
    wc = _relocate(wc, "ESA_WorldCover_10m_2021_v200_N45E009", box(9.0, 45.0, 12.0, 48.0),
                   {"grid:code": "ESAWORLDCOVER-N45E009", "esa_worldcover:product_tile": "N45E009"})
    asset = wc["assets"]["map"]
    asset.update({"proj:transform": t})
    wclasses = np.array([10, 30, 40, 50, 80], np.uint8)
    _write_window(_local_path(root, asset["href"]), asset, "EPSG:4326", lonlat, "uint8", 0,
                  lambda r, c: wclasses[(r // 11 + c // 13) % 5])
    items.append(wc)
    return items


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus built once through the CLI (two samples, one block)."""
    require_pgstac()
    if not PC.is_dir() or not PBF.is_file():
        pytest.skip(f"real data not found at {REALDATA} (set EO_REALDATA to the shared/realdata folder)")
    tmp = tmp_path_factory.mktemp("corpus")
    monkeypatch = pytest.MonkeyPatch()
    loopback_only(monkeypatch)
    monkeypatch.setenv("EO_DATASET_CACHE", str(tmp / "cache"))
    samples = _samples()
    root = tmp / "blob"
    items = _items(root, samples)
    # canopy: Meta/WRI's index schema and a stand-in tile around the two samples
    key = quadkey(*VADUZ)
    chm = root / "dataforgood-fb-data" / PREFIX / "chm"
    chm.mkdir(parents=True)
    centre = shapely.union_all([s.footprint() for s in samples]).centroid
    _stand_in(chm / f"{key}.tif", key, centre.x, centre.y, half_px=4000)
    tiles = tmp / "tiles.geojson"
    tiles.write_text(json.dumps({"type": "FeatureCollection", "features": [meta_feature(key)]}))
    # OSM: Geofabrik's index over the real Liechtenstein extract
    (root / "download" / "europe").mkdir(parents=True)
    os.symlink(PBF, root / "download" / "europe" / "liechtenstein-latest.osm.pbf")
    api = start_pgstac_api([collection_stub(c) for c in sorted({i["collection"] for i in items})], items)
    try:
        with FileServer(root) as files:
            base = f"{files.url}/download"
            index = tmp / "index-v1.json"
            index.write_text(json.dumps({"type": "FeatureCollection", "features": [
                _feature("europe", None, "Europe", EUROPE, base, "europe"),
                _feature("liechtenstein", "europe", "Liechtenstein", extract_coverage(PBF), base,
                         "europe/liechtenstein", ["LI"])]}))
            point_pc_sdk_at(files, monkeypatch)
            csv = tmp / "samples.csv"
            csv.write_text("sample_id\n" + "".join(f"{s.id}\n" for s in samples))
            out = tmp / "corpus.zarr"
            template = f"{files.url}/dataforgood-fb-data/{PREFIX}/chm/{{tile}}.tif"
            code = cli_main(["build", "4m4eo", "--samples", str(csv), "--source", f"pc={api.url}",
                             "--source", f"canopy_tiles={tiles}", "--source", f"canopy_tiles.href_template={template}",
                             "--source", f"osm_extracts={index}",
                             "--out", str(out), "--scheduler", "sync"])
            yield {"code": code, "out": out, "root": root, "samples": samples, "items": items, "canopy": key,
                   "log": list(files.log), "tokens": files.tokens.requests}
    finally:
        monkeypatch.undo()
        api.stop()
        forget_pc_tokens()


def test_the_corpus_recipe_builds_all_eight_families_ndvi_and_captions(corpus) -> None:
    assert corpus["code"] == 0
    ds = xr.open_zarr(corpus["out"])
    ids = [s.id for s in corpus["samples"]]
    assert list(ds.sample_id.values) == ids and set(ds.epsg.values) == {EPSG}
    recipe = load_recipe("4m4eo")
    assert set(recipe.modalities) == {*FAMILIES, "ndvi"}
    assert recipe.sources["canopy_tiles"].href_template.startswith(PUBLIC_CANOPY)  # overridden for this build only
    for m in (*FAMILIES, "ndvi"):
        for var in (m, f"{m}_available", f"{m}_valid", f"{m}_time", f"{m}_item"):
            assert var in ds, var
    available = {m: ds[f"{m}_available"].values.tolist() for m in (*FAMILIES, "ndvi")}
    both = {m: [True, True] for m in (*FAMILIES, "ndvi") if m != "landsat"}
    assert available == {**both, "landsat": [True, False]}  # the Landsat footprint covers the first sample only
    by_collection = {i["collection"]: i["id"] for i in corpus["items"]}
    for m, collection in (("s2l2a", "sentinel-2-l2a"), ("s1rtc", "sentinel-1-rtc"), ("s1grd", "sentinel-1-grd"),
                          ("dem", "cop-dem-glo-30"), ("lulc", "io-lulc-annual-v02"), ("worldcover", "esa-worldcover")):
        assert ds[f"{m}_item"].values.tolist() == [by_collection[collection]] * 2, m
    assert ds.landsat_item.values.tolist() == [by_collection["landsat-c2-l2"], ""]
    assert not ds.landsat_valid.values[1].any() and (ds.landsat.values[1] == 0).all()  # fill, not data
    reason = block_reports(corpus["out"])[0]["missing"][ids[1]]
    assert reason == {"landsat": "no scene within 16 days of the anchor with cloud cover <= 60% covering >= 50% of "
                                 "the sample"}
    assert ds.canopy_item.values.tolist() == [corpus["canopy"]] * 2
    assert ds.osm_item.values.tolist() == ["liechtenstein"] * 2
    # every family holds data where its items cover: valid pixels, no fill
    for m in FAMILIES:
        for i, ok in enumerate(available[m]):
            if ok:
                assert ds[f"{m}_valid"].values[i].mean() > 0.5, (m, i)
    assert ds.s1rtc_valid.values.all() and ds.s1grd_valid.values.all() and ds.dem_valid.values.all()
    assert ds.lulc_valid.values.all() and ds.worldcover_valid.values.all() and ds.osm_valid.values.all()
    assert set(np.unique(ds.lulc.values)) <= {1, 2, 5, 7, 8, 11}
    assert set(np.unique(ds.worldcover.values)) <= {10, 30, 40, 50, 80}
    assert np.abs(ds.canopy.values - 15).max() < 2.5  # 1 m stripes of 0 and 30 m, averaged to 10 m
    dem = ds.dem.values
    assert (dem >= 450).all() and (dem < 1100).all()
    buildings = list(ds.osm_band.values).index("buildings")
    assert (ds.osm.values[:, buildings] == 1).sum() > 1000  # Vaduz is built up
    assert (ds.s1grd.values >= 100).all()  # the files' amplitude DNs, never the nodata 0
    # pixels equal an independent rasterio reproject of the local files (S2: less the baseline offset of 1000)
    by_collection_item = {i["collection"]: i for i in corpus["items"]}
    wc = _local_path(corpus["root"], by_collection_item["esa-worldcover"]["assets"]["map"]["href"])
    red = _local_path(corpus["root"], by_collection_item["sentinel-2-l2a"]["assets"]["B04"]["href"])
    b04 = list(ds.s2l2a_band.values).index("B04")
    for i, s in enumerate(corpus["samples"]):
        ref, has = reference(wc, s, 10, "nearest", 0, "uint8")
        got = compare(ds.worldcover.values[i, 0], ref, has, ds.worldcover_valid.values[i])
        assert got["pixels"] == 264 * 264 and got["max_abs_diff"] == 0, got
        ref, has = reference(red, s, 10, "bilinear", 0, "float64")
        got = compare(ds.s2l2a.values[i, b04].astype(np.float64) + 1000, np.rint(ref), has, np.ones_like(has, bool))
        assert got["pixels"] == 264 * 264 and got["max_abs_diff"] <= 1, got
    # time: S2 anchor, S1 RTC/GRD within 7 days, Landsat within 16 days
    day = lambda m: np.datetime_as_string(ds[f"{m}_time"].values, "D").tolist()  # noqa: E731
    assert day("s2l2a") == ["2021-07-18"] * 2 and day("s1rtc") == ["2021-07-20"] * 2
    assert day("s1grd") == ["2021-07-21"] * 2 and day("landsat")[0] == "2021-07-23"
    # captions: one per sample, from its own data
    captions = ds.caption.values.tolist()
    assert len(captions) == 2 and all(isinstance(c, str) and c.strip() for c in captions)
    assert captions[0] != captions[1]
    # every blob read was signed with a token of the local endpoint; none is stored
    assert corpus["tokens"] >= 1
    blob = [signed for _, path, _, signed in corpus["log"] if ".blob.core.windows.net/" in path]
    assert blob and all(blob)
    assert not any("sig=" in p.read_text(errors="replace") for p in corpus["out"].rglob("*.json"))


def test_ndvi_is_computed_from_the_built_sentinel2(corpus) -> None:
    ds = xr.open_zarr(corpus["out"])
    bands = list(ds.s2l2a_band.values)
    b4 = ds.s2l2a.values[:, bands.index("B04")].astype(np.float64)
    b8 = ds.s2l2a.values[:, bands.index("B08")].astype(np.float64)
    s2_valid = ds.s2l2a_valid.values.astype(bool)
    valid = ds.ndvi_valid.values.astype(bool)
    # baseline 05.10: stored DNs are the files' minus 1000 (harmonised) before NDVI is taken
    assert b4.min() >= 900 and b4.max() < 1900 and (b8 > b4).all()
    np.testing.assert_array_equal(valid, s2_valid & (b4 > 0) & (b8 > 0))
    assert 0 < (~s2_valid).mean() < 0.1  # the SCL cloud squares
    expected = np.rint((b8 - b4) / (b8 + b4) * 10000).astype(np.int16)
    ndvi = ds.ndvi.values[:, 0]
    np.testing.assert_array_equal(ndvi[valid], expected[valid])
    assert (ndvi[~valid] == -32768).all()
    assert ds.ndvi_item.values.tolist() == ds.s2l2a_item.values.tolist()
