"""The ``tile_index`` source: a GeoJSON or GeoParquet index of COG tiles (a global product cut into tiles).

Global canopy-height, land-cover or DEM products are often published as thousands of COG tiles named by quadkey or
lat/lon plus one index of their footprints. Each index row becomes one item (asset ``data``) so the engine selects,
mosaics and resamples tiles exactly like STAC items; no catalog has to be written first.

Index columns (GeoJSON feature properties or GeoParquet columns): ``href`` (the tile's path or URL; relative paths
are relative to the index file), optional ``id`` (default: the file name without extension) and optional
``datetime`` or ``year`` (the time the product represents; default 2020-01-01).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac
from shapely.geometry import mapping, shape

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import ItemIndex
from eo_dataset.spec.recipe import SourceSpec

TILES = "tiles"


def _rows(path: Path) -> list[tuple[Any, dict[str, Any]]]:
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        import geopandas

        gdf = geopandas.read_parquet(path)
        return [(geom, {k: v for k, v in row.items() if k != gdf.geometry.name})
                for geom, (_, row) in zip(gdf.geometry, gdf.iterrows(), strict=True)]
    data = json.loads(path.read_text())
    if data.get("type") != "FeatureCollection":
        raise SourceError(f"tile index {path} is not a GeoJSON FeatureCollection")
    return [(shape(f["geometry"]), f.get("properties") or {}) for f in data["features"]]


class TileIndexSource:
    """Tiles of one product, from an index file; answers searches for any collection name."""

    reads_snapshots = False

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> TileIndexSource:
        """See :class:`eo_dataset.sources.base.SourceType` (``href`` is all it needs)."""
        return cls(spec.href)

    def __init__(self, href: str) -> None:
        path = Path(href)
        if not path.is_file():
            raise SourceError(f"tile index {href!r} not found; expected a GeoJSON or GeoParquet file of tile "
                              "footprints with an 'href' per tile")
        items = []
        for geom, props in _rows(path):
            tile = props.get("href")
            if not tile:
                raise SourceError(f"tile index {href}: a tile has no 'href' property ({props})")
            if "://" not in str(tile) and not Path(tile).is_absolute():
                tile = str((path.parent / tile).resolve())
            when = (pystac.utils.str_to_datetime(props["datetime"]) if props.get("datetime")
                    else dt.datetime(int(props.get("year", 2020)), 1, 1, tzinfo=dt.UTC))
            item = pystac.Item(str(props.get("id") or Path(str(tile)).stem), mapping(geom), list(geom.bounds), when,
                               {}, collection=TILES)
            item.add_asset("data", pystac.Asset(str(tile), media_type=pystac.MediaType.COG, roles=["data"]))
            items.append(item)
        self._index = ItemIndex(items)

    def extent(self, collection: str) -> tuple[float, float, float, float]:
        """The lon/lat box of every tile (the index is one product: ``collection`` is not used)."""
        return self._index.extent(TILES)

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               query: dict[str, dict[str, Any]] | None = None, filter: dict[str, Any] | None = None
               ) -> list[pystac.Item]:
        """The tiles intersecting ``bbox`` (the index is one product: ``collection`` is not used)."""
        return self._index.search(TILES, bbox, start, end, query, filter)
