"""Remote reads: COGs over HTTP range requests (GDAL /vsicurl/), Planetary Computer signing, bad input.

Everything is served from 127.0.0.1 (tests/servers.py): real data from ../shared/realdata by a range-capable file
server, blob-storage URLs through the same server acting as an HTTP proxy (``GDAL_HTTP_PROXY``) that checks SAS
signatures, and a SAS-token endpoint for the ``planetary-computer`` SDK (``PC_SDK_SAS_URL``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from eo_dataset import Grid, build, parse_recipe
from eo_dataset.cube.manifest import block_reports
from eo_dataset.engine.read import GDAL_REMOTE_OPTIONS, gdal_options
from eo_dataset.sources.signing import PlanetaryComputerSigner, redact_urls
from tests.conftest import realdata
from tests.eo_dataset.test_realdata import SAO_TOME, WORLDCOVER, compare, reference, worldcover_items, worldcover_recipe
from tests.servers import FileServer, forget_pc_tokens, loopback_only, point_pc_sdk_at

ACCOUNT, CONTAINER = "eotestdata", "cogs"
BLOB_URL = f"http://{ACCOUNT}.blob.core.windows.net/{CONTAINER}"


@pytest.fixture(autouse=True)
def _stay_on_loopback(monkeypatch) -> None:
    loopback_only(monkeypatch)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One file server on 127.0.0.1: realdata under /realdata, generated COGs under the fake blob account."""
    root = tmp_path_factory.mktemp("www")
    (root / "realdata").symlink_to(realdata())
    (root / ACCOUNT / CONTAINER).mkdir(parents=True)
    with FileServer(root) as srv:
        yield srv


@pytest.fixture
def pc_local(server, monkeypatch):
    """The planetary-computer SDK pointed at the local token endpoint, GDAL at the local blob proxy."""
    point_pc_sdk_at(server, monkeypatch)
    yield server
    forget_pc_tokens()


def _cells(*subcells: tuple[int, int]) -> list:
    grid = Grid()
    return [grid.sample(f"532U_89R_{a}_{b}") for a, b in subcells]


def _write(path: Path, sample, value_offset: int, *, crs: bool = True, count: int = 1) -> np.ndarray:
    """A tiled GeoTIFF exactly on the sample's 10 m grid; returns its band 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[0:264, 0:264]
    data = (value_offset + (rows * 3 + cols * 7) % 500 + 1).astype("uint16")
    profile = {"driver": "GTiff", "width": 264, "height": 264, "count": count, "dtype": "uint16", "nodata": 0,
               "tiled": True, "blockxsize": 128, "blockysize": 128, "compress": "deflate"}
    if crs:
        profile.update(crs=sample.crs, transform=sample.transform(10))
    with rasterio.open(path, "w", **profile) as dst:
        for b in range(count):
            dst.write(data + b, b + 1)
    return data


def _item(item_id: str, sample, href: str, *, proj: bool = True, day: int = 10) -> dict:
    fp = sample.footprint()
    props = {"datetime": f"2023-07-{day:02d}T10:00:00Z", "eo:cloud_cover": 1.0}
    if proj:
        props.update({"proj:epsg": sample.epsg, "proj:transform": list(sample.transform(10))[:6],
                      "proj:shape": [264, 264]})
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "test-cog",
            "geometry": {"type": "Polygon", "coordinates": [list(map(list, fp.exterior.coords))]},
            "bbox": list(fp.bounds), "properties": props, "links": [], "stac_extensions": [],
            "assets": {"data": {"href": href, "type": "image/tiff; application=geotiff"}}}


def _collection(index: int = 1) -> dict:
    return {"name": "test-cog", "dtype": "uint16", "nodata": 0, "units": "DN", "licence": "test",
            "cloud_cover_property": "eo:cloud_cover",
            "bands": [{"name": "b1", "asset": "data", "index": index}]}


def _recipe(items_file: Path, *, sign: str | None = None, extra: bool = False) -> dict:
    modalities = {"img": {"collection": _collection(), "source": "local", "resolution_m": 10,
                          "rule": {"type": "least_cloudy"}}}
    if extra:  # the same items read by a collection that expects a second band
        modalities["twoband"] = {"collection": _collection(index=2), "source": "local", "resolution_m": 10,
                                 "rule": {"type": "nearest", "tolerance_days": 1}}
    return {"name": "remote-check", "time": {"anchor": "img", "start": dt.date(2023, 7, 1),
                                             "end": dt.date(2023, 7, 31)},
            "sources": {"local": {"type": "static_catalog", "href": str(items_file), "sign": sign}},
            "modalities": modalities, "build": {"shard_samples": 8}}


def _feature_collection(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _all_text(cube: Path) -> str:
    """Every metadata / manifest file of a cube, as text (chunks are binary and skipped)."""
    out = []
    for p in cube.rglob("*"):
        if p.is_file() and (p.suffix == ".json" or p.name == "zarr.json"):
            out.append(p.read_text(errors="replace"))
    return "\n".join(out)


# -- GDAL configuration -------------------------------------------------------------------------------------------
def test_gdal_remote_options_are_sane_and_the_environment_wins(monkeypatch) -> None:
    opts = gdal_options()
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert opts["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
    assert int(opts["GDAL_HTTP_MAX_RETRY"]) >= 3 and float(opts["GDAL_HTTP_RETRY_DELAY"]) > 0
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "9")
    assert "GDAL_HTTP_MAX_RETRY" not in gdal_options() and "GDAL_HTTP_MAX_RETRY" in GDAL_REMOTE_OPTIONS


def test_redact_urls_removes_tokens() -> None:
    text = ("cannot open /vsicurl/https://a.blob.core.windows.net/c/x.tif?st=2024&se=2025&sp=rl&sig=SECRET%3D: "
            "HTTP 403; also 'http://127.0.0.1:8/p.tif?sig=abc'")
    out = redact_urls(text)
    assert "SECRET" not in out and "sig=" not in out and "se=2025" not in out
    assert "https://a.blob.core.windows.net/c/x.tif" in out and "http://127.0.0.1:8/p.tif" in out


# -- range requests ------------------------------------------------------------------------------------------------
def test_worldcover_read_by_window_over_http(server, tmp_path) -> None:
    """The real WorldCover tile served over HTTP: same cube as from disk, read with a few range requests."""
    items = _feature_collection(tmp_path / "wc.json", worldcover_items(
        lambda name: f"{server.url}/realdata/worldcover/{name}"))
    recipe = parse_recipe(worldcover_recipe(str(items)))
    grid = Grid(recipe.grid.spec())
    samples = [grid.sample(sid) for sid in SAO_TOME]
    server.reset_counters()
    build(recipe, samples, tmp_path / "wc.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "wc.zarr")
    path = realdata("worldcover", WORLDCOVER["2021"])
    for i, s in enumerate(samples):
        assert ds.worldcover_available.values[i]
        ref, has = reference(path, s, 10, "nearest", 0, "uint8")
        stats = compare(ds.worldcover.values[i, 0], ref, has, ds.worldcover_valid.values[i])
        assert stats["max_abs_diff"] == 0 and stats["mask_disagreement"] == 0, stats
    gets = [r for r in server.log if r[0] == "GET"]
    assert gets and all(r[2].startswith("bytes=") for r in gets), "every GET must be a range request"
    assert all(r[1].endswith(".tif") for r in server.log), f"no directory listing expected: {server.log}"
    size = path.stat().st_size
    assert server.bytes_sent < size / 4, f"read {server.bytes_sent} bytes of a {size}-byte file"
    print(f"worldcover over HTTP: {len(gets)} range requests, {server.bytes_sent} of {size} bytes")


# -- Planetary Computer signing --------------------------------------------------------------------------------------
def test_signed_reads_with_the_planetary_computer_sdk(pc_local, tmp_path) -> None:
    """Blob hrefs are signed with a token from the local SAS endpoint right before reading; no token is stored."""
    (s,) = _cells((1, 1))
    data = _write(pc_local.root / ACCOUNT / CONTAINER / "signed" / "a.tif", s, 1000)
    items = _feature_collection(tmp_path / "items.json", [_item("signed-a", s, f"{BLOB_URL}/signed/a.tif")])
    out = tmp_path / "signed.zarr"
    build(parse_recipe(_recipe(items, sign="planetary_computer")), [s], out, scheduler="sync")
    ds = xr.open_zarr(out)
    assert ds.img_available.values[0]
    np.testing.assert_array_equal(ds.img.values[0, 0], data)
    blob = [r for r in pc_local.log if r[1].startswith(f"{ACCOUNT}.blob.core.windows.net/")]
    assert blob and all(r[3] for r in blob), "every blob request carries a signature"
    assert pc_local.tokens.requests == 1  # one token for the container, reused
    text = _all_text(out)
    assert "sig=" not in text and "se=" not in text and "skoid" not in text


def test_unsigned_blob_reads_are_refused(pc_local, tmp_path) -> None:
    """Without ``sign`` the (local) blob storage answers 403: the sample is unavailable, with the reason."""
    (s,) = _cells((1, 1))
    _write(pc_local.root / ACCOUNT / CONTAINER / "signed" / "b.tif", s, 1000)
    items = _feature_collection(tmp_path / "items.json", [_item("unsigned-b", s, f"{BLOB_URL}/signed/b.tif")])
    out = tmp_path / "unsigned.zarr"
    build(parse_recipe(_recipe(items)), [s], out, scheduler="sync")
    assert not xr.open_zarr(out).img_available.values[0]
    reason = block_reports(out)[0]["missing"][s.id]["img"]
    assert "403" in reason and "cannot open" in reason, reason


def test_expired_token_is_re_signed_and_the_read_retried(pc_local, tmp_path) -> None:
    """A token the storage no longer accepts (expired/revoked) gives 403: a fresh token is fetched, the read works."""
    (s,) = _cells((2, 1))
    data = _write(pc_local.root / ACCOUNT / CONTAINER / "expiry" / "c.tif", s, 2000)
    signer = PlanetaryComputerSigner()
    first = signer.sign(f"{BLOB_URL}/expiry/c.tif")
    assert "sig=" in first.href and first.expires is not None and pc_local.tokens.requests == 1
    pc_local.tokens.revoke_all()  # the SDK still holds the old token, valid for an hour in its own eyes
    items = _feature_collection(tmp_path / "items.json", [_item("expiry-c", s, f"{BLOB_URL}/expiry/c.tif")])
    out = tmp_path / "expiry.zarr"
    build(parse_recipe(_recipe(items, sign="planetary_computer")), [s], out, scheduler="sync")
    ds = xr.open_zarr(out)
    assert ds.img_available.values[0], block_reports(out)
    np.testing.assert_array_equal(ds.img.values[0, 0], data)
    assert pc_local.refused >= 1 and pc_local.tokens.requests == 2


def test_token_trouble_makes_the_sample_unavailable_not_the_build(pc_local, tmp_path) -> None:
    """No token to be had (the endpoint refuses) for one sample's item: that sample is unavailable, the rest written."""
    good, bad = _cells((0, 3), (2, 3))
    data = _write(pc_local.root / ACCOUNT / CONTAINER / "mixed" / "good.tif", good, 3000)
    local = tmp_path / "good-local.tif"
    _write(local, good, 3000)
    _write(pc_local.root / ACCOUNT / CONTAINER / "mixed" / "bad.tif", bad, 3000)
    items = _feature_collection(tmp_path / "items.json", [
        _item("mixed-good", good, str(local)), _item("mixed-bad", bad, f"{BLOB_URL}/mixed/bad.tif")])
    pc_local.tokens.fail = 403  # e.g. a rejected subscription key (not retried)
    out = tmp_path / "mixed.zarr"
    build(parse_recipe(_recipe(items, sign="planetary_computer")), [good, bad], out, scheduler="sync")
    ds = xr.open_zarr(out)
    assert ds.img_available.values.tolist() == [True, False]
    np.testing.assert_array_equal(ds.img.values[0, 0], data)
    reason = block_reports(out)[0]["missing"][bad.id]["img"]
    assert "SAS token" in reason and "403" in reason, reason


# -- bad input -------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # written on purpose
def test_bad_assets_make_only_their_samples_unavailable(server, tmp_path) -> None:
    """404, a corrupt file, an item without the projection extension over a file without a CRS, and a collection
    that expects a band the file lacks: each sample/modality is unavailable with its reason; the rest is written."""
    good, missing, corrupt, nocrs, fallback = _cells((0, 0), (2, 0), (0, 2), (2, 2), (3, 3))
    www = server.root / "bad"
    data = _write(www / "good.tif", good, 100)
    (www / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(4000))
    _write(www / "nocrs.tif", nocrs, 100, crs=False)
    fb = _write(www / "fallback.tif", fallback, 400, crs=False)  # no CRS in the file, but the item says where
    url = f"{server.url}/bad"
    items = _feature_collection(tmp_path / "items.json", [
        _item("good", good, f"{url}/good.tif"),
        _item("missing", missing, f"{url}/missing.tif"),
        _item("corrupt", corrupt, f"{url}/corrupt.tif"),
        _item("nocrs", nocrs, f"{url}/nocrs.tif", proj=False),
        _item("fallback", fallback, f"{url}/fallback.tif"),
    ])
    out = tmp_path / "bad.zarr"
    samples = [good, missing, corrupt, nocrs, fallback]
    build(parse_recipe(_recipe(items, extra=True)), samples, out, scheduler="sync")
    ds = xr.open_zarr(out)
    assert ds.img_available.values.tolist() == [True, False, False, False, True]
    np.testing.assert_array_equal(ds.img.values[0, 0], data)
    np.testing.assert_array_equal(ds.img.values[4, 0], fb)
    assert not ds.img_valid.values[1:4].any() and (ds.img.values[1:4] == 0).all()
    missing_reasons = block_reports(out)[0]["missing"]
    assert "404" in missing_reasons[missing.id]["img"] or "not exist" in missing_reasons[missing.id]["img"]
    assert "cannot open" in missing_reasons[corrupt.id]["img"]
    assert "no projection extension" in missing_reasons[nocrs.id]["img"]
    assert "has 1 band(s)" in missing_reasons[good.id]["twoband"]
    assert not ds.twoband_available.values.any()
    print(json.dumps(missing_reasons, indent=1))


def test_a_token_about_to_expire_is_renewed_before_reading(tmp_path) -> None:
    """An open file whose token expires within the margin is re-signed (with a forced refresh) and reopened."""
    from eo_dataset.engine.read import RESIGN_MARGIN_S, DatasetCache
    from eo_dataset.sources.signing import Signed

    (s,) = _cells((1, 2))
    path = tmp_path / "x.tif"
    _write(path, s, 10)

    class ShortLived:  # a Signer whose tokens live for `ttl` seconds
        name = "short"

        def __init__(self, ttl: float) -> None:
            self.ttl, self.signed, self.refreshed = ttl, 0, 0

        def sign(self, href: str) -> Signed:
            self.signed += 1
            return Signed(href, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.ttl))

        def refresh(self, href: str) -> None:
            self.refreshed += 1

    cache = DatasetCache()
    short, long = ShortLived(RESIGN_MARGIN_S / 2), ShortLived(RESIGN_MARGIN_S * 10)
    first = cache.get(str(path), short)
    assert cache.get(str(path), short) is not first and (short.signed, short.refreshed) == (2, 1)
    cache.close()
    kept = cache.get(str(path), long)
    assert cache.get(str(path), long) is kept and (long.signed, long.refreshed) == (1, 0)
    cache.close()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # while writing the GCPs
def test_a_file_placed_by_ground_control_points_needs_no_projection_extension(tmp_path) -> None:
    """Sentinel-1 GRD files have GCPs instead of a geotransform and their items no projection extension."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    (s,) = _cells((1, 0))
    w, so, e, n = s.footprint().bounds
    pad = 0.01
    gcps = [GroundControlPoint(0, 0, w - pad, n + pad), GroundControlPoint(0, 400, e + pad, n + pad),
            GroundControlPoint(400, 0, w - pad, so - pad), GroundControlPoint(400, 400, e + pad, so - pad)]
    path = tmp_path / "grd.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=1, dtype="uint16", nodata=0) as dst:
        dst.gcps = (gcps, CRS.from_epsg(4326))
        dst.write(np.full((1, 400, 400), 321, dtype="uint16"))
    items = _feature_collection(tmp_path / "items.json", [_item("grd", s, str(path), proj=False)])
    out = tmp_path / "grd.zarr"
    build(parse_recipe(_recipe(items)), [s], out, scheduler="sync")
    ds = xr.open_zarr(out)
    assert ds.img_available.values[0] and ds.img_valid.values[0].all()
    assert (ds.img.values[0, 0] == 321).all()
