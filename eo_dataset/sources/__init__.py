"""Sources: where STAC items come from.

Every source answers one question, :meth:`ItemSource.search`: the items of a collection that intersect a lon/lat
box within a time range and pass a property query and a CQL2 filter. The engine never looks behind that interface,
so a static catalog on disk (the demo world), a stac-geoparquet snapshot and a STAC API are interchangeable.

Source types (the recipe's ``sources.<name>.type``), one module each, registered in :data:`SOURCES`:

- ``static_catalog`` (:mod:`~eo_dataset.sources.static`): a catalog / item collection JSON on disk;
- ``stac_api`` (:mod:`~eo_dataset.sources.stac_api`): a STAC API through pystac-client;
- ``geoparquet`` (:mod:`~eo_dataset.sources.geoparquet`): a stac-geoparquet file, e.g. an ``eo-dataset snapshot``;
- ``tile_index`` (:mod:`~eo_dataset.sources.tile_index`): a GeoJSON/GeoParquet index of COG tiles;
- ``osm_file`` (:mod:`~eo_dataset.sources.osm_file`): an OpenStreetMap extract;
- ``overpass`` (:mod:`~eo_dataset.sources.overpass`): an Overpass API, for OpenStreetMap of small regions;
- ``osm_extract_index`` (:mod:`~eo_dataset.sources.osm_extract_index`): an index of OpenStreetMap extracts
  (Geofabrik's index-v1.json), each block reading the smallest extract that covers it;
- ``synthetic`` (:mod:`~eo_dataset.sources.synthetic`): pixels made from the sample id, to run the orchestration at
  planet scale on one machine.

A new source type is one module with a class that follows :class:`~eo_dataset.sources.base.SourceType` (a
``from_spec`` constructor, ``reads_snapshots``, and ``search``) plus one entry in :data:`SOURCES` (and its name in
the recipe's ``SourceSpec.type``, which a test checks against the registry).

A source of a type that ``reads_snapshots`` whose ``href`` ends in ``.parquet`` or ``.geoparquet`` is read as a
snapshot, so ``--source pc=items.parquet`` runs a STAC API recipe from its snapshot alone.
"""

from __future__ import annotations

from functools import lru_cache

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import (
    CqlFilter,
    ItemIndex,
    ItemSource,
    OsmExtractSource,
    PixelSource,
    SourceType,
    item_time_range,
    matches_query,
)
from eo_dataset.sources.geoparquet import GeoParquetSource
from eo_dataset.sources.osm_extract_index import OsmExtractIndexSource
from eo_dataset.sources.osm_file import OsmFileSource
from eo_dataset.sources.overpass import OverpassSource
from eo_dataset.sources.stac_api import StacApiSource
from eo_dataset.sources.static import StaticCatalogSource
from eo_dataset.sources.synthetic import SyntheticSource
from eo_dataset.sources.tile_index import TileIndexSource
from eo_dataset.spec.recipe import SourceSpec

SNAPSHOT_SUFFIXES = (".parquet", ".geoparquet")

#: The source types: the recipe's ``type`` -> the class that opens it. One entry per source module.
SOURCES: dict[str, type[SourceType]] = {
    "static_catalog": StaticCatalogSource,
    "stac_api": StacApiSource,
    "geoparquet": GeoParquetSource,
    "tile_index": TileIndexSource,
    "osm_file": OsmFileSource,
    "overpass": OverpassSource,
    "synthetic": SyntheticSource,
    "osm_extract_index": OsmExtractIndexSource,
}

__all__ = [
    "SOURCES", "CqlFilter", "GeoParquetSource", "ItemIndex", "ItemSource", "OsmExtractIndexSource",
    "OsmExtractSource", "OsmFileSource",
    "OverpassSource", "PixelSource", "SourceType", "StacApiSource", "StaticCatalogSource", "SyntheticSource",
    "TileIndexSource",
    "is_snapshot", "item_time_range", "matches_query", "open_source",
]


def _source_type(spec: SourceSpec) -> type[SourceType]:
    try:
        return SOURCES[spec.type]
    except KeyError:
        raise SourceError(f"source type {spec.type!r} is not supported; expected one of {sorted(SOURCES)}") from None


def is_snapshot(spec: SourceSpec) -> bool:
    """Whether a source is read as a stac-geoparquet file (its type, or an href ending in .parquet on a type whose
    items a snapshot can stand in for)."""
    cls = _source_type(spec)
    return cls is GeoParquetSource or cls.reads_snapshots and spec.href.lower().endswith(SNAPSHOT_SUFFIXES)


@lru_cache(maxsize=16)
def open_source(spec: SourceSpec) -> ItemSource:
    """The source a recipe names (cached per process, so each worker opens a catalog or API once).

    Raises:
        SourceError: the source cannot be opened (missing file, unreachable API, not STAC), or its type is unknown.
    """
    cls = GeoParquetSource if is_snapshot(spec) else _source_type(spec)
    return cls.from_spec(spec)
