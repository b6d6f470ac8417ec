"""A real STAC API on 127.0.0.1: PostgreSQL + pgstac (the Planetary Computer's stack) behind ``rustac serve``.

Loaded with the 25 real Planetary Computer items of ../shared/realdata/stac/planetary-computer, their asset hrefs
re-pointed from ``https://<account>.blob.core.windows.net/...`` to ``http://`` (same host and path), which GDAL
reaches through the local file server acting as HTTP proxy (tests/servers.py). Pixels for the assets the builds
read are generated on the items' own grids (the real files are remote); selection, signing, range reads,
harmonisation and snapshots all run through the real client libraries.

Without PostgreSQL/PostGIS the module is skipped with the reason; under CI (``CI=true``) it fails instead:
``.ci/pgstac.sh`` installs what it needs.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.windows import Window, from_bounds

from eo_dataset import Grid, GridSpec, build, parse_recipe
from eo_dataset.cli.main import main as cli_main
from eo_dataset.cube.manifest import block_reports
from eo_dataset.engine.select import Choice, NoChoice, choose
from eo_dataset.errors import SourceError
from eo_dataset.pipeline.snapshot import snapshot, snapshot_metadata
from eo_dataset.sources import GeoParquetSource, StacApiSource, StaticCatalogSource, open_source
from eo_dataset.spec.recipe import SourceSpec
from tests.conftest import REALDATA
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
UTC = dt.UTC
ARCTIC, FUEGO, ZONE60, TASMANIA, LIBYA = "906U_158R_2_2", "618D_451L_0_3", "673U_972R_0_1", "459D_1247R_0_2", \
    "337U_146R_0_2"
S2_BANDS = ["B02", "B03", "B04", "B08"]
S2_FIRST, S2_SECOND = "S2B_MSIL2A_20240419T095549_R122_T46XER_20240419T124342", \
    "S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458"


def _real_items() -> list[dict]:
    if not PC.is_dir():
        pytest.skip(f"real data not found at {PC} (set EO_REALDATA to the shared/realdata folder)")
    items = []
    for path in sorted(PC.glob("*.json")):
        items += json.loads(path.read_text())
    return items


def _repoint(item: dict) -> dict:
    """The item with every blob-storage asset href moved from https to http (same host and path)."""
    item = json.loads(json.dumps(item))
    for asset in item["assets"].values():
        if asset["href"].startswith("https://") and ".blob.core.windows.net/" in asset["href"]:
            asset["href"] = "http://" + asset["href"][len("https://"):]
    return item


# -- pixels for the assets the builds read, on the items' own grids ------------------------------------------------
def _local_path(root: Path, href: str) -> Path:
    host, path = href.split("://", 1)[1].split("/", 1)
    return root / host.split(".blob.core.windows.net")[0] / path


def _write_window(path: Path, asset: dict, crs: str, bounds: tuple[float, float, float, float], dtype: str,
                  nodata: float, values) -> tuple[np.ndarray, Affine]:
    """Write the window of the asset's grid (proj:transform) covering ``bounds`` (in ``crs``) + a margin."""
    t = Affine(*asset["proj:transform"][:6])
    win = from_bounds(*bounds, t)
    col0, row0 = int(np.floor(win.col_off)) - 16, int(np.floor(win.row_off)) - 16  # + a 16 px margin
    col1, row1 = int(np.ceil(win.col_off + win.width)) + 16, int(np.ceil(win.row_off + win.height)) + 16
    win = Window(col0, row0, col1 - col0, row1 - row0)
    rows, cols = np.mgrid[0:int(win.height), 0:int(win.width)]
    rows, cols = rows + int(win.row_off), cols + int(win.col_off)  # absolute pixel indices of the asset's grid
    data = values(rows, cols).astype(dtype)
    transform = rasterio.windows.transform(win, t)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=dtype,
                       crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=128, blockysize=128,
                       compress="deflate") as dst:
        dst.write(data, 1)
    return data, transform


def _generate_pixels(root: Path, items: list[dict]) -> dict[str, Path]:
    """Local files for the S2 (2 tiles), NASADEM and io-lulc assets over the test samples; returns key -> path."""
    grid = Grid(GridSpec(origin="snap"))
    by_id = {i["id"]: i for i in items}
    out: dict[str, Path] = {}
    arctic = grid.sample(ARCTIC)
    for n, item_id in enumerate((S2_FIRST, S2_SECOND)):
        item = by_id[item_id]
        crs = f"EPSG:{item['properties']['proj:epsg']}"
        bounds = rasterio.warp.transform_bounds(arctic.crs, crs, *arctic.bounds, densify_pts=21)
        for b, band in enumerate(S2_BANDS):
            def dn(r, c, b=b, n=n):
                v = 1000 + 5000 * n + 100 * b + (r * 7 + c * 3) % 97
                if n == 0:
                    v = np.where((r % 300 < 20) & (c % 300 < 20), 900, v)  # dark: below the +1000 offset
                    v = np.where(c % 200 < 40, 0, v)  # no-data strips: the second tile fills them
                return v
            path = _local_path(root, item["assets"][band]["href"])
            _write_window(path, item["assets"][band], crs, bounds, "uint16", 0, dn)
            out[f"{item_id}/{band}"] = path
        scl = (lambda r, c: np.where((r % 200 < 30) & (c % 200 < 30), 9, 4)) if n == 0 else (lambda r, c: r * 0 + 5)
        path = _local_path(root, item["assets"]["SCL"]["href"])
        _write_window(path, item["assets"]["SCL"], crs, bounds, "uint8", 0, scl)
        out[f"{item_id}/SCL"] = path
    fuego = grid.sample(FUEGO)
    item = by_id["NASADEM_HGT_s56w072"]
    asset = dict(item["assets"]["elevation"], **{"proj:transform": item["properties"]["proj:transform"]})
    bounds = rasterio.warp.transform_bounds(fuego.crs, "EPSG:4326", *fuego.bounds, densify_pts=21)
    path = _local_path(root, asset["href"])
    _write_window(path, asset, "EPSG:4326", bounds, "int16", -32768, lambda r, c: 100 + (r * 2 + c) % 700)
    out["nasadem"] = path
    z60 = grid.sample(ZONE60)
    item = by_id["60V-2023"]
    asset = dict(item["assets"]["data"], **{"proj:transform": item["properties"]["proj:transform"]})
    classes = np.array([1, 2, 4, 5, 7, 8, 9, 11], dtype=np.uint8)
    path = _local_path(root, asset["href"])
    _write_window(path, asset, "EPSG:32660", z60.bounds, "uint8", 0, lambda r, c: classes[(r // 7 + c // 5) % 8])
    out["lulc"] = path
    return out


@pytest.fixture(autouse=True)
def _stay_on_loopback(monkeypatch) -> None:
    loopback_only(monkeypatch)


@pytest.fixture(scope="module")
def pc_items() -> list[dict]:
    return [_repoint(i) for i in _real_items()]


@pytest.fixture(scope="module")
def files(tmp_path_factory, pc_items):
    root = tmp_path_factory.mktemp("blob")
    paths = _generate_pixels(root, pc_items)
    with FileServer(root) as srv:
        srv.paths = paths
        yield srv


@pytest.fixture(scope="module")
def api(pc_items):
    """The real STAC API (pgstac + rustac) on 127.0.0.1, behind a counting proxy; all 25 real items loaded."""
    require_pgstac()
    collections = [collection_stub(c) for c in sorted({i["collection"] for i in pc_items})]
    server = start_pgstac_api(collections, pc_items)
    yield server
    server.stop()


@pytest.fixture
def pc_sdk(files, monkeypatch):
    point_pc_sdk_at(files, monkeypatch)
    yield files
    forget_pc_tokens()


def _source(api, tmp_path: Path, **kw) -> StacApiSource:
    return StacApiSource(SourceSpec(type="stac_api", href=api.url, cache_dir=str(tmp_path / "cache"), **kw))


def _ids(items: list[pystac.Item]) -> set[str]:
    return {i.id for i in items}


WORLD = (-180.0, -90.0, 180.0, 90.0)
APRIL_2024 = (dt.datetime(2024, 4, 1, tzinfo=UTC), dt.datetime(2024, 4, 30, 23, 59, 59, tzinfo=UTC))


# -- search ----------------------------------------------------------------------------------------------------------
def test_search_pages_through_the_api(api, tmp_path) -> None:
    src = _source(api, tmp_path, page_size=1, cache=False)
    before = len(api.proxy.requests)
    items = src.search("sentinel-2-l2a", WORLD, *APRIL_2024)
    pages = [r for r in api.proxy.requests[before:] if r[0] == "POST"]
    assert len(items) == 4 and len(pages) >= 4  # one item a page
    assert all(i.collection_id == "sentinel-2-l2a" for i in items)
    assert _ids(src.search("sentinel-2-l2a", (93.0, 81.0, 96.0, 81.5), *APRIL_2024)) == {S2_FIRST, S2_SECOND}
    assert src.search("sentinel-2-l2a", WORLD, dt.datetime(2023, 1, 1, tzinfo=UTC),
                      dt.datetime(2023, 12, 31, tzinfo=UTC)) == []


@pytest.mark.parametrize(("collection", "query", "filter", "expected"), [
    ("sentinel-2-l2a", {"eo:cloud_cover": {"lt": 0.5}}, None, {S2_FIRST, S2_SECOND}),
    ("sentinel-2-l2a", {"s2:mgrs_tile": {"in": ["46XER", "46XES"]}}, None,
     {S2_FIRST, "S2B_MSIL2A_20240419T095549_R122_T46XES_20240419T123824"}),
    ("landsat-c2-l2", None, "eo:cloud_cover < 30",
     {"LC09_L2SP_089088_20240417_02_T2", "LC09_L2SP_089087_20240417_02_T2"}),
    ("landsat-c2-l2", {"landsat:collection_category": {"eq": "T1"}}, "eo:cloud_cover >= 40 AND eo:cloud_cover < 99",
     {"LC09_L2SP_089090_20240417_02_T1", "LC09_L2SP_089089_20240417_02_T1"}),
    ("sentinel-1-rtc", None, "sat:orbit_state = 'descending' AND platform = 'SENTINEL-1A'", None),
    ("sentinel-1-rtc", None, "sat:orbit_state = 'ascending'", set()),
])
def test_query_and_cql2_filter_are_evaluated_by_the_server(api, tmp_path, pc_items, collection, query, filter,
                                                            expected) -> None:
    """pgstac evaluates query and CQL2 filter; the local sources (static JSON, geoparquet) agree item for item."""
    spec_filter = parse_recipe(_recipe("unused", filter=filter)).modalities["s2"].filter if filter else None
    api_items = _source(api, tmp_path, cache=False).search(collection, WORLD, None, None, query, spec_filter)
    got = _ids(api_items)
    if expected is None:
        expected = {i["id"] for i in pc_items if i["collection"] == collection}
    assert got == expected
    fc = tmp_path / "items.json"
    fc.write_text(json.dumps({"type": "FeatureCollection", "features": pc_items}))
    assert _ids(StaticCatalogSource(str(fc)).search(collection, WORLD, None, None, query, spec_filter)) == expected


def test_transient_failures_are_retried_with_backoff(api, tmp_path) -> None:
    src = _source(api, tmp_path, retries=3, backoff_s=0.05, cache=False)
    api.proxy.fail(2)
    failed = api.proxy.failed
    assert _ids(src.search("nasadem", WORLD, None, None)) == {"NASADEM_HGT_s56w072"}
    assert api.proxy.failed == failed + 2
    impatient = _source(api, tmp_path, retries=0, cache=False)
    api.proxy.fail(1)
    with pytest.raises(SourceError, match=r"STAC API search at .* failed for collection 'nasadem'"):
        impatient.search("nasadem", WORLD, None, None)
    api.proxy.fail(0)


def test_a_request_is_sent_at_most_retries_plus_one_times(api, tmp_path) -> None:
    src = _source(api, tmp_path, retries=2, backoff_s=0, cache=False)
    failed = api.proxy.failed
    api.proxy.fail(100)
    try:
        with pytest.raises(SourceError, match=r"STAC API search at .* failed for collection 'nasadem'"):
            src.search("nasadem", WORLD, None, None)
        assert api.proxy.failed == failed + 3
    finally:
        api.proxy.fail(0)


def test_the_source_uses_the_shared_cache_folder_and_policy(api, tmp_path, monkeypatch) -> None:
    from eo_dataset.sources.base import CACHE_ENV
    from eo_dataset.sources.retry import RETRY_STATUS, RetryPolicy

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    src = StacApiSource(SourceSpec(type="stac_api", href=api.url, retries=2, backoff_s=0.1))
    assert src.cache_dir == tmp_path / "searches" and src.retry == RetryPolicy(attempts=3, backoff_s=0.1)
    mounted = src._io.session.get_adapter(api.url).max_retries  # what pystac-client's session really retries with
    assert mounted.total == 2 and mounted.backoff_factor == 0.1 and set(mounted.status_forcelist) == set(RETRY_STATUS)


def test_searches_are_cached_per_block(api, tmp_path) -> None:
    src = _source(api, tmp_path)
    box = (-72.5, -56.0, -71.0, -55.0)
    def searches() -> int:
        return sum(1 for method, path in api.proxy.requests if method == "POST" and path.startswith("/search"))

    first = src.search("nasadem", box, None, None)
    n = searches()
    rerun = _source(api, tmp_path)  # a rerun: a new process (it reads the landing page), the same cache
    again = rerun.search("nasadem", box, None, None)
    assert searches() == n and rerun.searches == 0 and _ids(again) == _ids(first) == {"NASADEM_HGT_s56w072"}
    assert src.searches == 1
    cached = list((tmp_path / "cache").glob("*.json"))
    assert len(cached) == 1 and "sig=" not in cached[0].read_text()
    src.search("nasadem", (-72.5, -56.0, -71.0, -55.1), None, None)  # another block: searched
    assert searches() == n + 1


def test_unreachable_api_is_a_clear_error(tmp_path) -> None:
    from tests.servers import free_port

    with pytest.raises(SourceError, match=r"cannot open the STAC API at 'http://127.0.0.1:\d+/'.*reachable"):
        StacApiSource(SourceSpec(type="stac_api", href=f"http://127.0.0.1:{free_port()}/", retries=0))


# -- selection by the temporal rules on the API's items -------------------------------------------------------------
def _recipe(href: str, *, filter: str | None = None, snap: bool = True, cache_dir: str | None = None,
            sign: str | None = None, page_size: int = 2) -> dict:
    source = {"type": "stac_api", "href": href, "page_size": page_size, "retries": 2, "backoff_s": 0.05,
              "sign": sign}
    if cache_dir:
        source["cache_dir"] = cache_dir
    return {
        "name": "pgstac-check",
        "grid": {"origin": "snap" if snap else "exact"},
        "time": {"anchor": "s2", "start": dt.date(2023, 4, 1), "end": dt.date(2024, 4, 30)},
        "sources": {"pc": source},
        "modalities": {
            "s2": {"collection": "sentinel-2-l2a", "source": "pc", "resolution_m": 10, "bands": S2_BANDS,
                   "query": {"eo:cloud_cover": {"lt": 0.5}}, "rule": {"type": "least_cloudy"},
                   **({"filter": filter} if filter else {})},
            "s1": {"collection": "sentinel-1-rtc", "source": "pc", "resolution_m": 10,
                   "filter": "sar:instrument_mode = 'IW'", "rule": {"type": "nearest", "tolerance_days": 7}},
            "landsat": {"collection": "landsat-c2-l2", "source": "pc", "resolution_m": 30, "bands": ["red"],
                        "query": {"platform": {"in": ["landsat-8", "landsat-9"]}},
                        "rule": {"type": "nearest", "tolerance_days": 16, "max_cloud_cover": 50}},
            "dem": {"collection": "nasadem", "source": "pc", "resolution_m": 30, "rule": {"type": "static"}},
            "lulc": {"collection": "io-lulc-annual-v02", "source": "pc", "resolution_m": 10,
                     "rule": {"type": "same_year"}},
        },
        "build": {"shard_samples": 8},
    }


def _candidates(recipe, name: str, sample) -> list[pystac.Item]:
    from eo_dataset.engine.select import search_window

    m = recipe.modalities[name]
    return open_source(recipe.sources["pc"]).search(m.collection.name, sample.footprint().bounds,
                                                    *search_window(recipe, m), m.query, m.filter)


def test_selection_by_each_temporal_rule(api, tmp_path) -> None:
    recipe = parse_recipe(_recipe(api.url, cache_dir=str(tmp_path / "cache")))
    grid = Grid(recipe.grid.spec())

    def pick(name: str, sid: str, anchor: dt.datetime | None) -> Choice | NoChoice:
        s = grid.sample(sid)
        return choose(recipe, name, _candidates(recipe, name, s), s.footprint(), s.epsg, anchor)

    # least_cloudy: the one scene of 2024-04-19; the tile in the sample's own UTM zone (46) first
    s2 = pick("s2", ARCTIC, None)
    assert isinstance(s2, Choice) and s2.item_ids == f"{S2_FIRST},{S2_SECOND}"
    assert s2.time == dt.datetime(2024, 4, 19, 9, 55, 49, 24000, tzinfo=UTC)
    # nearest, +-7 days: the S1 RTC pass of 2024-04-19 04:59 is 5.8 days from a 04-13 anchor, 8 from a 04-11 one
    s1 = pick("s1", LIBYA, dt.datetime(2024, 4, 13, 10, tzinfo=UTC))
    assert isinstance(s1, Choice)
    assert s1.item_ids == "S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc"
    far = pick("s1", LIBYA, dt.datetime(2024, 4, 11, 10, tzinfo=UTC))
    assert isinstance(far, NoChoice)
    assert far.reason == "no scene within 7 days of the anchor covering >= 50% of the sample"
    # nearest, +-16 days, cloud cover <= 50: the Landsat 9 scene of 2024-04-17 (42.93 % cloudy over this sample)
    ls = pick("landsat", TASMANIA, dt.datetime(2024, 4, 5, tzinfo=UTC))
    assert isinstance(ls, Choice) and ls.item_ids == "LC09_L2SP_089089_20240417_02_T1"
    assert isinstance(pick("landsat", TASMANIA, dt.datetime(2024, 3, 30, tzinfo=UTC)), NoChoice)
    # same_year: the 2023 land cover for a 2023 anchor, none for 2022
    lulc = pick("lulc", ZONE60, dt.datetime(2023, 6, 1, tzinfo=UTC))
    assert isinstance(lulc, Choice) and lulc.item_ids == "60V-2023"
    assert pick("lulc", ZONE60, dt.datetime(2022, 6, 1, tzinfo=UTC)).reason == "no item for year 2022"
    # static: every intersecting DEM tile, whatever the time
    dem = pick("dem", FUEGO, None)
    assert isinstance(dem, Choice) and dem.item_ids == "NASADEM_HGT_s56w072"


# -- building from the API: search, selection, signing, range reads, harmonisation -----------------------------------
SAMPLES = [ARCTIC, FUEGO, ZONE60, TASMANIA, LIBYA]


@pytest.fixture(scope="module")
def api_cube(api, files, tmp_path_factory):
    """A cube built from the API with Planetary Computer signing (local SAS endpoint) and HTTP range reads."""
    mp = pytest.MonkeyPatch()
    point_pc_sdk_at(files, mp)
    try:
        folder = tmp_path_factory.mktemp("api-cube")
        recipe = parse_recipe(_recipe(api.url, cache_dir=str(folder / "cache"), sign="planetary_computer"))
        samples = [Grid(recipe.grid.spec()).sample(s) for s in SAMPLES]
        before = len(api.proxy.requests)
        build(recipe, samples, folder / "api.zarr", scheduler="sync")
        yield {"path": folder / "api.zarr", "recipe": recipe, "samples": samples, "folder": folder,
               "requests": len(api.proxy.requests) - before, "tokens": files.tokens.requests, "log": list(files.log)}
    finally:
        mp.undo()
        forget_pc_tokens()


def test_build_from_the_api_picks_the_documented_items(api_cube) -> None:
    ds = xr.open_zarr(api_cube["path"])
    avail = {m: ds[f"{m}_available"].values.tolist() for m in ("s2", "s1", "landsat", "dem", "lulc")}
    assert avail == {"s2": [True, False, False, False, False], "s1": [False] * 5, "landsat": [False] * 5,
                     "dem": [False, True, False, False, False], "lulc": [False, False, True, False, False]}
    assert ds.s2_item.values[0] == f"{S2_FIRST},{S2_SECOND}"
    assert ds.dem_item.values[1] == "NASADEM_HGT_s56w072" and ds.lulc_item.values[2] == "60V-2023"
    assert np.datetime_as_string(ds.lulc_time.values[2], "D") == "2023-01-01"  # the window's middle year
    reasons = block_reports(api_cube["path"])[0]["missing"]
    assert reasons[TASMANIA]["landsat"] == "anchor modality unavailable, so there is no date to match"
    assert reasons[LIBYA]["s1"] == "anchor modality unavailable, so there is no date to match"
    assert reasons[ARCTIC]["dem"].startswith("no item intersects the sample")
    assert api_cube["tokens"] >= 3  # one SAS token per storage container read (S2, NASADEM, io-lulc)
    assert all(signed for _, path, _, signed in api_cube["log"] if ".blob.core.windows.net/" in path)


def test_sentinel2_baseline_offset_is_harmonised_and_tiles_mosaicked(api_cube, files) -> None:
    """Processing baseline 05.10 DNs are shifted by -1000 (values < 1 clip to 1); the sample's own-zone tile wins
    and the other tile fills its no-data strip; SCL cloud (9) is not valid."""
    ds = xr.open_zarr(api_cube["path"])
    s = api_cube["samples"][0]
    cube = ds.s2.values[0]
    valid = ds.s2_valid.values[0]
    assert ds.s2.attrs["offset"] == 0.0 and ds.s2.attrs["scale"] == 0.0001
    for b, band in enumerate(S2_BANDS):
        with rasterio.open(files.paths[f"{S2_FIRST}/{band}"]) as src:
            win = from_bounds(*s.bounds, src.transform).round_offsets().round_lengths()
            raw = src.read(1, window=win).astype(np.int64)
        assert raw.shape == (264, 264)
        own = raw != 0
        expected = np.maximum(raw - 1000, 1)
        np.testing.assert_array_equal(cube[b][own], expected[own])
        assert (cube[b][raw == 900] == 1).all() and (raw == 900).any()
        strip = ~own  # filled from the zone-47 tile: its DNs are 6000 + ..., harmonised to 5000 + ...
        assert strip.any() and (cube[b][strip] >= 5000 + 100 * b).all() and (cube[b][strip] < 5200 + 100 * b).all()
    with rasterio.open(files.paths[f"{S2_FIRST}/SCL"]) as src:
        scl = src.read(1, window=from_bounds(*s.bounds, src.transform).round_offsets().round_lengths())
    cloudy = np.kron(scl == 9, np.ones((2, 2), dtype=bool))  # 20 m SCL on the 10 m grid
    with rasterio.open(files.paths[f"{S2_FIRST}/B02"]) as src:
        raw = src.read(1, window=from_bounds(*s.bounds, src.transform).round_offsets().round_lengths())
    assert not valid[cloudy & (raw != 0)].any() and valid[~cloudy].all()


def test_dem_and_land_cover_match_reproject(api_cube, files) -> None:
    ds = xr.open_zarr(api_cube["path"])
    fuego, z60 = api_cube["samples"][1], api_cube["samples"][2]
    ref, has = reference(files.paths["nasadem"], fuego, 30, "bilinear", -32768, "float64")
    dem = compare(ds.dem.values[1, 0], np.rint(ref), has, ds.dem_valid.values[1])
    assert dem["pixels"] == 88 * 88 and dem["max_abs_diff"] <= 1, dem
    ref, has = reference(files.paths["lulc"], z60, 10, "nearest", 0, "uint8")
    lulc = compare(ds.lulc.values[2, 0], ref, has, ds.lulc_valid.values[2])
    assert lulc["pixels"] == 264 * 264 and lulc["max_abs_diff"] == 0, lulc
    print("pgstac build vs reproject: nasadem", dem, "io-lulc", lulc)


def test_no_token_is_stored_anywhere(api_cube) -> None:
    texts = [p.read_text(errors="replace") for p in api_cube["folder"].rglob("*.json")]
    assert texts and not any("sig=" in t or "skoid=" in t for t in texts)


# -- snapshots -------------------------------------------------------------------------------------------------------
def test_snapshot_then_build_from_it_alone(api, api_cube, files, tmp_path, monkeypatch) -> None:
    """``eo-dataset snapshot`` freezes the searches; a build from the parquet alone makes the same cube."""
    recipe_data = _recipe(api.url, cache_dir=str(tmp_path / "cache"), sign="planetary_computer")
    recipe_file = tmp_path / "recipe.yaml"
    import yaml

    recipe_file.write_text(yaml.safe_dump(json.loads(json.dumps(recipe_data, default=str))))
    samples_csv = tmp_path / "samples.csv"
    samples_csv.write_text("sample_id\n" + "\n".join(SAMPLES) + "\n")
    out = tmp_path / "items.parquet"
    assert cli_main(["snapshot", str(recipe_file), "--samples", str(samples_csv), "--out", str(out)]) == 0
    meta = snapshot_metadata(out)
    assert meta["recipe"] == "pgstac-check" and meta["n_samples"] == 5 and meta["failed_searches"] == {}
    table = pq.read_table(out)
    ids = set(table["id"].to_pylist())
    assert len(ids) == table.num_rows and {S2_FIRST, S2_SECOND, "NASADEM_HGT_s56w072", "60V-2023"} <= ids
    assert ids == _block_search_ids(api, tmp_path, parse_recipe(recipe_data), SAMPLES)
    hrefs = json.dumps([a.href for i in GeoParquetSource(str(out)).items() for a in i.assets.values()])
    assert "sig=" not in hrefs and "blob.core.windows.net" in hrefs

    point_pc_sdk_at(files, monkeypatch)
    api.proxy.fail(0)
    n = len(api.proxy.requests)
    cube = tmp_path / "from-snapshot.zarr"
    code = cli_main(["build", str(recipe_file), "--samples", str(samples_csv), "--source", f"pc={out}",
                     "--out", str(cube), "--scheduler", "sync"])
    assert code == 0 and len(api.proxy.requests) == n, "a build from the snapshot must not touch the API"
    a, b = xr.open_zarr(api_cube["path"]), xr.open_zarr(cube)
    for m in ("s2", "dem", "lulc", "s1", "landsat"):
        np.testing.assert_array_equal(a[m].values, b[m].values)
        np.testing.assert_array_equal(a[f"{m}_valid"].values, b[f"{m}_valid"].values)
        assert a[f"{m}_item"].values.tolist() == b[f"{m}_item"].values.tolist()


def _block_search_ids(api, tmp_path: Path, recipe, sample_ids: list[str]) -> set[str]:
    """The ids a build's searches find: one search per modality over the block's box (one block here)."""
    import shapely

    from eo_dataset.engine.select import search_window

    grid = Grid(recipe.grid.spec())
    bbox = shapely.union_all([grid.sample(s).footprint() for s in sample_ids]).bounds
    src = _source(api, tmp_path / "fresh", cache=False)
    return {i.id for m in recipe.modalities.values()
            for i in src.search(m.collection.name, bbox, *search_window(recipe, m), m.query, m.filter)}


def test_snapshot_api(api, tmp_path) -> None:
    recipe = parse_recipe(_recipe(api.url, cache_dir=str(tmp_path / "cache")))
    samples = [Grid(recipe.grid.spec()).sample(s) for s in SAMPLES]
    report = snapshot(recipe, samples[1:3], tmp_path / "s.parquet", modalities=["dem", "lulc"])
    # one block: Tierra del Fuego + the zone-60 sample, a box across the globe that meets several io-lulc tiles
    assert report.n_searches == 2 and report.per_collection["nasadem"] == 1
    sub = recipe.model_copy(update={"modalities": {k: recipe.modalities[k] for k in ("dem", "lulc")}})
    assert {i.id for i in GeoParquetSource(str(report.path)).items()} == _block_search_ids(api, tmp_path, sub,
                                                                                          SAMPLES[1:3])
    src = GeoParquetSource(str(report.path))
    assert src.collections == ["io-lulc-annual-v02", "nasadem"]
    box = Grid(recipe.grid.spec()).sample(ZONE60).footprint().bounds
    assert _ids(src.search("io-lulc-annual-v02", box, dt.datetime(2023, 1, 1, tzinfo=UTC), None)) == {"60V-2023"}
    assert src.search("io-lulc-annual-v02", box, None, dt.datetime(2022, 12, 31, tzinfo=UTC)) == []
