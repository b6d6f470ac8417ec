"""`eo-dataset browse` over HTTP: every endpoint (FastAPI's TestClient), the filters against counts computed with
xarray, the pictures against the cube's pixels, path traversal against the real server, the static export, the
command line. The pages in a real browser: test_browse_pages.py."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from eo_dataset.cli import main  # noqa: E402
from eo_dataset.cube.manifest import block_reports  # noqa: E402
from eo_dataset.errors import CubeError  # noqa: E402
from eo_dataset.view.browse.app import Server, bind, make_app  # noqa: E402
from eo_dataset.view.browse.browser import CubeBrowser  # noqa: E402
from eo_dataset.view.browse.export import MARKER, export_site  # noqa: E402

SECRET = "top secret: this file is beside the cube and must never be served"


@pytest.fixture(scope="module")
def cube_dir(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the demo cube (a link) and a secret file beside it."""
    folder = tmp_path_factory.mktemp("browse")
    (folder / "demo.zarr").symlink_to(demo_cube, target_is_directory=True)
    (folder / "secret.txt").write_text(SECRET)
    return folder


@pytest.fixture(scope="module")
def browser(cube_dir: Path) -> CubeBrowser:
    return CubeBrowser(cube_dir / "demo.zarr")


@pytest.fixture(scope="module")
def client(browser: CubeBrowser) -> TestClient:
    return TestClient(make_app(browser))


@pytest.fixture(scope="module")
def ds(demo_cube: Path) -> xr.Dataset:
    return xr.open_zarr(demo_cube).load()


def expected(ds: xr.Dataset, has=(), lacks=(), valid=None, vmin=None, vmax=None, date_from=None, date_to=None,
             text="", sid="") -> np.ndarray:
    """The samples a filter keeps, computed from the cube with xarray (independently of the browser's index)."""
    keep = np.ones(ds.sizes["sample"], dtype=bool)
    for m in has:
        keep &= ds[f"{m}_available"].values
    for m in lacks:
        keep &= ~ds[f"{m}_available"].values
    if valid is not None:
        v = ds[f"{valid}_valid"]
        frac = v.mean([d for d in v.dims if d != "sample"]).values
        keep &= (frac >= (vmin if vmin is not None else -1)) & (frac <= (vmax if vmax is not None else 2))
    if date_from or date_to:
        day = ds["anchor_time"].dt.floor("D").values
        keep &= ~np.isnat(day)
        if date_from:
            keep &= day >= np.datetime64(date_from)
        if date_to:
            keep &= day <= np.datetime64(date_to)
    if text:
        keep &= np.array([text.lower() in str(c).lower() for c in ds["caption"].values])
    if sid:
        keep &= np.array([sid.lower() in str(i).lower() for i in ds["sample_id"].values])
    return keep


def ids(ds: xr.Dataset) -> list[str]:
    return [str(i) for i in ds["sample_id"].values]


# -- the overview ----------------------------------------------------------------------------------------------------
def test_cube_endpoint(client: TestClient, ds: xr.Dataset) -> None:
    r = client.get("/api/cube.json")
    assert r.status_code == 200
    cube = r.json()
    assert cube["n"] == ds.sizes["sample"] == 32 and cube["anchor"] == ds.attrs["anchor"]
    mods = list(ds.attrs["modalities"])
    assert [m["name"] for m in cube["modalities"]] == mods
    for m in cube["modalities"]:
        assert m["count"] == int(ds[f"{m['name']}_available"].sum())
        assert m["shape"] == list(ds[m["name"]].shape[-2:])
    w, s, e, n = cube["bbox"]
    assert w < ds.lon.min() < ds.lon.max() < e and s < ds.lat.min() < ds.lat.max() < n
    assert cube["dates"] == ["2023-07-05", "2023-07-05"]
    assert (cube["tokens"], cube["embeddings"]) == (False, False)


FILTERS = [
    ({}, {}),
    ({"has": "s1rtc"}, {"has": ["s1rtc"]}),
    ({"has": "s1rtc", "lacks": "canopy"}, {"has": ["s1rtc"], "lacks": ["canopy"]}),
    ({"lacks": "s2l2a,dem"}, {"lacks": ["s2l2a", "dem"]}),
    ({"valid": "landsat", "valid_min": "0.6"}, {"valid": "landsat", "vmin": 0.6}),
    ({"valid": "landsat", "valid_min": "0.01", "valid_max": "0.99"}, {"valid": "landsat", "vmin": 0.01, "vmax": 0.99}),
    ({"valid_max": "0.5"}, {"valid": "s2l2a", "vmax": 0.5}),  # the anchor modality by default
    ({"date_from": "2023-07-05", "date_to": "2023-07-05"}, {"date_from": "2023-07-05", "date_to": "2023-07-05"}),
    ({"date_from": "2023-07-06"}, {"date_from": "2023-07-06"}),
    ({"text": "WATER"}, {"text": "water"}),
    ({"id": "90r_1"}, {"sid": "90R_1"}),
    ({"has": "osm", "text": "trees", "id": "89R"}, {"has": ["osm"], "text": "trees", "sid": "89R"}),
]


@pytest.mark.parametrize(("params", "spec"), FILTERS, ids=[json.dumps(p) for p, _ in FILTERS])
def test_filters_match_counts_computed_with_xarray(client: TestClient, ds: xr.Dataset, params: dict,
                                                    spec: dict) -> None:
    r = client.get("/api/query.json", params={**params, "per_page": 100})
    assert r.status_code == 200, r.text
    answer = r.json()
    keep = expected(ds, **spec)
    assert answer["total"] == 32 and answer["matched"] == int(keep.sum())
    assert [s["id"] for s in answer["samples"]] == [i for i, k in zip(ids(ds), keep, strict=True) if k]
    mods = list(ds.attrs["modalities"])
    avail = np.stack([ds[f"{m}_available"].values[keep] for m in mods]).astype(int)
    assert answer["counts"] == {m: int(avail[i].sum()) for i, m in enumerate(mods)}
    assert answer["co"]["counts"] == (avail @ avail.T).tolist()
    assert answer["map"]["level"] == "sample" and len(answer["map"]["features"]) == int(keep.sum())


def test_at_least_one_filter_of_each_kind_narrows(ds: xr.Dataset) -> None:
    """The filters above are not vacuous on the demo cube: each keeps some samples and drops others."""
    for spec in ({"has": ["s1rtc"]}, {"valid": "landsat", "vmin": 0.6}, {"date_from": "2023-07-05"},
                 {"text": "water"}, {"sid": "90R_1"}):
        assert 0 < expected(ds, **spec).sum() < 32, spec


def test_map_colours_and_list_rows(client: TestClient, ds: xr.Dataset) -> None:
    answer = client.get("/api/query.json", params={"colour": "valid:landsat"}).json()
    v = ds["landsat_valid"].mean(["y_30", "x_30"]).values
    values = {f["id"]: f["value"] for f in answer["map"]["features"]}
    assert values == pytest.approx(dict(zip(ids(ds), v.tolist(), strict=True)))
    answer = client.get("/api/query.json", params={"colour": "date"}).json()
    nat = np.isnat(ds.anchor_time.values)
    assert sum(f["value"] is None for f in answer["map"]["features"]) == int(nat.sum()) == 1
    row = answer["samples"][0]
    assert row["id"] == ids(ds)[0] and row["anchor"] == "2023-07-05"
    assert row["available"] == [m for m in ds.attrs["modalities"] if ds[f"{m}_available"].values[0]]
    assert row["caption"] == str(ds.caption.values[0])
    footprint = answer["map"]["features"][0]["ring"]
    assert len(footprint) == 4
    lon, lat = np.array(footprint).mean(axis=0)
    assert abs(lon - float(ds.lon[0])) < 1e-3 and abs(lat - float(ds.lat[0])) < 1e-3  # centre of the sample


def test_pages_cover_the_matched_samples_once(client: TestClient, ds: xr.Dataset) -> None:
    seen = []
    for page in range(5):
        answer = client.get("/api/query.json", params={"per_page": 10, "page": page}).json()
        assert answer["pages"] == 4
        if page < 4:
            seen += [s["id"] for s in answer["samples"]]
        else:  # past the end: the last page
            assert answer["page"] == 3
    assert seen == ids(ds)


def test_many_samples_are_aggregated_per_cell_then_per_bin(browser: CubeBrowser, ds: xr.Dataset) -> None:
    """Above max_points the map gets one feature per Major TOM cell (or lon/lat bin), with counts, never all
    footprints."""
    index = browser.index
    old = index.max_points
    try:
        index.max_points = 5
        answer = browser.query({"colour": "available:s1rtc"})
        cells = {}
        for sid, has in zip(ids(ds), ds.s1rtc_available.values, strict=True):
            cells.setdefault(sid.rsplit("_", 2)[0], []).append(has)
        assert answer["map"]["level"] == "cell"
        got = {f["id"]: (f["n"], f["value"]) for f in answer["map"]["features"]}
        assert got == {c: (len(v), pytest.approx(np.mean(v))) for c, v in cells.items()}
        index.max_points = 1
        answer = browser.query({})
        assert answer["map"]["level"] == "bin" and len(answer["map"]["features"]) == 1
        assert answer["map"]["features"][0]["n"] == 32
    finally:
        index.max_points = old


def test_bad_filters_are_one_line_400s(client: TestClient) -> None:
    for params, message in (({"has": "zz"}, "no modality 'zz'"), ({"valid_min": "2"}, "valid_min"),
                            ({"date_from": "July"}, "date_from"), ({"colour": "pink"}, "colour='pink'"),
                            ({"bogus": "1"}, "bogus")):
        r = client.get("/api/query.json", params=params)
        assert r.status_code == 400 and message in r.json()["detail"] and "\n" not in r.json()["detail"], params


# -- a sample ---------------------------------------------------------------------------------------------------------
def _sample_with_gaps(ds: xr.Dataset) -> str:
    """A sample with the anchor modality but not every other one."""
    full = np.all([ds[f"{m}_available"].values for m in ds.attrs["modalities"]], axis=0)
    i = int(np.flatnonzero(~full & ds.s2l2a_available.values)[0])
    return ids(ds)[i]


def test_sample_endpoint_has_the_cube_s_provenance(client: TestClient, ds: xr.Dataset, demo_cube: Path) -> None:
    sid = _sample_with_gaps(ds)
    i = ids(ds).index(sid)
    page = client.get(f"/api/sample/{sid}.json").json()
    assert page["id"] == sid and page["position"] == i and page["epsg"] == int(ds.epsg[i])
    assert page["caption"] == str(ds.caption.values[i])
    assert page["previous"] == ids(ds)[i - 1] and page["next"] == ids(ds)[i + 1]
    reasons = next(e["missing"][sid] for e in block_reports(demo_cube).values() if sid in e["missing"])
    anchor = ds.anchor_time.values[i]
    assert [m["name"] for m in page["modalities"]] == list(ds.attrs["modalities"])
    for m in page["modalities"]:
        name = m["name"]
        assert m["available"] == bool(ds[f"{name}_available"].values[i])
        if not m["available"]:
            assert m["reason"] == reasons[name] and "image" not in m
            continue
        assert m["image"] == f"img/{sid}/{name}.png" and m["overlay"] == f"img/{sid}/{name}.valid.png"
        assert m["items"] == str(ds[f"{name}_item"].values[i]).split(",")
        t = ds[f"{name}_time"].values[i]
        assert m["time"] == np.datetime_as_string(t, unit="s") + "Z"
        if not m["static"]:
            assert m["gap_days"] == pytest.approx((t - anchor) / np.timedelta64(1, "D"))
        assert m["valid_fraction"] == pytest.approx(float(ds[f"{name}_valid"].values[i].mean()))
    assert set(reasons) == {m["name"] for m in page["modalities"] if not m["available"]}


def _png(client: TestClient, url: str) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", (url, r.text[:200])
    return Image.open(io.BytesIO(r.content))


def test_pictures_have_the_cube_s_pixels(client: TestClient, ds: xr.Dataset) -> None:
    sid = _sample_with_gaps(ds)
    i = ids(ds).index(sid)
    meta = ds.attrs["modalities"]
    for m in meta:
        if not ds[f"{m}_available"].values[i]:
            assert client.get(f"/img/{sid}/{m}.png").status_code == 404
            continue
        shape = ds[m].shape[-2:]
        im = _png(client, f"/img/{sid}/{m}.png")
        assert im.size == shape[::-1] and im.mode == "RGB"  # one PNG pixel per cube pixel
        assert np.asarray(im).reshape(-1, 3).std(axis=0).max() > 0, f"{m}: a blank picture"
        overlay = np.asarray(_png(client, f"/img/{sid}/{m}.valid.png"))
        assert overlay.shape == (*shape, 4)
        np.testing.assert_array_equal(overlay[..., 3] == 0, ds[f"{m}_valid"].values[i], err_msg=m)
    # class colours are the display spec's, class by class
    lulc = np.asarray(_png(client, f"/img/{sid}/lulc.png"))
    classes, valid = ds.lulc.values[i, 0], ds.lulc_valid.values[i]
    for k, colour in meta["lulc"]["display"]["colours"].items():
        where = (classes == int(k)) & valid
        if where.any():
            rgb = tuple(int(colour[j:j + 2], 16) for j in (1, 3, 5))
            assert (lulc[where] == rgb).all(), k
    # true colour: the display range of the spec, band by band
    s2 = np.asarray(_png(client, f"/img/{sid}/s2l2a.png")).astype(float)
    spec, bands = meta["s2l2a"], list(ds.s2l2a_band.values)
    lo, hi = spec["display"]["range"]
    for c, band in enumerate(spec["display"]["rgb"]):
        x = ds.s2l2a.values[i, bands.index(band)] * spec["scale"] + spec["offset"]
        want = np.round(np.clip((x - lo) / (hi - lo), 0, 1) * 255)
        ok = ds.s2l2a_valid.values[i]
        assert np.abs(s2[..., c][ok] - want[ok]).max() <= 1, band


def test_legends(client: TestClient, ds: xr.Dataset) -> None:
    i = int(np.flatnonzero(ds.lulc_available.values & ds.s1rtc_available.values & ds.osm_available.values)[0])
    page = client.get(f"/api/sample/{ids(ds)[i]}.json").json()
    by = {m["name"]: m for m in page["modalities"]}
    lulc = by["lulc"]["legend"]
    assert lulc["type"] == "classes"
    shares = {it["id"]: it["share"] for it in lulc["items"]}
    values, counts = np.unique(ds.lulc.values[i, 0][ds.lulc_valid.values[i]], return_counts=True)
    assert {k: s for k, s in shares.items() if s > 0} == pytest.approx(
        {int(v): c / counts.sum() for v, c in zip(values, counts, strict=True)})
    assert {it["name"] for it in lulc["items"]} == set(ds.attrs["modalities"]["lulc"]["classes"].values())
    s1 = by["s1rtc"]["legend"]
    assert (s1["type"], s1["units"], s1["range"]) == ("colourbar", "dB", [-25.0, 0.0]) and len(s1["colours"]) == 11
    assert by["osm"]["legend"]["type"] == "layers"
    assert [it["id"] for it in by["osm"]["legend"]["items"]][::-1] == list(
        ds.attrs["modalities"]["osm"]["display"]["colours"])  # listed top layer first


def test_unknown_samples_modalities_and_pictures_are_404(client: TestClient, ds: xr.Dataset) -> None:
    sid = ids(ds)[0]
    missing = "s1rtc"
    other = ids(ds)[int(np.flatnonzero(~ds.s1rtc_available.values)[0])]  # a sample without it
    for url in (f"/api/sample/{sid}x.json", f"/img/{sid}/zz.png", f"/img/{sid}/s2l2a.jpg", "/img/nope/s2l2a.png",
                f"/img/{other}/{missing}.png", f"/img/{sid}/tokens/s2l2a.png", "/static/nope.js", "/static/index.html"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert "\n" not in r.json()["detail"]


def test_pages_scripts_and_headers(client: TestClient) -> None:
    for url, kind, needle in (("/", "text/html", "overview.js"), ("/index.html", "text/html", "overview.js"),
                              ("/sample.html", "text/html", "sample.js"),
                              ("/static/common.js", "text/javascript", "eoData"),
                              ("/static/overview.js", "text/javascript", "localQuery"),
                              ("/static/sample.js", "text/javascript", "show-invalid"),
                              ("/static/style.css", "text/css", "show-invalid"),
                              ("/config.js", "text/javascript", '"mode": "live"')):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and needle in r.text, url
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"


# -- security --------------------------------------------------------------------------------------------------------
TRAVERSALS = [
    "/static/../browser.py", "/static/%2e%2e/browser.py", "/static/..%2fbrowser.py", "/static/%2e%2e%2fapp.py",
    "/static/..%2f..%2f..%2fsecret.txt", "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/../secret.txt",
    "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/img/..%2f..%2fsecret.txt/s2l2a.png",
    "/img/532U_89R_0_0/..%2f..%2f..%2fsecret.txt", "/img/532U_89R_0_0/%2e%2e%2fzarr.json",
    "/api/sample/..%2f..%2fsecret.txt.json", "/api/sample/%2e%2e%2f%2e%2e%2fsecret.txt.json",
    "/api/sample/%2Fetc%2Fpasswd.json", "/img/%2Fetc%2Fpasswd/s2l2a.png", "/img/532U_89R_0_0/%2Fetc%2Fpasswd",
    "/img/532U_89R_0_0/tokens/..%2f..%2fsecret.txt", "/demo.zarr/zarr.json", "/secret.txt", "//etc/passwd",
    "/static/....//....//secret.txt", "/static/%252e%252e%252fapp.py", "/api/cube.json/../../secret.txt",
]


def test_path_traversal_reads_nothing_outside(browser: CubeBrowser, cube_dir: Path) -> None:
    """Raw requests (no client normalises the paths) to the real server: nothing beside the cube, of the package or
    of the system comes back; no such request is a 200."""
    package = (Path(__file__).resolve().parents[3] / "eo_dataset" / "view" / "browse" / "browser.py").read_text()
    server = Server(make_app(browser), bind("127.0.0.1", 0))
    host, port = server.sock.getsockname()[:2]
    with server.running():
        for path in TRAVERSALS:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read().decode(errors="replace")
            conn.close()
            assert r.status in (400, 404), (path, r.status, body[:200])
            assert SECRET not in body and "root:" not in body and "class CubeBrowser" not in body, path
            assert '"zarr_format"' not in body, path
    assert "class CubeBrowser" in package  # the needle would be found if served


# -- attachments -----------------------------------------------------------------------------------------------------
def _token_store(path: Path, ds: xr.Dataset) -> np.ndarray:
    """A token store laid out as eo_models.tokens.store writes it (image tokens of lulc, caption tokens)."""
    n = ds.sizes["sample"]
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 64, size=(n, 11, 11)).astype(np.int32)
    has = ds.lulc_available.values
    tokens[~has] = -1
    store = xr.Dataset(
        {"lulc_tokens": (("sample", "lulc_ty", "lulc_tx"), tokens, {"codebook_size": 64}),
         "lulc_available": ("sample", has),
         "caption_tokens": (("sample", "caption_len"), np.zeros((n, 8), dtype=np.int32)),
         "caption_available": ("sample", np.ones(n, dtype=bool))},
        coords={"sample_id": ("sample", np.array(ids(ds), dtype=np.dtypes.StringDType()))},
        attrs={"title": "4M4EO tokens", "eo_store": "tokens", "eo_models_tokens": 3, "complete": True,
               "modalities": {"lulc": ds.attrs["modalities"]["lulc"]},
               "tokenizers": {"lulc": {"kind": "image", "codebook_size": 64, "token_grid": [11, 11], "crop_px": 264},
                              "caption": {"kind": "sequence", "vocab_size": 300}}})
    store.to_zarr(path, zarr_format=3)
    return tokens


def test_token_maps_and_neighbours(cube_dir: Path, ds: xr.Dataset, tmp_path: Path) -> None:
    tokens = _token_store(tmp_path / "tokens.zarr", ds)
    emb = np.random.default_rng(2).normal(size=(32, 5))
    sample_id = np.array(ids(ds), dtype=np.dtypes.StringDType())
    xr.Dataset({"embedding": (("sample", "dim"), emb)}, coords={"sample_id": ("sample", sample_id)}).to_zarr(
        tmp_path / "emb.zarr", zarr_format=3)
    b = CubeBrowser(cube_dir / "demo.zarr", tokens=tmp_path / "tokens.zarr", embeddings=tmp_path / "emb.zarr")
    client = TestClient(make_app(b))
    assert client.get("/api/cube.json").json()["tokens"] is True
    i = int(np.flatnonzero(ds.lulc_available.values)[0])
    sid = ids(ds)[i]
    page = client.get(f"/api/sample/{sid}.json").json()
    assert [t["modality"] for t in page["tokens"]] == ["lulc"]  # caption tokens are no map
    t = page["tokens"][0]
    assert t["available"] and t["grid"] == [11, 11] and t["codebook_size"] == 64
    im = np.asarray(_png(client, t["image"]))
    assert im.shape == (11, 11, 3)
    colour = {}
    for k, rgb in zip(tokens[i].ravel(), im.reshape(-1, 3), strict=True):  # one colour per token id
        assert colour.setdefault(int(k), tuple(rgb)) == tuple(rgb)
    assert len(set(colour.values())) == len(colour)
    other = ids(ds)[int(np.flatnonzero(~ds.lulc_available.values)[0])]
    assert client.get(f"/img/{other}/tokens/lulc.png").status_code == 404
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = unit @ unit[i]
    sim[i] = -np.inf
    want = [ids(ds)[j] for j in np.argsort(-sim)[:6]]
    assert [nb["id"] for nb in page["neighbours"]] == want
    assert page["neighbours"][0]["similarity"] == pytest.approx(sim.max())


def test_attachments_that_do_not_fit_are_refused(cube_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CubeError, match="not a Zarr v3 store"):
        CubeBrowser(cube_dir / "demo.zarr", tokens=tmp_path)
    with pytest.raises(CubeError, match="expected a token store"):
        CubeBrowser(cube_dir / "demo.zarr", tokens=cube_dir / "demo.zarr")
    xr.Dataset({"x": ("sample", np.zeros(3))}).to_zarr(tmp_path / "e.zarr", zarr_format=3)
    with pytest.raises(CubeError, match="expected a variable 'embedding'"):
        CubeBrowser(cube_dir / "demo.zarr", embeddings=tmp_path / "e.zarr")
    with pytest.raises(CubeError, match="not a Zarr v3 store"):
        CubeBrowser(tmp_path)


# -- the static export -----------------------------------------------------------------------------------------------
def _data(path: Path) -> tuple[str, object]:
    m = re.fullmatch(r'eoData\(("[^"]*"),(.*)\);\n', path.read_text(), re.S)
    assert m, path
    return json.loads(m.group(1)), json.loads(m.group(2))


def test_export_writes_the_same_pages(browser: CubeBrowser, client: TestClient, ds: xr.Dataset,
                                      tmp_path: Path) -> None:
    out = tmp_path / "site"
    summary = export_site(browser, out)
    assert summary["samples"] == 32
    for name in ("index.html", "sample.html"):
        assert (out / name).read_bytes() == client.get(f"/{name}").content
    for name in ("common.js", "overview.js", "sample.js", "style.css"):
        assert (out / "static" / name).read_bytes() == client.get(f"/static/{name}").content
    assert '"mode": "static"' in (out / "config.js").read_text()
    assert _data(out / "data" / "cube.js") == ("cube", client.get("/api/cube.json").json())
    key, table = _data(out / "data" / "table.js")
    assert key == "table" and table["ids"] == ids(ds)
    assert table["available"]["s1rtc"] == ds.s1rtc_available.values.astype(int).tolist()
    pictures = 0
    for sid in ids(ds):
        key, page = _data(out / "data" / "sample" / f"{sid}.js")
        assert key == f"sample/{sid}" and page == client.get(f"/api/sample/{sid}.json").json()
        for m in page["modalities"]:
            if m["available"]:
                assert (out / m["image"]).read_bytes() == client.get(f"/{m['image']}").content
                assert (out / m["overlay"]).is_file()
                pictures += 2
            else:
                assert not (out / "img" / sid / f"{m['name']}.png").exists()
    assert summary["pictures"] == pictures == 2 * sum(int(ds[f"{m}_available"].sum()) for m in ds.attrs["modalities"])
    assert json.loads((out / MARKER).read_text())["samples"] == 32


def test_export_replaces_only_its_own(cube_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cube = str(cube_dir / "demo.zarr")
    site = tmp_path / "site"
    assert main(["browse", cube, "--export", str(site)]) == 0
    assert "wrote" in capsys.readouterr().err
    (site / "img" / "stale.png").write_bytes(b"old")  # a file an export could have written: replaced with the rest
    assert main(["browse", cube, "--export", str(site)]) == 0 and not (site / "img" / "stale.png").exists()
    (site / "notes.txt").write_text("mine")  # a file of the user's in our export: nothing is touched
    before = sorted(p.relative_to(site) for p in site.rglob("*"))
    capsys.readouterr()
    assert main(["browse", cube, "--export", str(site)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "left untouched" in err and err.count("\n") == 1
    assert sorted(p.relative_to(site) for p in site.rglob("*")) == before and (site / "notes.txt").read_text() == "mine"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"jpg")
    assert main(["browse", cube, "--export", str(mine)]) == 2
    assert "is not a static site written by eo-dataset browse" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]


# -- the command line ------------------------------------------------------------------------------------------------
def _serve(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """``eo-dataset browse ARGS`` in a subprocess; returns it, its URL and the lines it printed up to the URL."""
    env = {"EO_DATASET_LOG_DIR": str(tmp_path / "logs"), "PATH": "/usr/bin:/bin", "COLUMNS": "200",
           "HOME": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-m", "eo_dataset.cli", "browse", *args], stderr=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"at (http://\S+/)", line)
        if m:
            return p, m.group(1), lines
    p.kill()
    raise AssertionError(f"no URL printed: {''.join(lines)}")


def test_cli_serves_on_loopback_quietly(cube_dir: Path, tmp_path: Path) -> None:
    import signal
    import urllib.request

    p, url, lines = _serve([str(cube_dir / "demo.zarr"), "--port", "0"], tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        cube = json.loads(urllib.request.urlopen(url + "api/cube.json", timeout=10).read())
        assert cube["n"] == 32
        assert not any("warning" in line for line in lines)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "stopped" in err and "Uvicorn" not in err and "INFO" not in err  # uvicorn's records: in the log file
    assert "uvicorn.error: Started server process" in (tmp_path / "logs" / "eo-dataset.log").read_text()


def test_cli_warns_loudly_off_loopback(cube_dir: Path, tmp_path: Path) -> None:
    import signal

    p, url, lines = _serve([str(cube_dir / "demo.zarr"), "--port", "0", "--host", "0.0.0.0"], tmp_path)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    warning = next(line for line in lines if "warning" in line)
    assert "serving on 0.0.0.0, not only on this machine" in warning and "without a password" in warning


def test_cli_errors_are_one_line(cube_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["browse", str(cube_dir / "demo.zarr"), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another --port" in err
        assert err.count("\n") == 1
    for args, message in (([str(tmp_path)], "is not a Zarr v3 store"),
                          ([str(cube_dir / "demo.zarr"), "--tokens", str(tmp_path), "--port", "0"],
                           "--tokens"),
                          ([str(cube_dir / "secret.txt"), "--export", str(tmp_path / "s")], "is not a Zarr v3 store")):
        assert main(["browse", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_the_wheel_ships_the_page_files(tmp_path: Path) -> None:
    import zipfile

    from eo_dataset.view.browse.pages import page_files

    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    files = page_files()
    assert {"index.html", "sample.html", "common.js", "overview.js", "sample.js", "style.css"} <= set(files)
    assert {f"eo_dataset/view/browse/static/{name}" for name in files} <= names


# -- a cube over HTTP ------------------------------------------------------------------------------------------------
# A range-capable static file server (aiohttp, as object stores answer), in its own process.
FILE_SERVER = """
import asyncio, sys
from aiohttp import web

async def main():
    app = web.Application()
    app.router.add_static("/", sys.argv[1])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_cube_served_over_http(demo_cube: Path, ds: xr.Dataset, client: TestClient) -> None:
    pytest.importorskip("aiohttp")
    proc = subprocess.Popen([sys.executable, "-c", FILE_SERVER, str(demo_cube.parent)], stdout=subprocess.PIPE,
                            text=True)
    try:
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}/{demo_cube.name}"
        remote = TestClient(make_app(CubeBrowser(url)))
        assert remote.get("/api/query.json", params={"has": "s1rtc"}).json()["matched"] == int(
            ds.s1rtc_available.sum())
        sid = ids(ds)[int(np.flatnonzero(~ds.s1rtc_available.values)[0])]
        page = remote.get(f"/api/sample/{sid}.json").json()
        assert page == client.get(f"/api/sample/{sid}.json").json()  # reasons from the manifest too
        assert remote.get(page["modalities"][0]["image"]).content == client.get(page["modalities"][0]["image"]).content
    finally:
        proc.terminate()
        proc.wait(timeout=10)
