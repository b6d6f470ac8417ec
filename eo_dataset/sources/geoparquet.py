"""The ``geoparquet`` source: items from a stac-geoparquet file (e.g. an ``eo-dataset snapshot``).

Each search reads only the rows of the collection whose ``bbox`` overlaps the search box (a pyarrow dataset filter,
so row groups outside it are skipped), turns them back into STAC items with ``stac_geoparquet`` and applies the exact
geometry, time, query and CQL2 tests in memory. A snapshot therefore gives a build the same items the STAC API
gave when it was taken, with no network.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import ItemIndex
from eo_dataset.spec.recipe import SourceSpec

REQUIRED_COLUMNS = ("id", "collection", "geometry", "assets")


class GeoParquetSource:
    """Items of a stac-geoparquet file, or of a folder of such files."""

    reads_snapshots = True

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> GeoParquetSource:
        """See :class:`eo_dataset.sources.base.SourceType` (``href`` is all it needs)."""
        return cls(spec.href)

    def __init__(self, href: str) -> None:
        import pyarrow as pa
        import pyarrow.dataset as pads

        self.href = href
        if not Path(href).exists():
            raise SourceError(f"stac-geoparquet snapshot {href!r} not found; make one with 'eo-dataset snapshot "
                              "RECIPE --region ... --out items.parquet' or point the source's href at it")
        try:
            self._dataset = pads.dataset(href, format="parquet")
            schema = self._dataset.schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"cannot read {href!r} as parquet: {exc}") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if missing:
            raise SourceError(f"{href!r} is not a stac-geoparquet file: columns {missing} are missing (found "
                              f"{schema.names[:12]}); write snapshots with 'eo-dataset snapshot' or stac-geoparquet")
        bbox = schema.field("bbox").type if "bbox" in schema.names else None
        self._bbox_struct = bool(bbox is not None and pa.types.is_struct(bbox)
                                 and {"xmin", "ymin", "xmax", "ymax"} <= {f.name for f in bbox})

    @property
    def collections(self) -> list[str]:
        """Collection ids present in the file."""
        import pyarrow.compute as pc

        return sorted(str(c) for c in pc.unique(self._dataset.to_table(columns=["collection"])["collection"])
                      .to_pylist() if c is not None)

    def items(self, collection: str | None = None) -> list[pystac.Item]:
        """All items (of one collection)."""
        import pyarrow.dataset as pads

        filt = pads.field("collection") == collection if collection else None
        return self._to_items(self._dataset.to_table(filter=filt))

    @staticmethod
    def _to_items(table: Any) -> list[pystac.Item]:
        from stac_geoparquet.arrow import stac_table_to_items

        if table.num_rows == 0:
            return []
        return [pystac.Item.from_dict(d, preserve_dict=False) for d in stac_table_to_items(table)]

    def extent(self, collection: str) -> tuple[float, float, float, float] | None:
        """The lon/lat box of the collection's rows (None without a bbox column; SourceError if it has none)."""
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        if not self._bbox_struct:
            return None
        bbox = self._dataset.to_table(columns=["bbox"], filter=pads.field("collection") == collection)["bbox"]
        if len(bbox) == 0:
            raise SourceError(f"snapshot {self.href}: no item of collection {collection!r} (collections: "
                              f"{self.collections})")
        field = bbox.combine_chunks()
        lo = [pc.min(field.field(k)).as_py() for k in ("xmin", "ymin")]
        hi = [pc.max(field.field(k)).as_py() for k in ("xmax", "ymax")]
        if pc.any(pc.greater(field.field("xmin"), field.field("xmax"))).as_py():  # a row crosses the antimeridian
            lo[0], hi[0] = -180.0, 180.0
        return (lo[0], lo[1], hi[0], hi[1])

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None,
               filter: dict[str, Any] | None = None) -> list[pystac.Item]:
        """See :meth:`eo_dataset.sources.ItemSource.search`."""
        import pyarrow.dataset as pads

        w, s, e, n = bbox
        filt = pads.field("collection") == collection
        if self._bbox_struct:
            xmin, ymin = pads.field("bbox", "xmin"), pads.field("bbox", "ymin")
            xmax, ymax = pads.field("bbox", "xmax"), pads.field("bbox", "ymax")
            # a bbox with xmin > xmax crosses the antimeridian: keep it for the exact test
            lon_ok = ((xmin <= e) & (xmax >= w)) | (xmin > xmax)
            filt = filt & lon_ok & (ymin <= n) & (ymax >= s)
        try:
            table = self._dataset.to_table(filter=filt)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise SourceError(f"cannot read {self.href!r}: {exc}") from exc
        return ItemIndex(self._to_items(table)).search(collection, bbox, start, end, query, filter)
