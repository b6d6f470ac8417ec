"""Screenshots of ``eo-dataset browse`` for docs/browse.md, and how long its pages take.

Usage, from the repository root, with the ``test`` extra (Playwright) and Debian's chromium (``.ci/chromium.sh``)::

    python docs/screenshots.py demo.zarr --out docs/img     # a cube made by `eo-dataset demo`

Serves the cube on a free port of 127.0.0.1 (the app of ``eo-dataset browse``, uvicorn in a thread), opens it in
headless Chromium and writes ``browse-overview.png`` (the overview: availability, filters, map coloured by the
valid fraction of Landsat) and ``browse-sample.png`` (a sample with missing modalities and invalid pixels marked).
It prints the time to render a sample page on the server (every modality drawn, nothing cached), to answer the
overview's query, and to show each page in the browser until its data is drawn. ``python docs/generate.py browse``
runs it on a fresh demo cube and records the date under each picture.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from eo_dataset.view.browse.app import Server, bind, make_app
from eo_dataset.view.browse.browser import CubeBrowser

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 1000}
OVERVIEW = "browse-overview.png"
SAMPLE = "browse-sample.png"


def pick_sample(browser: CubeBrowser) -> str:
    """A sample with the anchor modality, at least one modality missing and one with invalid pixels."""
    ix = browser.index
    anchor = browser.meta.anchor or ix.modalities[0]
    gaps = ~np.all([ix.available[m] for m in ix.modalities], axis=0)
    invalid = np.any([(ix.valid_fraction(m) < 1) & ix.available[m] for m in ix.modalities], axis=0)
    for want in (gaps & invalid & ix.available[anchor], gaps & ix.available[anchor], ix.available[anchor]):
        if want.any():
            return str(ix.ids[int(np.flatnonzero(want)[0])])
    return str(ix.ids[0])


def timings(cube: str | Path, samples: int = 8) -> dict[str, float]:
    """Server-side seconds: open the cube; one sample page with every picture drawn (median, nothing cached);
    the overview's query."""
    t0 = time.perf_counter()
    browser = CubeBrowser(cube)
    opened = time.perf_counter() - t0
    per = []
    for sid in browser.index.ids[:samples]:
        t0 = time.perf_counter()
        browser.sample(str(sid))
        per.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    browser.query({})
    return {"open_s": opened, "sample_s": statistics.median(per), "overview_query_s": time.perf_counter() - t0}


def shoot(cube: str | Path, out: Path, chromium: str = CHROMIUM) -> dict[str, float]:
    """Write the two screenshots to ``out``; returns the timings (server and browser)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    result = timings(cube)
    browser = CubeBrowser(cube)
    sid = pick_sample(browser)
    with Server(make_app(browser), bind("127.0.0.1", 0)).running() as url, sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = chrome.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready]")
        result["overview_page_s"] = time.perf_counter() - t0
        before = page.get_attribute("body", "data-ready")
        page.select_option("#colour", "valid:landsat" if "landsat" in browser.meta.modalities else "date")
        page.wait_for_selector(f'body:not([data-ready="{before}"])')
        page.screenshot(path=out / OVERVIEW)
        t0 = time.perf_counter()
        page.goto(f"{url}sample.html?id={sid}")
        page.wait_for_selector("body[data-ready]")
        page.evaluate("() => Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
        result["sample_page_s"] = time.perf_counter() - t0
        page.check("#show-invalid")
        page.screenshot(path=out / SAMPLE, full_page=True)
        result["chromium"] = chrome.version
        chrome.close()
    if errors:
        raise RuntimeError(f"console errors: {errors}")
    result["sample"] = sid
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cube", help="a cube made by `eo-dataset demo`")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "img", help="folder of the "
                        "pictures (default: docs/img)")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"the browser (default {CHROMIUM})")
    args = parser.parse_args(argv)
    r = shoot(args.cube, args.out, args.chromium)
    print(f"  {args.out / OVERVIEW}, {args.out / SAMPLE} (sample {r['sample']}, Chromium {r['chromium']})")
    print(f"  server: cube opened in {r['open_s']:.2f} s; a sample page rendered in {r['sample_s']:.2f} s (median, "
          f"every modality drawn, nothing cached); the overview's query in {r['overview_query_s'] * 1000:.0f} ms")
    print(f"  browser: overview drawn in {r['overview_page_s']:.2f} s, a sample page with its pictures in "
          f"{r['sample_page_s']:.2f} s")
    return r


if __name__ == "__main__":
    main()
