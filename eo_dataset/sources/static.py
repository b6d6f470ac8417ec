"""The ``static_catalog`` source: a STAC catalog, item collection or item on disk, searched in memory."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import ItemIndex
from eo_dataset.spec.recipe import SourceSpec


def read_items(href: str) -> list[pystac.Item]:
    """The items of a static catalog (``catalog.json``, read recursively), a FeatureCollection or a single item.

    In a FeatureCollection file, relative asset hrefs are made absolute against the file's folder.

    Raises:
        SourceError: the file is missing or not STAC.
    """
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
        return list(obj)
    if isinstance(obj, pystac.Catalog):
        return list(obj.get_items(recursive=True))
    if isinstance(obj, pystac.Item):
        return [obj]
    raise SourceError(f"{href!r} is a STAC {type(obj).__name__}; expected a catalog or item collection")


class StaticCatalogSource:
    """Items of a static STAC catalog (``catalog.json``) or an ItemCollection / FeatureCollection JSON file.

    The catalog is read once; searches run in memory against a spatial index.
    """

    reads_snapshots = True

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> StaticCatalogSource:
        """See :class:`eo_dataset.sources.base.SourceType` (``href`` is all it needs)."""
        return cls(spec.href)

    def __init__(self, href: str) -> None:
        self.href = href
        self._index = ItemIndex(read_items(href))

    @property
    def collections(self) -> list[str]:
        """Collection ids present in the catalog."""
        return self._index.collections

    def extent(self, collection: str) -> tuple[float, float, float, float]:
        """The lon/lat box of the collection's items (SourceError if the catalog holds none)."""
        try:
            return self._index.extent(collection)
        except SourceError as exc:
            raise SourceError(f"static catalog {self.href}: {exc}") from None

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None,
               filter: dict[str, Any] | None = None) -> list[pystac.Item]:
        """See :meth:`eo_dataset.sources.ItemSource.search`."""
        return self._index.search(collection, bbox, start, end, query, filter)
