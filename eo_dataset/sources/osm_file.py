"""The ``osm_file`` source: an OpenStreetMap extract (``.osm``, ``.osm.bz2`` or ``.osm.pbf``) as one item.

The item's footprint is what the extract covers (its ``<bounds>`` or PBF header box), so a sample outside it finds
no item and is marked unavailable, never "no buildings". Its asset ``data`` is the file, which
:meth:`OsmFileSource.osm_extract` reads (once per process, :func:`eo_dataset.sources.osm.load_extract`) for the
engine to rasterise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac
import shapely
from shapely.geometry import mapping

from eo_dataset.errors import SourceError
from eo_dataset.sources.osm import Extract, extract_coverage, extract_timestamp, load_extract
from eo_dataset.spec.recipe import SourceSpec


class OsmFileSource:
    """One OSM extract; answers searches for any collection name."""

    reads_snapshots = False

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> OsmFileSource:
        """See :class:`eo_dataset.sources.base.SourceType` (``href`` is all it needs)."""
        return cls(spec.href)

    def __init__(self, href: str) -> None:
        path = Path(href)
        if not path.is_file():
            raise SourceError(f"OSM extract {href!r} not found; expected a .osm, .osm.bz2 or .osm.pbf file")
        coverage = extract_coverage(path)
        # the snapshot time the extract declares, else (no header) its file time
        when = extract_timestamp(path) or dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).replace(microsecond=0)
        self.item = pystac.Item(path.name, mapping(coverage), list(coverage.bounds), when, {}, collection="osm")
        self.item.add_asset("data", pystac.Asset(str(path.resolve()), roles=["data"]))

    def extent(self, collection: str) -> tuple[float, float, float, float]:
        """The box the extract declares it covers (any collection name)."""
        return tuple(self.item.bbox)  # type: ignore[return-value]

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               query: dict[str, dict[str, Any]] | None = None, filter: dict[str, Any] | None = None
               ) -> list[pystac.Item]:
        """The extract, if it intersects ``bbox`` (time, query and filter do not apply to a static extract)."""
        return [self.item] if shapely.box(*bbox).intersects(shapely.geometry.shape(self.item.geometry)) else []

    def osm_extract(self, item: pystac.Item, keys: tuple[str, ...]) -> Extract:
        """The features of the item's extract file with any of the tag ``keys`` (read once per process and keys).

        Raises:
            SourceError: the file cannot be read.
        """
        return load_extract(item.assets["data"].get_absolute_href() or item.assets["data"].href, keys)
