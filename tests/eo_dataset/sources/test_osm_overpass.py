"""The ``overpass`` source through osmnx's real client, against a local Overpass API serving real OSM files.

The same file sits behind both paths: the local server answers osmnx's queries from it, and an ``osm_file`` source
reads it directly. Every test runs under a network guard that refuses anything but 127.0.0.1, so the default
(public) endpoint can never be contacted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
import xarray as xr

from eo_dataset import Grid, build, parse_recipe
from eo_dataset.engine.align import align_block
from eo_dataset.errors import RecipeError, SourceError
from eo_dataset.sources import open_source
from eo_dataset.sources.overpass import clear_cache, load_overpass
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import OVERPASS_ENDPOINT, Recipe, SourceSpec
from tests.conftest import realdata
from tests.overpass_server import OverpassServer
from tests.servers import free_port, loopback_connections_only

MUNICH = "planet_10.068,48.135_10.071,48.137.osm"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Only loopback is reachable; answers kept from an earlier test are forgotten."""
    clear_cache()
    yield loopback_connections_only(monkeypatch)
    clear_cache()


@pytest.fixture(scope="module")
def liechtenstein() -> Iterator[OverpassServer]:
    with OverpassServer(realdata("osm", "liechtenstein.osm.pbf")) as api:
        yield api


def _recipe(tmp_path, sources: dict[str, dict], shard_samples: int = 16) -> Recipe:
    """A recipe with one OSM modality per source (named like it) and an anchor with no scenes (never available)."""
    empty = tmp_path / "no-scenes.json"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    osm = {name: {"collection": "osm", "source": name, "resolution_m": 10, "rule": {"type": "static"}}
           for name in sources}
    return parse_recipe({
        "name": "overpass-test", "time": {"anchor": "s2", "start": "2022-06-01", "end": "2022-08-31"},
        "sources": {"scenes": {"type": "static_catalog", "href": str(empty)}, **sources},
        "modalities": {"s2": {"collection": "sentinel-2-l2a", "source": "scenes", "resolution_m": 10,
                              "rule": {"type": "least_cloudy"}}, **osm},
        "build": {"shard_samples": shard_samples}})


def _overpass(endpoint: str, tmp_path, **settings) -> dict:
    return {"type": "overpass", "href": endpoint, "cache_dir": str(tmp_path / "overpass-cache"), **settings}


def _two_samples(recipe: Recipe, lon: float, lat: float) -> list[Sample]:
    """The sample at lon/lat and its east (or west) neighbour in the same cell: one compact block."""
    grid = Grid(recipe.grid.spec())
    s = grid.sample_at(lon, lat)
    cell, a, b = s.id.rsplit("_", 2)
    return [s, grid.sample(f"{cell}_{int(a) + 1 if int(a) < 3 else int(a) - 1}_{b}")]


def _reasons(cube) -> dict[str, dict[str, str]]:
    """sample -> modality -> why it is missing, from the build manifest."""
    out: dict[str, dict[str, str]] = {}
    for p in sorted((cube / "_build" / "blocks").glob("*.json")):
        out.update(json.loads(p.read_text())["missing"])
    return out


def test_a_build_over_overpass_matches_the_pbf_it_serves(tmp_path, liechtenstein) -> None:
    """Vaduz from Liechtenstein's PBF, once through osmnx + the local Overpass, once read directly by pyosmium."""
    recipe = _recipe(tmp_path, {"osm_file": {"type": "osm_file", "href": str(realdata("osm", "liechtenstein.osm.pbf"))},
                                "osm_live": _overpass(liechtenstein.endpoint, tmp_path)})
    samples = _two_samples(recipe, 9.52, 47.14)
    liechtenstein.reset()
    build(recipe, samples, tmp_path / "cube.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "cube.zarr")
    assert ds.osm_live_available.values.all() and ds.osm_file_available.values.all()
    assert ds.osm_live_valid.values.all()  # inside the box asked for, every pixel is known
    assert all(i.startswith("overpass-") for i in ds.osm_live_item.values)
    # one query for the block: the second sample reused the first one's answer
    assert [r for r in liechtenstein.requests if r[1].endswith("/interpreter")] == [("POST", "/api/interpreter")]
    live, ref = ds.osm_live.values, ds.osm_file.values
    for b, band in enumerate(ds.osm_live_band.values):
        n_live, n_ref = int((live[:, b] == 1).sum()), int((ref[:, b] == 1).sum())
        if band == "buildings":
            assert n_ref > 1000  # a built-up place
        # Same file, two assemblers: osmnx builds geometries from the Overpass JSON by its own rules (which closed
        # ways are areas), pyosmium by libosmium's; they may disagree on a few features (in 2022's Vaduz: one
        # path area, 36 pixels), never on many. 2% (and 50 px for near-empty layers) leaves room for no more.
        assert n_live == pytest.approx(n_ref, rel=0.02, abs=50), band
    assert (live == ref).mean() > 0.999


@pytest.mark.parametrize("name", [MUNICH, "West-Oakland.osm.bz2"])
def test_xml_extracts_give_the_same_pixels_either_way(tmp_path, name: str) -> None:
    """Both paths end in osmnx's JSON -> features code: inside the file's bounds the pixels are identical."""
    path = realdata("osm", name)
    with OverpassServer(path) as api:
        recipe = _recipe(tmp_path, {"osm_file": {"type": "osm_file", "href": str(path)},
                                    "osm_live": _overpass(api.endpoint, tmp_path, cache=False)})
        item = open_source(recipe.sources["osm_file"]).search("osm", (-180, -90, 180, 90), None, None)[0]
        c = Grid().sample_at(*((item.bbox[0] + item.bbox[2]) / 2, (item.bbox[1] + item.bbox[3]) / 2))
        block = align_block(recipe, [c])
    a = block.arrays
    assert a["osm_live_available"][0] and a["osm_file_available"][0]
    inside = a["osm_file_valid"][0]  # the file's <bounds>: a few hundred metres
    assert 0 < inside.mean() < 0.1 and a["osm_live_valid"][0].all()
    live, ref = a["osm_live"][0], a["osm_file"][0]
    assert (ref[0][inside] == 1).sum() > 10  # buildings
    np.testing.assert_array_equal(live[:, inside], ref[:, inside])
    # outside the bounds the file path says "unknown", the Overpass path "nothing mapped" (this server's world is
    # the file) except where features cross the bounds
    assert (ref[:, ~inside] == 255).all() and set(np.unique(live)) <= {0, 1}


def test_an_unreachable_endpoint_loses_only_that_modality(tmp_path) -> None:
    path = realdata("osm", MUNICH)
    endpoint = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    recipe = _recipe(tmp_path, {"osm_file": {"type": "osm_file", "href": str(path)},
                                "osm_live": _overpass(endpoint, tmp_path, retries=1, backoff_s=0)})
    samples = _two_samples(recipe, 10.0695, 48.136)
    report = build(recipe, samples, tmp_path / "cube.zarr", scheduler="sync")  # the build itself goes through
    ds = xr.open_zarr(tmp_path / "cube.zarr")
    assert not ds.osm_live_available.values.any()
    assert (ds.osm_live.values == 255).all() and not ds.osm_live_valid.values.any()
    reasons = _reasons(tmp_path / "cube.zarr")
    for s in samples:
        why = reasons[s.id]["osm_live"]
        assert why.startswith("SourceError: Overpass API at " + endpoint), why
        assert "unreachable" in why and "check the endpoint" in why and "(after 2 attempt(s))" in why
    # the other OSM modality is untouched where its (tiny) extract lies
    assert ds.osm_file_available.values[0] and "osm_file" not in reasons[samples[0].id]
    assert report.missing >= len(samples)


def test_a_query_the_server_stops_is_not_an_empty_map(tmp_path, liechtenstein) -> None:
    """Overpass answers a query that ran out of time with HTTP 200, no elements and a remark: that is an error."""
    recipe = _recipe(tmp_path, {"osm_live": _overpass(liechtenstein.endpoint, tmp_path, cache=False)})
    liechtenstein.reset()
    liechtenstein.set_failure(remark='runtime error: Query timed out in "query" at line 1 after 61 seconds.')
    try:
        block = align_block(recipe, _two_samples(recipe, 9.52, 47.14))
        sent = len(liechtenstein.queries)
    finally:
        liechtenstein.reset()
    assert not block.arrays["osm_live_available"].any()
    for why in (m["osm_live"] for m in block.reasons.values()):
        assert "stopped the query" in why and "Query timed out" in why and "raise the source's timeout_s" in why
    assert sent == 1  # the block's query failed once; the other sample (and the read retries) got that failure


def test_busy_answers_are_retried_then_reported(tmp_path, liechtenstein) -> None:
    spec = SourceSpec(**_overpass(liechtenstein.endpoint, tmp_path, cache=False, retries=2, backoff_s=0))
    item = open_source(spec).search("osm", (9.52, 47.14, 9.53, 47.15), None, None)[0]
    liechtenstein.reset()
    liechtenstein.set_failure(status=429)
    try:
        with pytest.raises(SourceError, match=r"answered HTTP 429 .*\(after 3 attempt\(s\)\)"):
            load_overpass(item, ("building",))
        assert len(liechtenstein.queries) == 3  # osmnx's own 429 handling (sleep 55 s, retry forever) never ran
        with pytest.raises(SourceError, match="HTTP 429"):  # kept for the block: not asked again
            load_overpass(item, ("building",))
        assert len(liechtenstein.queries) == 3
    finally:
        liechtenstein.reset()
    clear_cache()
    extract = load_overpass(item, ("building",))
    assert len(extract.geometries) > 100 and extract.coverage.bounds == pytest.approx((9.52, 47.14, 9.53, 47.15))


def test_a_block_too_large_for_overpass_is_refused_before_asking(tmp_path, liechtenstein) -> None:
    recipe = _recipe(tmp_path, {"osm_live": _overpass(liechtenstein.endpoint, tmp_path, max_area_km2=5)})
    liechtenstein.reset()
    block = align_block(recipe, _two_samples(recipe, 9.52, 47.14))  # ~2 x 7 km2
    for why in (m["osm_live"] for m in block.reasons.values()):
        assert why.startswith("search failed: the block's box") and "more than the overpass source's " \
            "max_area_km2 (5)" in why and "osm_file extract" in why
    assert liechtenstein.requests == []


def test_answers_are_cached_on_disk_for_a_rerun(tmp_path, liechtenstein) -> None:
    spec = SourceSpec(**_overpass(liechtenstein.endpoint, tmp_path))
    item = open_source(spec).search("osm", (9.52, 47.14, 9.53, 47.15), None, None)[0]
    liechtenstein.reset()
    first = load_overpass(item, ("building", "highway"))
    clear_cache()  # a new process: only the disk cache is left
    again = load_overpass(item, ("building", "highway"))
    assert len(liechtenstein.queries) == 1 and len(first.geometries) == len(again.geometries) > 100
    assert any((tmp_path / "overpass-cache").glob("*.json"))


@pytest.mark.parametrize("rate_limit", [True, False])  # our /status request first, or osmnx's own lookup first
def test_the_public_endpoint_is_never_contacted(_offline: list[str], rate_limit: bool) -> None:
    """The default endpoint is data only: asking it under the guard fails on the guard, no packet leaves."""
    spec = SourceSpec(type="overpass", cache=False, retries=0, rate_limit=rate_limit)
    assert spec.href == OVERPASS_ENDPOINT
    item = open_source(spec).search("osm", (9.52, 47.14, 9.53, 47.15), None, None)[0]
    with pytest.raises(SourceError, match="test network guard") as err:
        load_overpass(item, ("building",))
    assert f"Overpass API at {OVERPASS_ENDPOINT}" in str(err.value)
    assert _offline == ["overpass-api.de"]


@pytest.mark.parametrize(("href", "found"), [
    ("overpass-api.de/api", "not an http(s) URL with a host"),
    ("ftp://overpass-api.de/api", "not an http(s) URL with a host"),
    ("https://overpass-api.de/api/interpreter", "the URL of one of the API's endpoints"),
    ("https://overpass-api.de/api?data=node;out;", "a URL with a query string"),
])
def test_a_bad_endpoint_is_a_recipe_error(tmp_path, href: str, found: str) -> None:
    with pytest.raises(RecipeError, match=rf"sources\.osm_live\.href: Value error, {re.escape(found)}.*"
                                          rf"expected the API's base URL.*\(found {re.escape(repr(href))}\)"):
        _recipe(tmp_path, {"osm_live": {"type": "overpass", "href": href}})


def test_overpass_settings_fit_the_type(tmp_path) -> None:
    spec = _recipe(tmp_path, {"osm_live": {"type": "overpass", "timeout_s": 25, "max_area_km2": 50,
                                           "rate_limit": False}}).sources["osm_live"]
    assert (spec.href, spec.timeout_s, spec.max_area_km2, spec.rate_limit) == (OVERPASS_ENDPOINT, 25, 50, False)
    with pytest.raises(RecipeError, match="page_size only applies to type 'stac_api' .found type 'overpass'"):
        _recipe(tmp_path, {"osm_live": {"type": "overpass", "page_size": 10}})
    with pytest.raises(RecipeError, match="max_area_km2 only applies to type 'overpass' .found type 'osm_file'"):
        _recipe(tmp_path, {"osm_live": {"type": "osm_file", "href": "x.osm", "max_area_km2": 10}})
    with pytest.raises(RecipeError, match=r"sources\.osm_live\.max_area_km2: Input should be greater than 0"):
        _recipe(tmp_path, {"osm_live": {"type": "overpass", "max_area_km2": 0}})
