"""Sources: where STAC items come from.

Every source answers one question, :meth:`ItemSource.search`: the items of a collection that intersect a lon/lat
box within a time range and pass a property query. The engine never looks behind that interface, so a static
catalog on disk (the demo world), an item snapshot and a STAC API are interchangeable.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import pystac
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from eo_dataset.errors import SourceError
from eo_dataset.recipe import SourceSpec

_OPS = {"eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le, "gt": operator.gt,
        "gte": operator.ge, "in": lambda a, b: a in b}


class ItemSource(Protocol):
    """What the engine needs of a source."""

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None) -> list[pystac.Item]:
        """Items of ``collection`` intersecting ``bbox`` (lon/lat) and overlapping [start, end] (None: any time)."""
        ...


def item_time_range(item: pystac.Item) -> tuple[dt.datetime, dt.datetime]:
    """(start, end) of an item: its datetime, or its start/end_datetime for items that span a period."""
    props = item.properties
    if item.datetime is not None:
        return item.datetime, item.datetime
    start = pystac.utils.str_to_datetime(props["start_datetime"])
    end = pystac.utils.str_to_datetime(props["end_datetime"])
    return start, end


def matches_query(props: dict[str, Any], query: dict[str, dict[str, Any]] | None) -> bool:
    """Evaluate a STAC API ``query`` (``{"eo:cloud_cover": {"lt": 20}}``) on item properties."""
    for key, conditions in (query or {}).items():
        if key not in props:
            return False
        for op, value in conditions.items():
            if op not in _OPS:
                raise SourceError(f"query on {key!r}: unknown operator {op!r}, expected one of {sorted(_OPS)}")
            if not _OPS[op](props[key], value):
                return False
    return True


@dataclass
class _Entry:
    item: pystac.Item
    geometry: BaseGeometry
    start: dt.datetime
    end: dt.datetime


class StaticCatalogSource:
    """Items of a static STAC catalog (``catalog.json``) or an ItemCollection / FeatureCollection JSON file.

    The catalog is read once; searches run in memory against a spatial index.
    """

    def __init__(self, href: str) -> None:
        self.href = href
        path = Path(href)
        if not path.exists():
            raise SourceError(f"static catalog {href!r} not found; run 'eo-dataset demo' to create the demo world "
                              "or point the recipe's source (or --source NAME=PATH) at a catalog.json")
        try:
            data = json.loads(path.read_text())
            if data.get("type") == "FeatureCollection":
                obj = pystac.ItemCollection.from_dict(data, preserve_dict=False)
                for item in obj:  # relative asset hrefs are relative to the file
                    for asset in item.assets.values():
                        if "://" not in asset.href and not Path(asset.href).is_absolute():
                            asset.href = str((path.parent / asset.href).resolve())
            else:
                obj = pystac.read_file(str(path.resolve()))
        except Exception as exc:  # pystac raises many types for unreadable files
            raise SourceError(f"cannot read STAC file {href!r}: {exc}") from exc
        if isinstance(obj, pystac.ItemCollection):
            items = list(obj)
        elif isinstance(obj, pystac.Catalog):
            items = list(obj.get_items(recursive=True))
        elif isinstance(obj, pystac.Item):
            items = [obj]
        else:
            raise SourceError(f"{href!r} is a STAC {type(obj).__name__}; expected a catalog or item collection")
        self._by_collection: dict[str, list[_Entry]] = {}
        for item in items:
            start, end = item_time_range(item)
            entry = _Entry(item, shape(item.geometry), start, end)
            self._by_collection.setdefault(item.collection_id or "", []).append(entry)
        self._trees = {c: shapely.STRtree([e.geometry for e in es]) for c, es in self._by_collection.items()}

    @property
    def collections(self) -> list[str]:
        """Collection ids present in the catalog."""
        return sorted(self._by_collection)

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None) -> list[pystac.Item]:
        """See :meth:`ItemSource.search`."""
        entries = self._by_collection.get(collection, [])
        if not entries:
            return []
        hits = self._trees[collection].query(box(*bbox), predicate="intersects")
        out = []
        for i in sorted(hits):
            e = entries[i]
            if start is not None and e.end < start or end is not None and e.start > end:
                continue
            if matches_query(e.item.properties, query):
                out.append(e.item)
        return out


@lru_cache(maxsize=16)
def open_source(spec: SourceSpec) -> ItemSource:
    """The source a recipe names (cached per process, so each worker reads a catalog once)."""
    if spec.type == "static_catalog":
        return StaticCatalogSource(spec.href)
    raise SourceError(f"source type {spec.type!r} is not supported")
