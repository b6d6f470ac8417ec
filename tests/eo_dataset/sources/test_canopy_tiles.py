"""Canopy height through the ``tile_index`` source, with Meta/WRI's published index schema and a stand-in COG.

Meta/WRI publish ``forests/v1/alsgedi_global_v6_float/tiles.geojson``: one feature per zoom-9 web-mercator tile,
one property, ``tile`` (its Bing quadkey), and the tile's lon/lat polygon; the COG is ``chm/{tile}.tif``. Five rows
of the real index, as geopandas printed them in a public notebook (GvdDool/tree-height-maps-meta,
``Python/create_figure_v1.ipynb``), are checked against the quadkey arithmetic that writes the tests' index, so the
test index has the published schema and geometry. The tile itself is a stand-in (a small window of the tile's own
1.19 m EPSG:3857 pixel grid), served with the index by a loopback HTTP server, as the recipe's URLs would be.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin

from eo_dataset import Grid, build, load_recipe, parse_recipe
from eo_dataset.errors import SourceError
from eo_dataset.sources import open_source
from eo_dataset.sources.tile_index import TileIndexSource
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import SourceSpec
from tests.servers import FileServer

ZOOM = 9
HALF = 20037508.342789244  # web mercator's half extent (m)
PIXELS = 65536  # a CHM tile's width and height in pixels (1.19 m at zoom 9)
PREFIX = "forests/v1/alsgedi_global_v6_float"
# (tile, first vertex lon, lat) of five rows of the published tiles.geojson: the tile's south-east corner
PUBLISHED = [("023013213", -115.31250, 33.13755), ("021210020", -123.04688, 54.57206),
             ("130122211", 115.31250, 56.94497), ("121022223", 46.40625, 55.77657), ("310111000", 130.07812, -0.70311)]


def quadkey(lon: float, lat: float, zoom: int = ZOOM) -> str:
    """The Bing quadkey of the tile holding a point."""
    n = 2**zoom
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return "".join(str((x >> i & 1) + 2 * (y >> i & 1)) for i in range(zoom - 1, -1, -1))


def tile_xy(key: str) -> tuple[int, int]:
    x = y = 0
    for digit in key:
        x, y = 2 * x + (int(digit) & 1), 2 * y + (int(digit) >> 1)
    return x, y


def tile_bounds(key: str) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of a quadkey's tile."""
    x, y = tile_xy(key)
    n = 2 ** len(key)
    lat = lambda row: math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * row / n))))  # noqa: E731
    return x / n * 360 - 180, lat(y + 1), (x + 1) / n * 360 - 180, lat(y)


def meta_feature(key: str) -> dict:
    """A feature as tiles.geojson has it: property ``tile``; the ring starts at the south-east corner and runs
    counter-clockwise (shapely's ``box`` order)."""
    w, s, e, n = tile_bounds(key)
    ring = [[e, s], [e, n], [w, n], [w, s], [e, s]]
    return {"type": "Feature", "properties": {"tile": key}, "geometry": {"type": "Polygon", "coordinates": [ring]}}


def test_the_test_index_has_the_published_geometry() -> None:
    for key, lon, lat in PUBLISHED:
        w, s, e, _ = tile_bounds(key)
        first = meta_feature(key)["geometry"]["coordinates"][0][0]
        assert first == [e, s] and (round(e, 5), round(s, 5)) == (lon, lat), key
        assert quadkey(w + 1e-6, s + 1e-6) == quadkey(e - 1e-6, s + 1e-6) == key


def _vaduz() -> Sample:
    return Grid().sample_at(9.52, 47.14)


def _stand_in(path: Path, key: str, lon: float, lat: float, half_px: int = 2600) -> None:
    """A window of the tile's 1.19 m EPSG:3857 grid around (lon, lat): 1-pixel stripes of 0 and 30 m."""
    x, y = tile_xy(key)
    res = 2 * HALF / 2**ZOOM / PIXELS
    left, top = -HALF + x * 2 * HALF / 2**ZOOM, HALF - y * 2 * HALF / 2**ZOOM
    mx = math.radians(lon) * 6378137.0
    my = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * 6378137.0
    col, row = int((mx - left) / res) - half_px, int((top - my) / res) - half_px
    size = 2 * half_px
    data = np.zeros((size, size), np.uint8)
    data[:, 1::2] = 30
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs="EPSG:3857",
                       transform=from_origin(left + col * res, top - row * res, res, res), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate") as dst:
        dst.write(data, 1)


@pytest.fixture(scope="module")
def meta_bucket(tmp_path_factory) -> Iterator[FileServer]:
    """The bucket's layout on loopback: tiles.geojson (Vaduz's tile and four published ones) and chm/<tile>.tif."""
    root = tmp_path_factory.mktemp("dataforgood-fb-data")
    folder = root / PREFIX
    (folder / "chm").mkdir(parents=True)
    key = quadkey(9.52, 47.14)
    lon, lat = _vaduz().footprint().centroid.coords[0]
    _stand_in(folder / "chm" / f"{key}.tif", key, lon, lat)
    features = [meta_feature(k) for k in [key] + [p[0] for p in PUBLISHED[:4]]]
    (folder / "tiles.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with FileServer(root) as server:
        yield server


def _recipe(server: FileServer, tmp_path: Path) -> dict:
    empty = tmp_path / "no-scenes.json"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    corpus = load_recipe("4m4eo")  # the corpus recipe's canopy source and modality, pointed at loopback
    source = corpus.sources["canopy_tiles"]
    public = "https://dataforgood-fb-data.s3.amazonaws.com"
    canopy = corpus.modalities["canopy"]
    tiles = {"type": "tile_index", "href": source.href.replace(public, server.url),
             "href_template": source.href_template.replace(public, server.url)}
    modality = {"collection": canopy.collection.name, "source": "canopy_tiles", "resolution_m": 10,
                "rule": {"type": "static"}}
    return {"name": "canopy-test", "time": {"anchor": "s2", "start": "2021-01-01", "end": "2021-12-31"},
            "sources": {"scenes": {"type": "static_catalog", "href": str(empty)}, "canopy_tiles": tiles},
            "modalities": {"s2": {"collection": "sentinel-2-l2a", "source": "scenes", "resolution_m": 10,
                                  "rule": {"type": "least_cloudy"}},
                           "canopy": {**modality, "resampling": canopy.resampling},
                           "canopy_nearest": {**modality, "resampling": "nearest"}}}


def test_the_corpus_canopy_reads_meta_tiles_by_quadkey_averaged_to_10_m(meta_bucket, tmp_path) -> None:
    recipe = parse_recipe(_recipe(meta_bucket, tmp_path))
    assert recipe.modalities["canopy"].resampling_method == "average"
    source = open_source(recipe.sources["canopy_tiles"])
    key = quadkey(9.52, 47.14)
    (item,) = source.search("meta-canopy-height", (9.51, 47.13, 9.53, 47.15), None, None)
    assert item.id == key and item.assets["data"].href == f"{meta_bucket.url}/{PREFIX}/chm/{key}.tif"
    build(recipe, [_vaduz()], tmp_path / "cube.zarr", scheduler="sync")
    ds = xr.open_zarr(tmp_path / "cube.zarr")
    assert ds.canopy.dtype == np.float32 and list(ds.canopy_item.values) == [key]
    assert ds.canopy_available.values.all() and ds.canopy_valid.values.all()
    mean = ds.canopy.values
    # 1 m stripes of 0 and 30 m: their mean in every 10 m pixel is 15 m (an edge pixel may hold one stripe more)
    assert np.abs(mean - 15).max() < 2.5 and abs(float(mean.mean()) - 15) < 0.1
    nearest = ds.canopy_nearest.values  # one source pixel per output pixel: 0 or 30, never the canopy's mean
    assert set(np.unique(nearest)) <= {0.0, 30.0} and (nearest == 0).any() and (nearest == 30).any()


def test_href_template_errors_and_relative_hrefs(tmp_path) -> None:
    index = tmp_path / "tiles.geojson"
    index.write_text(json.dumps({"type": "FeatureCollection", "features": [meta_feature("120203101")]}))
    with pytest.raises(SourceError, match=r"a tile has no 'href' property .* href_template"):
        TileIndexSource(str(index))
    with pytest.raises(SourceError, match=r"href_template 'chm/\{quadkey\}.tif' does not fit a tile's properties "
                                          r"\['tile'\]"):
        TileIndexSource(str(index), href_template="chm/{quadkey}.tif")
    (item,) = TileIndexSource(str(index), href_template="chm/{tile}.tif").search("c", (-180, -90, 180, 90), None,
                                                                                  None)
    assert item.id == "120203101" and item.assets["data"].href == str(tmp_path / "chm" / "120203101.tif")
    with pytest.raises(ValueError, match="href_template only applies to type 'tile_index'"):
        SourceSpec(type="osm_file", href="x.osm.pbf", href_template="{tile}")


def test_eth_tiles_named_by_their_south_west_corner(tmp_path) -> None:
    """ETH's 3 x 3 degree tiles through a gdaltindex-style index (column ``location``) and ``href_template``."""
    features = []
    for lat, lon in ((45, 6), (45, 9)):
        name = f"ETH_GlobalCanopyHeight_10m_2020_N{lat:02d}E{lon:03d}_Map.tif"
        ring = [[lon, lat], [lon + 3, lat], [lon + 3, lat + 3], [lon, lat + 3], [lon, lat]]
        features.append({"type": "Feature", "properties": {"location": f"3deg_cogs/{name}"},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    index = tmp_path / "eth-tiles.geojson"
    index.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    source = open_source(SourceSpec(type="tile_index", href=str(index), href_template="{location}"))
    (item,) = source.search("eth-canopy-height-2020", (9.5, 47.1, 9.6, 47.2), None, None)  # Vaduz: E009
    assert item.id == "ETH_GlobalCanopyHeight_10m_2020_N45E009_Map"
    assert item.assets["data"].href == str(tmp_path / "3deg_cogs" / "ETH_GlobalCanopyHeight_10m_2020_N45E009_Map.tif")
