"""OpenStreetMap rasters against independent counts from the same real files."""

from __future__ import annotations

import numpy as np
import osmium
import pytest
import shapely

from eo_dataset import Grid
from eo_dataset.sources.osm import Layer, load_extract, rasterize, to_crs
from tests.conftest import realdata

KEYS = ("building", "highway", "railway", "waterway", "natural", "landuse")
LAYERS = [Layer("buildings", {"building": True}),
          Layer("roads", {"highway": ["motorway", "trunk", "primary", "secondary", "tertiary", "residential",
                                      "unclassified", "service"]}, 6.0),
          Layer("paths", {"highway": ["footway", "path", "track", "cycleway"]}, 2.0)]


class _Buildings(osmium.SimpleHandler):
    """Independent reference: building footprints from pyosmium's area handler (not the module's reader)."""

    def __init__(self) -> None:
        super().__init__()
        self.wkb = osmium.geom.WKBFactory()
        self.polygons: list = []

    def area(self, a) -> None:
        if "building" in a.tags:
            try:
                self.polygons.append(shapely.from_wkb(self.wkb.create_multipolygon(a)))
            except RuntimeError:
                pass


@pytest.fixture(scope="module")
def liechtenstein():
    return load_extract(str(realdata("osm", "liechtenstein.osm.pbf")), KEYS)


def test_building_area_matches_an_independent_count(liechtenstein) -> None:
    ref = _Buildings()
    ref.apply_file(str(realdata("osm", "liechtenstein.osm.pbf")), locations=True)
    assert len(ref.polygons) > 17_000
    tree = shapely.STRtree(ref.polygons)
    grid = Grid()
    checked = 0
    for lon, lat in ((9.52, 47.14), (9.51, 47.17), (9.55, 47.21), (9.53, 47.09)):  # Vaduz, Schaan, Eschen, Triesen
        s = grid.sample_at(lon, lat)
        raster, valid = rasterize(liechtenstein, LAYERS, s, 10)
        assert valid.all()
        cell = shapely.box(*s.bounds)
        area = sum(to_crs(ref.polygons[i], s.epsg).intersection(cell).area
                   for i in tree.query(s.footprint(), predicate="intersects"))
        burned = float((raster[0] == 1).sum()) * 100.0
        assert area > 20_000, s.id  # a built-up sample
        assert burned == pytest.approx(area, rel=0.05), s.id
        checked += 1
    assert checked == 4


def test_roads_where_the_pbf_has_them(liechtenstein) -> None:
    s = Grid().sample_at(9.52, 47.14)  # Vaduz
    raster, _ = rasterize(liechtenstein, LAYERS, s, 10)
    idx = [i for i in liechtenstein.query(s.footprint()) if LAYERS[1].matches(liechtenstein.tags[i])]
    assert len(idx) > 10
    # lines burn every pixel they touch: the pixel under each road's midpoint is set
    checked = 0
    for i in idx:
        line = to_crs(liechtenstein.geometries[i], s.epsg)
        if line.geom_type != "LineString":
            continue
        p = line.interpolate(0.5, normalized=True)
        col, row = int((p.x - s.x0) // 10), int((s.y0 - p.y) // 10)
        if 1 <= row < 263 and 1 <= col < 263:
            assert raster[1, row, col] == 1, liechtenstein.tags[i]
            checked += 1
    assert checked > 10


def test_outside_the_extract_is_not_valid(liechtenstein) -> None:
    s = Grid().sample_at(9.47, 47.10)  # straddles the extract's west edge
    raster, valid = rasterize(liechtenstein, LAYERS, s, 10)
    assert 0 < valid.mean() < 1
    assert (raster[:, ~valid] == 255).all() and set(np.unique(raster[:, valid])) <= {0, 1}
    far = Grid().sample_at(11.0, 47.1)
    raster, valid = rasterize(liechtenstein, LAYERS, far, 10)
    assert not valid.any()


@pytest.mark.parametrize("name", ["planet_10.068,48.135_10.071,48.137.osm", "West-Oakland.osm.bz2"])
def test_xml_extracts(name: str) -> None:
    ext = load_extract(str(realdata("osm", name)), KEYS)
    assert len(ext.geometries) > 10
    c = ext.coverage.centroid
    s = Grid().sample_at(c.x, c.y)
    raster, valid = rasterize(ext, LAYERS, s, 10)
    assert valid.any() and not valid.all()  # the tiny extracts cover part of a sample
    assert raster[0][valid].any() or raster[1][valid].any()


def test_the_engine_reads_osm_through_the_source_s_hook(tmp_path) -> None:
    """read_modality asks the items' source for their features; it knows no source type itself."""
    import json

    from eo_dataset import parse_recipe
    from eo_dataset.engine.read import dataset_cache, read_modality
    from eo_dataset.engine.select import Choice
    from eo_dataset.errors import SourceError
    from eo_dataset.sources import OsmExtractSource, open_source

    path = realdata("osm", "planet_10.068,48.135_10.071,48.137.osm")
    empty = tmp_path / "no-scenes.json"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    recipe = parse_recipe({
        "name": "osm-hook", "time": {"anchor": "s2", "start": "2022-06-01", "end": "2022-08-31"},
        "sources": {"scenes": {"type": "static_catalog", "href": str(empty)},
                    "osm": {"type": "osm_file", "href": str(path)}},
        "modalities": {"s2": {"collection": "sentinel-2-l2a", "source": "scenes", "resolution_m": 10,
                              "rule": {"type": "least_cloudy"}},
                       "osm": {"collection": "osm", "source": "osm", "resolution_m": 10, "rule": {"type": "static"}}}})
    modality = recipe.modalities["osm"]
    source = open_source(recipe.sources["osm"])
    assert isinstance(source, OsmExtractSource)
    (item,) = source.search("osm", (-180, -90, 180, 90), None, None)
    w, s, e, n = item.bbox
    sample = Grid().sample_at((w + e) / 2, (s + n) / 2)
    keys = tuple(sorted({k for b in modality.band_specs for k in b.osm.tags}))
    asked = []

    class Spy:  # any source with the hook will do
        def search(self, *args, **kwargs) -> list:
            return []

        def osm_extract(self, item, keys):
            asked.append((item.id, keys))
            return source.osm_extract(item, keys)

    choice = Choice((item,), item.datetime)
    with dataset_cache() as cache:
        direct = read_modality(modality, choice, sample, cache, None, source)
        spied = read_modality(modality, choice, sample, cache, None, Spy())
        with pytest.raises(SourceError, match=r"its source \(StaticCatalogSource\) gives no OpenStreetMap features"):
            read_modality(modality, choice, sample, cache, None, open_source(recipe.sources["scenes"]))
    assert asked == [(item.id, keys)]
    assert direct.has_data and 0 < direct.valid.mean() < 1  # the extract's bounds cover part of the sample
    np.testing.assert_array_equal(spied.data, direct.data)
    np.testing.assert_array_equal(spied.valid, direct.valid)
    assert source.osm_extract(item, keys) is load_extract(str(path.resolve()), keys)  # read once per process
