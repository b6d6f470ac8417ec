"""`eo-dataset browse` in a real browser: Debian's headless Chromium driven by Playwright, on the live server and on
the static export opened from file://. The overview shows every footprint; filters change the counts to those
computed with xarray; clicking a sample opens its page, whose pictures have the modality's pixel size and are not
blank, for exactly the modalities the sample has; generated modalities (``--generated``) appear beside the truth;
no console errors. Screenshots go to each test's tmp dir.

Needs /usr/bin/chromium (``apt-get install -y --no-install-recommends chromium``; CI runs ``.ci/chromium.sh``) and
the ``playwright`` package; never ``playwright install`` (it downloads a browser build).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}: apt-get install -y --no-install-recommends "
                "chromium (CI: .ci/chromium.sh)", allow_module_level=True)
pytest.importorskip("fastapi")
pytest.importorskip("matplotlib")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install "
                               "'eo-dataset[test]')")

from PIL import Image  # noqa: E402

from eo_dataset.cube.manifest import block_reports  # noqa: E402
from eo_dataset.view.browse.app import Server, bind, make_app  # noqa: E402
from eo_dataset.view.browse.browser import CubeBrowser  # noqa: E402
from eo_dataset.view.browse.export import export_site  # noqa: E402

from .test_browse import GEN_CROP, GEN_MODEL, expected, generated_store, ids  # noqa: E402

VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture(scope="module")
def ds(demo_cube: Path) -> xr.Dataset:
    return xr.open_zarr(demo_cube).load()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def cube_browser(demo_cube: Path) -> CubeBrowser:
    return CubeBrowser(demo_cube)


@pytest.fixture(scope="module")
def live(cube_browser: CubeBrowser) -> Iterator[str]:
    """The app served by uvicorn on a free port of 127.0.0.1, in a thread."""
    with Server(make_app(cube_browser), bind("127.0.0.1", 0)).running() as url:
        yield url


@pytest.fixture(scope="module")
def exported(cube_browser: CubeBrowser, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The static export, as a file:// URL."""
    out = tmp_path_factory.mktemp("export") / "site"
    export_site(cube_browser, out)
    return out.as_uri() + "/"


@pytest.fixture(params=["live", "static"])
def site(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("live" if request.param == "live" else "exported")


@pytest.fixture
def page(chromium, tmp_path: Path) -> Iterator[object]:
    """A fresh page; after the test, no console error and no uncaught exception may have happened."""
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error"
            else None)
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    yield page
    context.close()
    assert not problems, "\n".join(problems)


def ready(page) -> str:
    page.wait_for_selector("body[data-ready]")
    return page.get_attribute("body", "data-ready")


def after(page, action) -> None:
    """Do ``action`` (a filter change) and wait until the overview has redrawn with the answer."""
    before = ready(page)
    action()
    page.wait_for_selector(f'body:not([data-ready="{before}"])')


def check_overview(page, ds: xr.Dataset, keep: np.ndarray) -> None:
    """The counts, the co-availability, the footprints and the list show exactly the samples ``keep``."""
    n = int(keep.sum())
    assert page.get_attribute("#matched", "data-matched") == str(n)
    assert page.locator("#map path.footprint").count() == n
    shown = sorted(page.locator("#map path.footprint").evaluate_all("els => els.map(e => e.dataset.id)"))
    assert shown == sorted(i for i, k in zip(ids(ds), keep, strict=True) if k)
    for m in ds.attrs["modalities"]:
        assert page.get_attribute(f"#count-{m}", "data-count") == str(int(ds[f"{m}_available"].values[keep].sum()))
    both = ds.s1rtc_available.values & ds.lulc_available.values & keep
    assert page.get_attribute("#co-s1rtc-lulc", "data-count") == str(int(both.sum()))
    assert page.locator("#sample-rows tr").count() == min(n, 50)


def test_overview_shows_every_footprint(site: str, page, ds: xr.Dataset, tmp_path: Path) -> None:
    page.goto(site + "index.html")
    ready(page)
    check_overview(page, ds, np.ones(32, dtype=bool))
    assert page.locator("#map .graticule line").count() >= 4
    assert "32 footprints" in page.inner_text("#map-note")
    page.screenshot(path=tmp_path / "overview.png", full_page=True)
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_filters_change_the_counts(site: str, page, ds: xr.Dataset, tmp_path: Path) -> None:
    page.goto(site + "index.html")
    ready(page)
    after(page, lambda: page.select_option("#f-has-s1rtc", "present"))
    check_overview(page, ds, expected(ds, has=["s1rtc"]))
    after(page, lambda: page.select_option("#f-has-canopy", "absent"))
    keep = expected(ds, has=["s1rtc"], lacks=["canopy"])
    assert 0 < keep.sum() < expected(ds, has=["s1rtc"]).sum()
    check_overview(page, ds, keep)
    page.screenshot(path=tmp_path / "filtered.png", full_page=True)
    after(page, lambda: page.click("button[type=reset]"))
    check_overview(page, ds, expected(ds))
    after(page, lambda: page.fill("#f-text", "Water"))
    check_overview(page, ds, expected(ds, text="water"))
    after(page, lambda: page.fill("#f-text", ""))
    after(page, lambda: page.select_option("#f-valid", "landsat"))
    after(page, lambda: page.fill("#f-valid-min", "0.6"))
    check_overview(page, ds, expected(ds, valid="landsat", vmin=0.6))
    after(page, lambda: page.fill("#f-valid-min", ""))
    after(page, lambda: page.fill("#f-date-from", "2023-07-05"))
    check_overview(page, ds, expected(ds, date_from="2023-07-05"))
    after(page, lambda: page.fill("#f-date-from", "2023-07-06"))
    check_overview(page, ds, expected(ds, date_from="2023-07-06"))  # none
    after(page, lambda: page.fill("#f-date-from", ""))
    after(page, lambda: page.fill("#f-id", "90r_1"))
    check_overview(page, ds, expected(ds, sid="90R_1"))
    after(page, lambda: page.fill("#f-id", ""))
    after(page, lambda: page.select_option("#colour", "valid:landsat"))
    fills = dict(page.locator("#map path.footprint").evaluate_all(
        "els => els.map(e => [e.dataset.id, e.getAttribute('fill')])"))
    fraction = dict(zip(ids(ds), ds.landsat_valid.mean(["y_30", "x_30"]).values.round(6), strict=True))
    by_fraction: dict[float, set[str]] = {}
    for sid, fill in fills.items():
        by_fraction.setdefault(fraction[sid], set()).add(fill)
    assert len(by_fraction) > 2 and all(len(f) == 1 for f in by_fraction.values())  # a colour per valid fraction
    assert len({f for fs in by_fraction.values() for f in fs}) == len(by_fraction)


def _sample_with_gaps(ds: xr.Dataset) -> str:
    full = np.all([ds[f"{m}_available"].values for m in ds.attrs["modalities"]], axis=0)
    return ids(ds)[int(np.flatnonzero(~full & ds.s2l2a_available.values)[0])]


def test_a_sample_page_shows_what_the_sample_has(site: str, page, ds: xr.Dataset, demo_cube: Path,
                                                 tmp_path: Path) -> None:
    sid = _sample_with_gaps(ds)
    i = ids(ds).index(sid)
    page.goto(site + "index.html")
    ready(page)
    after(page, lambda: page.fill("#f-id", sid))
    page.click(f"a.sample-link:text-is('{sid}')")
    page.wait_for_url(f"**/sample.html?id={sid}")
    ready(page)
    assert page.inner_text("h1") == sid
    assert page.inner_text("#caption") == str(ds.caption.values[i])
    reasons = next(e["missing"][sid] for e in block_reports(demo_cube).values() if sid in e["missing"])
    for m in ds.attrs["modalities"]:
        card = page.locator(f"figure[data-modality='{m}']")
        has = bool(ds[f"{m}_available"].values[i])
        assert card.get_attribute("data-available") == str(has).lower(), m
        if not has:
            assert card.locator("img").count() == 0, m
            assert card.locator(".reason").inner_text() == reasons[m]
            continue
        img = card.locator("img.picture")
        img.wait_for()
        h, w = ds[m].shape[-2:]
        natural = img.evaluate("e => e.complete ? [e.naturalWidth, e.naturalHeight] : null")
        assert natural == [w, h], m  # one PNG pixel per cube pixel
        shot = np.asarray(Image.open(io.BytesIO(img.screenshot())).convert("RGB"), dtype=float)
        assert shot.reshape(-1, 3).std(axis=0).max() > 1, f"{m}: a blank picture"
        assert not card.locator("img.overlay").is_visible()
    page.screenshot(path=tmp_path / "sample.png", full_page=True)
    page.check("#show-invalid")
    for m in ds.attrs["modalities"]:
        if ds[f"{m}_available"].values[i]:
            assert page.locator(f"figure[data-modality='{m}'] img.overlay").is_visible(), m
    page.screenshot(path=tmp_path / "sample-invalid.png", full_page=True)


def test_a_footprint_opens_its_sample(site: str, page, ds: xr.Dataset) -> None:
    sid = ids(ds)[5]
    page.goto(site + "index.html")
    ready(page)
    page.locator(f"#map path.footprint[data-id='{sid}']").dispatch_event("click")
    page.wait_for_url(f"**/sample.html?id={sid}")
    ready(page)
    assert page.inner_text("h1") == sid
    page.click("#next")
    page.wait_for_url(f"**/sample.html?id={ids(ds)[6]}")
    ready(page)
    assert page.inner_text("h1") == ids(ds)[6]


def test_a_large_cube_is_drawn_per_cell(live: str, cube_browser: CubeBrowser, page, ds: xr.Dataset,
                                        tmp_path: Path) -> None:
    """Above --max-points the server sends one shape per Major TOM cell, with its sample count."""
    old, cube_browser.index.max_points = cube_browser.index.max_points, 5
    try:
        page.goto(live + "index.html")
        ready(page)
        cells = sorted({sid.rsplit("_", 2)[0] for sid in ids(ds)})
        assert page.locator("#map path.footprint").count() == 0
        shapes = page.locator("#map path.aggregate")
        assert sorted(shapes.evaluate_all("els => els.map(e => e.dataset.id)")) == cells
        assert "32 samples in 2 Major TOM cells" in page.inner_text("#map-note")
        assert page.get_attribute("#matched", "data-matched") == "32"
        page.screenshot(path=tmp_path / "cells.png")
    finally:
        cube_browser.index.max_points = old


# -- generated modalities (--generated) -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen_browser(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> CubeBrowser:
    store = generated_store(tmp_path_factory.mktemp("generated") / "gen.zarr", demo_cube)
    return CubeBrowser(demo_cube, generated=store)


@pytest.fixture(scope="module")
def gen_live(gen_browser: CubeBrowser) -> Iterator[str]:
    with Server(make_app(gen_browser), bind("127.0.0.1", 0)).running() as url:
        yield url


@pytest.fixture(scope="module")
def gen_exported(gen_browser: CubeBrowser, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("gen-export") / "site"
    export_site(gen_browser, out)
    return out.as_uri() + "/"


@pytest.fixture(params=["live", "static"])
def gen_site(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("gen_live" if request.param == "live" else "gen_exported")


def _pixels(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"), dtype=float)


def test_generated_modalities_appear_beside_the_truth(gen_site: str, page, ds: xr.Dataset, tmp_path: Path) -> None:
    i = int(np.flatnonzero(ds.s2l2a_available.values & ds.lulc_available.values & ds.dem_available.values)[0])
    sid = ids(ds)[i]
    page.goto(gen_site + f"sample.html?id={sid}")
    ready(page)
    conditioning = {"lulc": "s2l2a", "dem": "s2l2a, lulc"}
    for m in ("lulc", "dem"):
        pair = page.locator(f".pair[data-pair='{m}']")
        truth, gen = pair.locator(f"figure[data-modality='{m}']"), pair.locator(f"figure[data-generated='{m}']")
        assert gen.get_attribute("data-available") == "true"
        img = gen.locator("img.picture")
        img.wait_for()
        h, w = ds[m].shape[-2:]
        assert img.evaluate("e => e.decode().then(() => [e.naturalWidth, e.naturalHeight])") == [w, h], m
        truth.locator("img.picture").evaluate("e => e.decode()")  # loaded, before the screenshots below
        t, g = truth.bounding_box(), gen.bounding_box()
        assert abs(t["y"] - g["y"]) < 1 and 0 <= g["x"] - (t["x"] + t["width"]) < 20, (m, t, g)  # right of the truth
        label = gen.locator(".generated-label").inner_text()
        assert f"generated from {conditioning[m]} by {GEN_MODEL}" in label and "schedule: steps 8" in label
        mine, real = _pixels(img), _pixels(truth.locator("img.picture"))
        assert mine.reshape(-1, 3).std(axis=0).max() > 1, f"{m}: a blank picture"
        assert np.abs(mine - real).mean() > 1, f"{m}: the generated picture looks like the truth"
    crop = page.locator("figure[data-generated='lulc'] .crop")  # the generated crop, outlined
    frame = page.locator("figure[data-generated='lulc'] img.picture").bounding_box()
    box = crop.bounding_box()
    side = frame["width"] * GEN_CROP / 264
    assert crop.is_visible() and abs(box["width"] - side) < 1.5 and abs(box["height"] - side) < 1.5
    assert abs(box["x"] - frame["x"] - (frame["width"] - side) / 2) < 1.5
    assert page.locator("figure[data-generated='dem'] .crop").count() == 0  # generated over the whole sample
    assert page.locator("figure[data-modality='s1rtc']").count() == 1  # nothing generated: no pair
    assert page.locator(".pair[data-pair='s1rtc']").count() == 0
    assert page.inner_text("#gen-caption") == f"generated caption of sample {i}"
    assert page.inner_text("#caption") == str(ds.caption.values[i])
    real, made = page.locator("#caption").bounding_box(), page.locator("#gen-caption").bounding_box()
    assert abs(real["y"] - made["y"]) < 1 and made["x"] > real["x"] + real["width"]  # beside the caption
    page.screenshot(path=tmp_path / "generated.png", full_page=True)
