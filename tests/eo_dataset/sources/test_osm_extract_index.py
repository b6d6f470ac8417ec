"""The ``osm_extract_index`` source: Geofabrik's index-v1.json schema, the real Liechtenstein PBF, loopback HTTP.

The index is written in the exact schema Geofabrik publishes at https://download.geofabrik.de/index-v1.json: a
FeatureCollection whose features carry ``id``, ``parent``, ``iso3166-1:alpha2``, ``name`` and ``urls`` (``pbf``,
``bz2``, ``shp``, ``pbf-internal``, ``history``, ``taginfo``, ``updates``), as in Geofabrik's own entry for
Afghanistan quoted by several clients' tests. The URLs point at a loopback server instead of download.geofabrik.de,
and Liechtenstein's polygon is the PBF's header box (Geofabrik's real polygon is the country's buffered outline).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr
from shapely.geometry import box, mapping

from eo_dataset import build
from eo_dataset.errors import SourceError
from eo_dataset.sources import OsmExtractIndexSource, OsmExtractSource, open_source
from eo_dataset.sources.osm import extract_coverage
from eo_dataset.spec.recipe import SourceSpec
from tests.conftest import realdata
from tests.eo_dataset.sources.test_osm_overpass import _recipe, _two_samples
from tests.servers import FileServer, loopback_connections_only

EUROPE = box(-25.0, 34.0, 45.0, 72.0)  # a stand-in for Geofabrik's Europe polygon (a parent region)
SWITZERLAND = box(5.9, 45.8, 9.49, 47.9)  # a stand-in for Switzerland's (its PBF is absent: never read here)


def _feature(rid: str, parent: str | None, name: str, geometry, base: str, path: str, iso: list[str] | None = None):
    """One region as Geofabrik's index-v1.json lists it (``path``: e.g. ``europe/liechtenstein``)."""
    props: dict = {"id": rid}
    if parent:
        props["parent"] = parent
    if iso:
        props["iso3166-1:alpha2"] = iso
    props["name"] = name
    props["urls"] = {
        "pbf": f"{base}/{path}-latest.osm.pbf",
        "bz2": f"{base}/{path}-latest.osm.bz2",
        "shp": f"{base}/{path}-latest-free.shp.zip",
        "pbf-internal": f"{base}/internal/{path}-latest-internal.osm.pbf",
        "history": f"{base}/internal/{path}-internal.osh.pbf",
        "taginfo": f"{base}/taginfo/{path}/",
        "updates": f"{base}/{path}-updates",
    }
    return {"type": "Feature", "properties": props, "geometry": mapping(geometry)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    yield loopback_connections_only(monkeypatch)


@pytest.fixture
def mirror(tmp_path) -> Iterator[FileServer]:
    """A loopback download server holding Liechtenstein's PBF and an index over it (Europe's PBF is absent)."""
    pbf = realdata("osm", "liechtenstein.osm.pbf")
    root = tmp_path / "download"
    (root / "europe").mkdir(parents=True)
    os.symlink(pbf, root / "europe" / "liechtenstein-latest.osm.pbf")
    with FileServer(root) as server:
        features = [_feature("europe", None, "Europe", EUROPE, server.url, "europe"),
                    _feature("switzerland", "europe", "Switzerland", SWITZERLAND, server.url, "europe/switzerland",
                             ["CH"]),
                    _feature("liechtenstein", "europe", "Liechtenstein", extract_coverage(pbf), server.url,
                             "europe/liechtenstein", ["LI"])]
        (root / "index-v1.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        yield server


def _spec(mirror: FileServer, tmp_path: Path, **kw) -> SourceSpec:
    return SourceSpec(type="osm_extract_index", href=f"{mirror.url}/index-v1.json",
                      cache_dir=str(tmp_path / "extracts"), **kw)


def _pbf_requests(mirror: FileServer) -> list:
    return [r for r in mirror.log if r[1].endswith(".osm.pbf")]


def test_each_block_reads_the_smallest_extract_that_covers_it(mirror, tmp_path) -> None:
    source = open_source(_spec(mirror, tmp_path))
    assert isinstance(source, OsmExtractIndexSource) and isinstance(source, OsmExtractSource)
    vaduz = (9.50, 47.12, 9.54, 47.15)
    (item,) = source.search("osm", vaduz, None, None)
    assert item.id == "liechtenstein"  # Europe covers it too, but is larger
    assert item.assets["data"].href == f"{mirror.url}/europe/liechtenstein-latest.osm.pbf"
    across = (9.45, 47.10, 9.50, 47.12)  # across the border: two countries rather than their continent
    assert [i.id for i in source.search("osm", across, None, None)] == ["liechtenstein", "switzerland"]
    lake = (9.40, 47.60, 9.45, 47.62)  # north of Liechtenstein (47.27), inside Switzerland
    assert [i.id for i in source.search("osm", lake, None, None)] == ["switzerland"]
    wider = (9.30, 47.85, 9.60, 48.0)  # partly outside both countries: the continent covers it alone
    assert [i.id for i in source.search("osm", wider, None, None)] == ["europe"]
    assert [i.id for i in source.search("osm", (20.0, 50.0, 20.1, 50.1), None, None)] == ["europe"]
    assert source.search("osm", (10.0, 0.0, 10.1, 0.1), None, None) == []  # no extract there: no item
    assert source.extent("osm") == EUROPE.bounds
    assert _pbf_requests(mirror) == []  # searching never downloads


def test_a_build_through_the_index_equals_the_pbf_read_directly(mirror, tmp_path) -> None:
    """Vaduz twice: the extract fetched through the index (once, over loopback HTTP) and the file read directly."""
    index = {"type": "osm_extract_index", "href": f"{mirror.url}/index-v1.json",
             "cache_dir": str(tmp_path / "extracts")}
    direct = {"type": "osm_file", "href": str(realdata("osm", "liechtenstein.osm.pbf"))}
    recipe = _recipe(tmp_path, {"osm_index": index, "osm_direct": direct})
    samples = _two_samples(recipe, 9.52, 47.14)
    build(recipe, samples, tmp_path / "cube.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "cube.zarr")
    assert ds.osm_index_available.values.all() and ds.osm_index_valid.values.all()
    assert list(ds.osm_index_item.values) == ["liechtenstein", "liechtenstein"]
    buildings = list(ds.osm_index_band.values).index("buildings")
    assert (ds.osm_index.values[:, buildings] == 1).sum() > 1000  # Vaduz is built up
    np.testing.assert_array_equal(ds.osm_index.values, ds.osm_direct.values)
    assert len(_pbf_requests(mirror)) == 1  # downloaded once for the block, then read from the cache
    cached = list((tmp_path / "extracts").rglob("*liechtenstein-latest.osm.pbf"))
    assert len(cached) == 1 and cached[0].stat().st_size == realdata("osm", "liechtenstein.osm.pbf").stat().st_size
    # once on disk, the extract is dated by its replication timestamp
    (item,) = open_source(SourceSpec(**index)).search("osm", (9.50, 47.12, 9.54, 47.15), None, None)
    assert item.datetime == dt.datetime(2022, 7, 24, 20, 21, 51, tzinfo=dt.UTC)


def test_features_are_valid_only_inside_the_region_polygon(tmp_path) -> None:
    """A region smaller than its PBF's box: pixels outside the polygon are not valid (not "no buildings")."""
    pbf = realdata("osm", "liechtenstein.osm.pbf")
    (tmp_path / "europe").mkdir()
    os.symlink(pbf, tmp_path / "europe" / "liechtenstein-latest.osm.pbf")
    west_half = box(9.40, 47.0, 9.52, 47.3)
    index = {"type": "FeatureCollection", "features": [
        _feature("liechtenstein", "europe", "Liechtenstein", west_half, ".", "europe/liechtenstein", ["LI"])]}
    (tmp_path / "index-v1.json").write_text(json.dumps(index))
    source = open_source(SourceSpec(type="osm_extract_index", href=str(tmp_path / "index-v1.json")))
    (item,) = source.search("osm", (9.50, 47.12, 9.54, 47.15), None, None)  # relative urls: local files
    extract = source.osm_extract(item, ("building",))
    assert shapely.equals(extract.coverage, west_half.intersection(extract_coverage(pbf)))
    assert extract.geometries and extract.coverage.bounds[2] == pytest.approx(9.52)


def test_index_and_extract_errors_say_what_was_found(mirror, tmp_path) -> None:
    with pytest.raises(SourceError, match="not found; expected a GeoJSON FeatureCollection of regions"):
        open_source(SourceSpec(type="osm_extract_index", href=str(tmp_path / "nope.json")))
    nogeom = tmp_path / "index-v1-nogeom.json"
    nogeom.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "li", "urls": {"pbf": "x.osm.pbf"}}}]}))
    with pytest.raises(SourceError, match=r"lists no region with a geometry and urls.pbf.*not index-v1-nogeom"):
        open_source(SourceSpec(type="osm_extract_index", href=str(nogeom)))
    source = open_source(_spec(mirror, tmp_path, retries=0))
    (europe,) = source.search("osm", (20.0, 50.0, 20.1, 50.1), None, None)
    with pytest.raises(SourceError, match=r"europe-latest.osm.pbf' cannot be downloaded \(HTTPError: 404"):
        source.osm_extract(europe, ("building",))
    with pytest.raises(ValueError, match="max_area_km2 only applies to type 'overpass'"):
        SourceSpec(type="osm_extract_index", href="index-v1.json", max_area_km2=10)
