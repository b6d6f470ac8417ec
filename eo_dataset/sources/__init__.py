"""Sources: where STAC items come from.

Every source answers one question, :meth:`ItemSource.search`: the items of a collection that intersect a lon/lat
box within a time range and pass a property query and a CQL2 filter. The engine never looks behind that interface,
so a static catalog on disk (the demo world), a stac-geoparquet snapshot and a STAC API are interchangeable.

Source kinds (the recipe's ``sources.<name>.type``), one module each:

- ``static_catalog`` (:mod:`~eo_dataset.sources.static`): a catalog / item collection JSON on disk;
- ``stac_api`` (:mod:`~eo_dataset.sources.stac_api`): a STAC API through pystac-client;
- ``geoparquet`` (:mod:`~eo_dataset.sources.geoparquet`): a stac-geoparquet file, e.g. an ``eo-dataset snapshot``;
- ``tile_index`` (:mod:`~eo_dataset.sources.tile_index`): a GeoJSON/GeoParquet index of COG tiles;
- ``osm_file`` (:mod:`~eo_dataset.sources.osm_file`): an OpenStreetMap extract;
- ``overpass`` (:mod:`~eo_dataset.sources.overpass`): an Overpass API, for OpenStreetMap of small regions.

A source whose ``href`` ends in ``.parquet`` or ``.geoparquet`` is read as a snapshot whatever its type, so
``--source pc=items.parquet`` runs a STAC API recipe from its snapshot alone.
"""

from __future__ import annotations

from functools import lru_cache

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import CqlFilter, ItemIndex, ItemSource, item_time_range, matches_query
from eo_dataset.sources.geoparquet import GeoParquetSource
from eo_dataset.sources.osm_file import OsmFileSource
from eo_dataset.sources.overpass import OverpassSource
from eo_dataset.sources.stac_api import StacApiSource
from eo_dataset.sources.static import StaticCatalogSource
from eo_dataset.sources.tile_index import TileIndexSource
from eo_dataset.spec.recipe import SourceSpec

SNAPSHOT_SUFFIXES = (".parquet", ".geoparquet")

__all__ = [
    "CqlFilter", "GeoParquetSource", "ItemIndex", "ItemSource", "OsmFileSource", "OverpassSource", "StacApiSource",
    "StaticCatalogSource", "TileIndexSource",
    "is_snapshot", "item_time_range", "matches_query", "open_source",
]


def is_snapshot(spec: SourceSpec) -> bool:
    """Whether a source is read as a stac-geoparquet file (its type, or an href ending in .parquet)."""
    return spec.type == "geoparquet" or spec.href.lower().endswith(SNAPSHOT_SUFFIXES)


@lru_cache(maxsize=16)
def open_source(spec: SourceSpec) -> ItemSource:
    """The source a recipe names (cached per process, so each worker opens a catalog or API once).

    Raises:
        SourceError: the source cannot be opened (missing file, unreachable API, not STAC).
    """
    if spec.type == "tile_index":
        return TileIndexSource(spec.href)
    if spec.type == "osm_file":
        return OsmFileSource(spec.href)
    if spec.type == "overpass":
        return OverpassSource(spec)
    if is_snapshot(spec):
        return GeoParquetSource(spec.href)
    if spec.type == "static_catalog":
        return StaticCatalogSource(spec.href)
    if spec.type == "stac_api":
        return StacApiSource(spec)
    raise SourceError(f"source type {spec.type!r} is not supported")
