"""The ``tile_index`` source: a GeoJSON or GeoParquet index of COG tiles (a global product cut into tiles).

Global canopy-height, land-cover or DEM products are often published as thousands of COG tiles named by quadkey or
lat/lon plus one index of their footprints. Each index row becomes one item (asset ``data``) so the engine selects,
mosaics and resamples tiles exactly like STAC items; no catalog has to be written first.

Index columns (GeoJSON feature properties or GeoParquet columns): ``href`` (the tile's path or URL; relative paths
are relative to the index file), optional ``id`` (default: the file name without extension) and optional
``datetime`` or ``year`` (the time the product represents; default 2020-01-01).

Indexes published in another schema are read as they are with the source's ``href_template``: each tile's href is
the template filled with the feature's properties (Python ``str.format``). Meta/WRI's canopy height index
(``tiles.geojson``: one property, ``tile``, the zoom-9 quadkey) becomes tiles with
``href_template: https://dataforgood-fb-data.s3.amazonaws.com/forests/v1/alsgedi_global_v6_float/chm/{tile}.tif``;
GDAL's ``gdaltindex`` output (property ``location``) with ``href_template: "{location}"``.

The index itself may be a local file or a URL (``https://``, ``s3://``: read through GDAL, once per process).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pystac
from shapely.geometry import mapping, shape

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import ItemIndex
from eo_dataset.spec.recipe import SourceSpec

TILES = "tiles"


def _frame_rows(gdf: Any) -> list[tuple[Any, dict[str, Any]]]:
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs(4326)
    return [(geom, {k: v for k, v in row.items() if k != gdf.geometry.name})
            for geom, (_, row) in zip(gdf.geometry, gdf.iterrows(), strict=True)]


def _rows(path: Path) -> list[tuple[Any, dict[str, Any]]]:
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        import geopandas

        return _frame_rows(geopandas.read_parquet(path))
    data = json.loads(path.read_text())
    if data.get("type") != "FeatureCollection":
        raise SourceError(f"tile index {path} is not a GeoJSON FeatureCollection")
    return [(shape(f["geometry"]), f.get("properties") or {}) for f in data["features"]]


def _remote_rows(href: str) -> list[tuple[Any, dict[str, Any]]]:
    import geopandas

    try:  # GDAL reads http(s) through /vsicurl/ and s3:// through /vsis3/
        return _frame_rows(geopandas.read_file(href))
    except Exception as exc:  # pyogrio/GDAL raise their own errors for unreachable or unreadable files
        raise SourceError(f"tile index {href!r} cannot be read ({type(exc).__name__}: {exc}); expected a GeoJSON "
                          "or GeoParquet index of tile footprints at that URL") from None


def _tile_href(props: dict[str, Any], template: str | None, index: str) -> str:
    if template is None:
        tile = props.get("href")
        if not tile:
            raise SourceError(f"tile index {index}: a tile has no 'href' property ({props}); name the tile's href "
                              "with the source's href_template (e.g. 'https://host/{tile}.tif')")
        return str(tile)
    try:
        return template.format(**props)
    except (KeyError, IndexError, ValueError) as exc:
        raise SourceError(f"tile index {index}: href_template {template!r} does not fit a tile's properties "
                          f"{sorted(props)} ({type(exc).__name__}: {exc}); use '{{name}}' fields of those "
                          "properties") from None


class TileIndexSource:
    """Tiles of one product, from an index file; answers searches for any collection name."""

    reads_snapshots = False

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> TileIndexSource:
        """See :class:`eo_dataset.sources.base.SourceType` (``href`` and ``href_template``)."""
        return cls(spec.href, href_template=spec.href_template)

    def __init__(self, href: str, href_template: str | None = None) -> None:
        remote = "://" in href
        path = Path(href)
        if not remote and not path.is_file():
            raise SourceError(f"tile index {href!r} not found; expected a GeoJSON or GeoParquet file of tile "
                              "footprints with an 'href' per tile (or the properties the href_template names)")
        items = []
        for geom, props in (_remote_rows(href) if remote else _rows(path)):
            tile = _tile_href(props, href_template, href)
            if remote and "://" not in tile:
                tile = urljoin(href, tile)
            elif "://" not in tile and not Path(tile).is_absolute():
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
