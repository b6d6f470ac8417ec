"""What every source shares: the search interface, item times, and property filters evaluated on the client.

A source answers one question, :meth:`ItemSource.search`: the items of a collection that intersect a lon/lat box,
overlap a time range and pass the modality's ``query`` and CQL2 ``filter``. Local sources (a static catalog, a
stac-geoparquet snapshot) evaluate everything here; a STAC API evaluates it on the server and the results are
checked again here, so an API that ignores a filter cannot let a wrong item through.

A source type (:class:`SourceType`) is a class the registry in :mod:`eo_dataset.sources` opens from the recipe's
:class:`~eo_dataset.spec.recipe.SourceSpec`. Sources of OpenStreetMap data also load an item's features
(:class:`OsmExtractSource`), so the engine never has to know which kind made an item.
"""

from __future__ import annotations

import datetime as dt
import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import pystac
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from eo_dataset.errors import SourceError
from eo_dataset.spec.recipe import SourceSpec

if TYPE_CHECKING:
    import numpy as np

    from eo_dataset.sources.osm import Extract
    from eo_dataset.spec.grid import Sample
    from eo_dataset.spec.recipe import ModalitySpec

CACHE_ENV = "EO_DATASET_CACHE"

_OPS = {"eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le, "gt": operator.gt,
        "gte": operator.ge, "in": lambda a, b: a in b}


class ItemSource(Protocol):
    """What the engine needs of a source."""

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None,
               filter: dict[str, Any] | None = None) -> list[pystac.Item]:
        """Items of ``collection`` intersecting ``bbox`` (lon/lat) and overlapping [start, end] (None: any time).

        ``query`` is a STAC API query (``{"eo:cloud_cover": {"lt": 20}}``), ``filter`` a CQL2-JSON expression.
        """
        ...

    # Optional: ``extent(collection) -> (W, S, E, N) | None``: the lon/lat box the collection covers (None: cannot
    # tell cheaply), raising SourceError when the source does not hold that collection (eo_dataset.pipeline.coverage).


class SourceType(Protocol):
    """A source class as the registry (:data:`eo_dataset.sources.SOURCES`) holds it."""

    #: Whether its items are STAC items that a stac-geoparquet snapshot can stand in for: with an ``href`` ending
    #: in ``.parquet``/``.geoparquet`` such a source is read as a snapshot (``--source pc=items.parquet``).
    reads_snapshots: ClassVar[bool]

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> ItemSource:
        """The source a recipe's ``sources.<name>`` describes.

        Raises:
            SourceError: it cannot be opened (missing file, unreachable API, not STAC).
        """
        ...


@runtime_checkable
class PixelSource(Protocol):
    """A source that makes an item's pixels itself, with no file to read (the ``synthetic`` source)."""

    def pixels(self, item: pystac.Item, modality: ModalitySpec, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """The item's pixels on the sample's grid: (band, y, x) in the modality's storage dtype, and (y, x) valid."""
        ...


@runtime_checkable
class OsmExtractSource(Protocol):
    """A source of OpenStreetMap data: it turns one of its items into the features a modality rasterises."""

    def osm_extract(self, item: pystac.Item, keys: tuple[str, ...]) -> Extract:
        """The features of ``item`` that have any of the tag ``keys``, with the area the item covers.

        Raises:
            SourceError: the data cannot be had (unreadable file, unreachable or refusing server).
        """
        ...


def cache_dir(spec: SourceSpec, kind: str) -> Path | None:
    """Where a source keeps what it fetched (None: ``cache: false``).

    The source's ``cache_dir``, else ``$EO_DATASET_CACHE/<kind>`` or ``~/.cache/eo-dataset/<kind>``.
    """
    if not spec.cache:
        return None
    if spec.cache_dir:
        return Path(spec.cache_dir)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "eo-dataset") / kind


def item_time_range(item: pystac.Item) -> tuple[dt.datetime, dt.datetime]:
    """(start, end) of an item: its datetime, or its start/end_datetime for items that span a period."""
    props = item.properties
    if item.datetime is not None:
        return item.datetime, item.datetime
    try:
        start = pystac.utils.str_to_datetime(props["start_datetime"])
        end = pystac.utils.str_to_datetime(props["end_datetime"])
    except KeyError:
        raise SourceError(f"item {item.id} has neither a datetime nor start_datetime/end_datetime") from None
    return start, end


def matches_query(props: dict[str, Any], query: dict[str, dict[str, Any]] | None) -> bool:
    """Evaluate a STAC API ``query`` (``{"eo:cloud_cover": {"lt": 20}}``) on item properties.

    An item lacking a queried property does not match (as in pgstac).
    """
    for key, conditions in (query or {}).items():
        if key not in props:
            return False
        for op, value in conditions.items():
            if op not in _OPS:
                raise SourceError(f"query on {key!r}: unknown operator {op!r}, expected one of {sorted(_OPS)}")
            try:
                if not _OPS[op](props[key], value):
                    return False
            except TypeError:  # e.g. a string compared with a number: not a match
                return False
    return True


_CQL2_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "in": "in"}


def query_to_cql2(query: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A STAC API ``query`` as the equivalent CQL2-JSON expression (the terms joined with ``and``).

    >>> query_to_cql2({"eo:cloud_cover": {"lt": 20}})
    {'op': '<', 'args': [{'property': 'eo:cloud_cover'}, 20]}
    """
    terms = []
    for key, conditions in query.items():
        for op, value in conditions.items():
            if op not in _CQL2_OPS:
                raise SourceError(f"query on {key!r}: unknown operator {op!r}, expected one of {sorted(_CQL2_OPS)}")
            terms.append({"op": _CQL2_OPS[op], "args": [{"property": key}, value]})
    return terms[0] if len(terms) == 1 else {"op": "and", "args": terms}


class CqlFilter:
    """A CQL2 expression evaluated on items (the ``cql2`` package, the same parser the STAC tools use)."""

    def __init__(self, expression: dict[str, Any] | str) -> None:
        import cql2

        try:
            self._expr = cql2.Expr(expression)
        except Exception as exc:  # cql2 raises a bare Exception on parse errors
            raise SourceError(f"not a valid CQL2 filter {expression!r}: {exc}") from None

    def matches(self, item: pystac.Item) -> bool:
        """Whether the item passes the filter.

        A comparison with a property the item lacks is no match (SQL's NULL, as in pgstac).

        Raises:
            SourceError: the local evaluator cannot apply the expression (e.g. an unsupported function).
        """
        try:
            return bool(self._expr.matches(item.to_dict(include_self_link=False, transform_hrefs=False)))
        except Exception as exc:  # cql2 raises a bare Exception
            if "could not reduce expression to boolean" in str(exc).lower():
                return False
            raise SourceError(f"cannot evaluate the CQL2 filter on item {item.id}: {exc}") from None


def passes(item: pystac.Item, query: dict[str, dict[str, Any]] | None, cql: CqlFilter | None) -> bool:
    """Whether an item passes both the ``query`` and the CQL2 filter."""
    return matches_query(item.properties, query) and (cql is None or cql.matches(item))


@dataclass
class _Entry:
    item: pystac.Item
    geometry: BaseGeometry
    start: dt.datetime
    end: dt.datetime


class ItemIndex:
    """Items held in memory, searched by collection, bbox (an STR tree), time range, query and CQL2 filter."""

    def __init__(self, items: Iterable[pystac.Item]) -> None:
        self._by_collection: dict[str, list[_Entry]] = {}
        for item in items:
            start, end = item_time_range(item)
            if item.geometry is None:
                raise SourceError(f"item {item.id} has no geometry; every item needs a footprint to be searched")
            entry = _Entry(item, shape(item.geometry), start, end)
            self._by_collection.setdefault(item.collection_id or "", []).append(entry)
        self._trees = {c: shapely.STRtree([e.geometry for e in es]) for c, es in self._by_collection.items()}

    @property
    def collections(self) -> list[str]:
        """Collection ids present."""
        return sorted(self._by_collection)

    def __len__(self) -> int:
        return sum(len(es) for es in self._by_collection.values())

    def extent(self, collection: str) -> tuple[float, float, float, float]:
        """The lon/lat box around every item of ``collection``.

        Raises:
            SourceError: no item of that collection is held (the message lists the collections that are).
        """
        if collection not in self._by_collection:
            raise SourceError(f"no item of collection {collection!r} here (collections: {self.collections})")
        w, s, e, n = shapely.total_bounds([x.geometry for x in self._by_collection[collection]])
        return (float(w), float(s), float(e), float(n))

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None,
               filter: dict[str, Any] | None = None) -> list[pystac.Item]:
        """See :meth:`ItemSource.search`."""
        entries = self._by_collection.get(collection, [])
        if not entries:
            return []
        cql = CqlFilter(filter) if filter else None
        hits = self._trees[collection].query(box(*bbox), predicate="intersects")
        out = []
        for i in sorted(hits):
            e = entries[i]
            if start is not None and e.end < start or end is not None and e.start > end:
                continue
            if passes(e.item, query, cql):
                out.append(e.item)
        return out
