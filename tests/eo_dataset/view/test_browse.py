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
from tests.servers import serve_folder  # noqa: E402

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


# -- generated modalities (--generated) -------------------------------------------------------------------------------
GEN_MODEL = "eo-fusion/tiny"
GEN_CROP = 256  #: base pixels of the generated lulc: the centre crop of a token grid, as eo-models generate writes


def generated_store(path: Path, cube: Path) -> Path:
    """A store of generated modalities over ``cube``, written by eo-models' own writer (the layout of
    ``eo-models generate``): ``lulc`` on a 256 px centre crop (a checkerboard of classes, unlike any truth), ``dem``
    over the whole sample (the truth + 50 m, or a ramp where the cube has no DEM), captions; every sample with
    ``s2l2a`` (the conditioning) has them."""
    from eo_dataset.cube.schema import CubeMeta
    from eo_models.fusion.aligned import AlignedStore, GeneratedFrom, caption_variables, generated_variables

    ds = xr.open_zarr(cube).load()
    meta = CubeMeta.from_attrs(ds.attrs)
    one = GeneratedFrom(GEN_MODEL, "ab" * 32, ("s2l2a",), {"steps": 8, "order": "maskgit"})
    two = GeneratedFrom(GEN_MODEL, "ab" * 32, ("s2l2a", "lulc"), {"steps": 8, "order": "maskgit"})
    variables = {**generated_variables(meta.modalities["lulc"], ds.lulc.dtype, meta, generated_from=one,
                                       crop_px=GEN_CROP),
                 **generated_variables(meta.modalities["dem"], ds.dem.dtype, meta, generated_from=two),
                 **caption_variables(one)}
    store = AlignedStore.create_or_resume(path, cube, kind="generated", variables=variables, identity={"test": 1},
                                          attrs={"fusion_model": GEN_MODEL}, block=16)
    classes = np.array(sorted(meta.modalities["lulc"].class_table))
    yy, xx = np.mgrid[:GEN_CROP, :GEN_CROP]
    ramp = np.linspace(400, 900, 88 * 88, dtype=np.float32).reshape(88, 88)
    for b in store.todo():
        rows = store.block_samples(b)
        has = ds.s2l2a_available.values[rows]
        lulc = np.stack([classes[(yy // 32 + xx // 32 + i) % len(classes)] for i in range(rows.start, rows.stop)])
        truth = ds.dem_available.values[rows]
        dem = np.where(truth[:, None, None, None], ds.dem.values[rows] + 50, ramp).astype(np.float32)
        store.write(b, {"lulc": lulc[:, None].astype(np.uint8),
                        "lulc_valid": np.repeat(has[:, None, None], GEN_CROP, 1).repeat(GEN_CROP, 2),
                        "lulc_available": has, "dem": dem,
                        "dem_valid": np.where(truth[:, None, None], ds.dem_valid.values[rows], True) &
                        has[:, None, None], "dem_available": has,
                        "caption": np.array([f"generated caption of sample {i}" if h else "" for i, h in
                                             zip(range(rows.start, rows.stop), has, strict=True)], dtype=object)})
    store.finish()
    return path


@pytest.fixture(scope="module")
def generated(cube_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated_store(tmp_path_factory.mktemp("generated") / "gen.zarr", cube_dir / "demo.zarr")


@pytest.fixture(scope="module")
def gen_client(cube_dir: Path, generated: Path) -> TestClient:
    return TestClient(make_app(CubeBrowser(cube_dir / "demo.zarr", generated=generated)))


def test_generated_modalities_are_listed_beside_the_truth(gen_client: TestClient, ds: xr.Dataset,
                                                           generated: Path) -> None:
    gen = xr.open_zarr(generated)
    cube = gen_client.get("/api/cube.json").json()["generated"]
    assert cube["store"] == "gen.zarr" and cube["model"] == GEN_MODEL and cube["caption"] and cube["complete"]
    assert cube["modalities"] == [{"name": m, "count": int(gen[f"{m}_available"].sum())} for m in ("lulc", "dem")]
    i = int(np.flatnonzero(ds.s2l2a_available.values & ds.lulc_available.values)[0])
    sid = ids(ds)[i]
    page = gen_client.get(f"/api/sample/{sid}.json").json()
    g = {e["modality"]: e for e in page["generated"]["modalities"]}
    assert list(g) == ["lulc", "dem"] and page["generated"]["store"] == "gen.zarr"
    lulc, dem = g["lulc"], g["dem"]
    assert lulc["available"] and lulc["label"] == f"generated from s2l2a by {GEN_MODEL}"
    assert dem["label"] == f"generated from s2l2a, lulc by {GEN_MODEL}" and dem["conditioning"] == ["s2l2a", "lulc"]
    assert lulc["schedule"] == "steps 8, order maskgit" and lulc["digest"] == "ab" * 6
    assert lulc["crop"] == {"px": GEN_CROP, "offset_px": [4, 4], "sample_px": 264, "whole": False}
    assert dem["crop"]["whole"] and dem["shape"] == [88, 88] and lulc["shape"] == [264, 264]
    assert lulc["image"] == f"img/{sid}/generated/lulc.png" and lulc["overlay"] == f"img/{sid}/generated/lulc.valid.png"
    assert lulc["valid_fraction"] == pytest.approx(float(gen.lulc_valid.values[i].mean()))
    assert page["generated"]["caption"]["text"] == str(gen.caption.values[i]) == f"generated caption of sample {i}"
    assert page["generated"]["caption"]["label"] == lulc["label"]
    assert page["caption"] == str(ds.caption.values[i])  # the truth's is still the cube's
    # a modality the cube lacks for a sample can be generated for it: the truth's reason, the generated picture
    k = int(np.flatnonzero(ds.s2l2a_available.values & ~ds.lulc_available.values)[0])
    lacking = gen_client.get(f"/api/sample/{ids(ds)[k]}.json").json()
    assert not next(m for m in lacking["modalities"] if m["name"] == "lulc")["available"]
    assert lacking["generated"]["modalities"][0]["available"]
    assert _png(gen_client, lacking["generated"]["modalities"][0]["image"]).size == (264, 264)
    # a sample without the conditioning modality has nothing generated
    j = int(np.flatnonzero(~ds.s2l2a_available.values)[0])
    other = gen_client.get(f"/api/sample/{ids(ds)[j]}.json").json()["generated"]
    assert [e["available"] for e in other["modalities"]] == [False, False] and "image" not in other["modalities"][0]
    assert other["caption"] == {**page["generated"]["caption"], "text": "", "available": False}
    for url in (f"/img/{ids(ds)[j]}/generated/lulc.png", f"/img/{sid}/generated/s1rtc.png",
                f"/img/{sid}/generated/lulc.jpg", f"/img/{sid}/generated/..%2flulc.png"):
        r = gen_client.get(url)
        assert r.status_code == 404 and "\n" not in r.json()["detail"], url


def test_generated_pictures_have_the_generated_pixels(gen_client: TestClient, ds: xr.Dataset,
                                                      generated: Path) -> None:
    from eo_dataset.view.quicklook import INVALID_GREY

    gen = xr.open_zarr(generated).load()
    i = int(np.flatnonzero(ds.s2l2a_available.values & ds.lulc_available.values & ds.dem_available.values)[0])
    sid = ids(ds)[i]
    im = np.asarray(_png(gen_client, f"/img/{sid}/generated/lulc.png"))
    assert im.shape == (264, 264, 3)  # the cube's lulc grid, one PNG pixel per pixel
    classes, valid = gen.lulc.values[i, 0], gen.lulc_valid.values[i]
    assert valid[4:260, 4:260].all() and not valid[:4].any() and not valid[:, 260:].any()  # the crop
    for k, colour in ds.attrs["modalities"]["lulc"]["display"]["colours"].items():  # the truth's display spec
        where = (classes == int(k)) & valid
        assert where.any(), k
        assert (im[where] == tuple(int(colour[j:j + 2], 16) for j in (1, 3, 5))).all(), k
    grey = round(INVALID_GREY * 255)
    assert (im[~valid] == grey).all()  # outside the generated crop: not valid
    assert not np.array_equal(im, np.asarray(_png(gen_client, f"/img/{sid}/lulc.png")))  # not the truth
    overlay = np.asarray(_png(gen_client, f"/img/{sid}/generated/lulc.valid.png"))
    np.testing.assert_array_equal(overlay[..., 3] == 0, valid)
    # the DEM spec has no value range: the generated one takes the truth's, so that colours compare
    page = gen_client.get(f"/api/sample/{sid}.json").json()
    truth = next(m for m in page["modalities"] if m["name"] == "dem")["legend"]
    dem = next(g for g in page["generated"]["modalities"] if g["modality"] == "dem")["legend"]
    assert dem["range"] == truth["range"] and dem["type"] == truth["type"] == "colourbar"
    assert np.asarray(_png(gen_client, f"/img/{sid}/generated/dem.png")).shape == (88, 88, 3)
    assert _png(gen_client, f"/img/{sid}/generated/dem.png").tobytes() != _png(gen_client, f"/img/{sid}/dem.png"
                                                                             ).tobytes()
    # where the cube has no DEM, the generated one is stretched on its own values, as the truth would be
    j = int(np.flatnonzero(ds.s2l2a_available.values & ~ds.dem_available.values)[0])
    alone = gen_client.get(f"/api/sample/{ids(ds)[j]}.json").json()
    legend = next(g for g in alone["generated"]["modalities"] if g["modality"] == "dem")["legend"]
    x = gen.dem.values[j, 0][gen.dem_valid.values[j]]
    assert legend["range"] == pytest.approx(np.percentile(x, [2, 98]).tolist())


def test_generated_pictures_in_the_static_export(cube_dir: Path, generated: Path, gen_client: TestClient,
                                                 ds: xr.Dataset, tmp_path: Path) -> None:
    out = tmp_path / "site"
    summary = export_site(CubeBrowser(cube_dir / "demo.zarr", generated=generated), out)
    gen = xr.open_zarr(generated)
    cube_pictures = 2 * sum(int(ds[f"{m}_available"].sum()) for m in ds.attrs["modalities"])
    assert summary["pictures"] == cube_pictures + 2 * int(gen.lulc_available.sum() + gen.dem_available.sum())
    for sid in ids(ds)[:4] + [ids(ds)[int(np.flatnonzero(~ds.s2l2a_available.values)[0])]]:
        _, page = _data(out / "data" / "sample" / f"{sid}.js")
        assert page == gen_client.get(f"/api/sample/{sid}.json").json()
        for g in page["generated"]["modalities"]:
            if g["available"]:
                assert (out / g["image"]).read_bytes() == gen_client.get(f"/{g['image']}").content
                assert (out / g["overlay"]).read_bytes() == gen_client.get(f"/{g['overlay']}").content
            else:
                assert not (out / "img" / sid / "generated" / f"{g['modality']}.png").exists()


def _rewrite(src: Path, out: Path, change) -> Path:
    """A copy of a Zarr store, changed by ``change(ds)`` (xarray; stored encodings dropped)."""
    new = change(xr.open_zarr(src).load())
    for v in new.variables.values():
        v.encoding = {}
    new.to_zarr(out, zarr_format=3)
    return out


def test_a_generated_store_of_another_cube_is_refused(cube_dir: Path, generated: Path, ds: xr.Dataset,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cube = cube_dir / "demo.zarr"
    half = _rewrite(generated, tmp_path / "half.zarr", lambda d: d.isel(sample=slice(0, 16)))
    backwards = _rewrite(generated, tmp_path / "backwards.zarr", lambda d: d.isel(sample=slice(None, None, -1)))
    for store, message in ((half, "16 samples, the first 16 are the cube's"),
                           (backwards, f"sample 0 is {ids(ds)[-1]!r} where the cube has {ids(ds)[0]!r}")):
        with pytest.raises(CubeError, match="was generated from another cube") as exc:
            CubeBrowser(cube, generated=store)
        assert message in str(exc.value) and "32 samples, in its order" in str(exc.value)
    with pytest.raises(CubeError, match="is a cube; expected a store of generated modalities"):
        CubeBrowser(cube, generated=cube)
    wide = _rewrite(generated, tmp_path / "wide.zarr", lambda d: d.assign(lulc=d.lulc.astype("uint16")))
    with pytest.raises(CubeError, match="its lulc .shape .1, 264, 264., uint16. is not laid out as the cube's lulc"):
        CubeBrowser(cube, generated=wide)
    # without sample ids, the cube's samples_hash vouches for the order
    no_ids = _rewrite(generated, tmp_path / "no-ids.zarr", lambda d: d.drop_vars("sample_id"))
    assert CubeBrowser(cube, generated=no_ids).generated.has(0, "lulc")
    other_hash = _rewrite(no_ids, tmp_path / "other-hash.zarr", lambda d: d.assign_attrs(samples_hash="0" * 16))
    with pytest.raises(CubeError, match="samples_hash other than this cube's"):
        CubeBrowser(cube, generated=other_hash)
    for args in ([str(cube), "--generated", str(backwards), "--port", "0"],
                 [str(cube), "--generated", str(tmp_path / "nothing"), "--export", str(tmp_path / "site")]):
        assert main(["browse", *args]) == 2
        err = capsys.readouterr().err
        assert "--generated" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "site").exists()


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
        out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err
    assert "stopped" in err and "Uvicorn" not in err and "INFO" not in err  # uvicorn's records: in the log file
    assert "uvicorn.error: Started server process" in (tmp_path / "logs" / "eo-dataset.log").read_text()


def test_cli_warns_loudly_off_loopback(cube_dir: Path, tmp_path: Path) -> None:
    import signal

    p, url, lines = _serve([str(cube_dir / "demo.zarr"), "--port", "0", "--host", "0.0.0.0"], tmp_path)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=90)  # a loaded 2-core machine can take long to start a process
    assert p.returncode == 0 and "stopped" in err
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
def test_a_cube_served_over_http(demo_cube: Path, ds: xr.Dataset, client: TestClient) -> None:
    pytest.importorskip("aiohttp")
    with serve_folder(demo_cube.parent) as base:
        url = f"{base}/{demo_cube.name}"
        remote = TestClient(make_app(CubeBrowser(url)))
        assert remote.get("/api/query.json", params={"has": "s1rtc"}).json()["matched"] == int(
            ds.s1rtc_available.sum())
        sid = ids(ds)[int(np.flatnonzero(~ds.s1rtc_available.values)[0])]
        page = remote.get(f"/api/sample/{sid}.json").json()
        assert page == client.get(f"/api/sample/{sid}.json").json()  # reasons from the manifest too
        assert remote.get(page["modalities"][0]["image"]).content == client.get(page["modalities"][0]["image"]).content
