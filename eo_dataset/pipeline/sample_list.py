"""Sample lists as Parquet: written by ``eo-dataset sample``, read lazily by ``build`` and ``plan``.

A list is a Parquet file with one row per sample and at least a ``sample_id`` column. Lists written by
:func:`write_sample_list` also hold what a build needs without recomputing it -- ``cell``, ``row``/``col`` (the
cell's indices in the grid), ``a``/``b`` (the sub-cell), ``epsg``, ``x0``/``y0`` (the sample's top-left corner in
its UTM zone), ``lon``/``lat`` (its centre), ``stratum`` and ``land`` (see :mod:`eo_dataset.pipeline.sampling`) --
and, in the file's metadata, the grid they were computed for.

:class:`SampleList` is a read-only ``Sequence[Sample]`` over such a file, like
:class:`~eo_dataset.spec.grid.SampleIndex` for a region: ``len()`` is free (the Parquet footer), and
:class:`~eo_dataset.spec.grid.Sample` objects are made only for the rows asked for (a build block), read by row
group with pyarrow. No per-sample Python object is held, so a 9M-sample list costs the client little memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eo_dataset.errors import GridError
from eo_dataset.pipeline.sampling import STRATA, Drawn, describe
from eo_dataset.spec.grid import Grid, Sample

META_KEY = b"eo_dataset.sample_list"
ROW_GROUP = 1 << 16
_GRID_KEYS = ("cell_size_m", "margin_m", "patch_px", "pixel_size_m", "subcells", "origin", "snap_m")
_FAST = ("sample_id", "cell", "a", "b", "epsg", "x0", "y0")


def write_sample_list(drawn: Drawn, path: str | Path, row_group: int = ROW_GROUP, **extra: Any) -> Path:
    """Write a drawn sample list as Parquet (row groups of ``row_group`` samples, zstd).

    The file is written next to ``path`` and renamed into place, so a crash leaves no half-written list.
    """
    path = Path(path)
    cells = drawn.cell_names()
    ids = [f"{c}_{a}_{b}" for c, a, b in zip(cells, drawn.a.tolist(), drawn.b.tolist(), strict=True)]
    table = pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "cell": pa.array(cells, pa.string()),  # Parquet dictionary-encodes it per row group (an Arrow dictionary
        # of every cell would be written into every row group)
        "row": pa.array(drawn.row, pa.int32()), "col": pa.array(drawn.col, pa.int32()),
        "a": pa.array(drawn.a, pa.int8()), "b": pa.array(drawn.b, pa.int8()),
        "epsg": pa.array(drawn.epsg, pa.int32()),
        "x0": pa.array(drawn.x0, pa.float64()), "y0": pa.array(drawn.y0, pa.float64()),
        "lon": pa.array(drawn.lon, pa.float64()), "lat": pa.array(drawn.lat, pa.float64()),
        "stratum": pa.DictionaryArray.from_arrays(pa.array(drawn.stratum, pa.int8()), pa.array(STRATA)),
        "land": pa.array(drawn.land, pa.float32()),
    })
    del ids, cells
    table = table.replace_schema_metadata({META_KEY: json.dumps(describe(drawn, **extra)).encode()})
    tmp = path.with_name(f".{path.name}.writing")
    pq.write_table(table, tmp, row_group_size=row_group, compression="zstd")
    tmp.replace(path)
    return path


def list_metadata(path: str | Path) -> dict[str, Any] | None:
    """What ``eo-dataset sample`` recorded about a list (None for a list made otherwise)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[META_KEY]) if META_KEY in meta else None


def is_parquet(path: str | Path) -> bool:
    """Whether a file is Parquet (by its magic bytes, whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


class SampleList(Sequence[Sample]):
    """The samples of a Parquet sample list, read lazily by row group (see the module's description).

    ``len()`` is free; ``lst[i]`` is a :class:`Sample` and ``lst[i:j]`` a list of them (a build block), made from
    the rows of that range only; iterating goes row group by row group; :meth:`ids` gives every id and
    :meth:`lonlat` every centre as arrays.

    Raises:
        GridError: the file is missing, not Parquet, has no ``sample_id`` column, or was computed for another grid
            than ``grid`` (its ``x0``/``y0`` would be wrong).
    """

    def __init__(self, path: str | Path, grid: Grid) -> None:
        self.path, self.grid = Path(path), grid
        if not self.path.is_file():
            raise GridError(f"sample list {str(path)!r} not found; expected a Parquet file (eo-dataset sample) or a "
                            "CSV with a 'sample_id' column")
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise GridError(f"{path}: not a readable Parquet file ({exc}); expected one written by 'eo-dataset "
                            "sample' or a CSV with a 'sample_id' column") from None
        names = self._file.schema_arrow.names
        if "sample_id" not in names:
            raise GridError(f"{path}: no 'sample_id' column (columns: {', '.join(names)}); expected a sample list "
                            "with a 'sample_id' column")
        meta = list_metadata(self.path)
        want = {k: getattr(grid.spec, k) for k in _GRID_KEYS}
        if meta is not None and meta.get("grid") != want and all(c in names for c in _FAST):
            raise GridError(f"{path} was drawn for grid {meta.get('grid')}, not the recipe's {want}; draw it again "
                            "with 'eo-dataset sample --recipe RECIPE'")
        self._fast = meta is not None and all(c in names for c in _FAST)
        md = self._file.metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._cache: tuple[int, pa.Table] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"SampleList({str(self.path)!r}, {len(self)} samples)"

    def _group(self, g: int) -> pa.Table:
        if self._cache is None or self._cache[0] != g:
            cols = list(_FAST) if self._fast else ["sample_id"]
            self._cache = (g, self._file.read_row_group(g, columns=cols))
        return self._cache[1]

    def _rows(self, start: int, stop: int) -> pa.Table:
        """Rows ``start:stop`` (reading just the row groups they lie in)."""
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, max(stop - 1, start), side="right")) - 1
        parts = [self._group(g).slice(max(start - int(self._starts[g]), 0),
                                      min(stop, int(self._starts[g + 1])) - max(start, int(self._starts[g])))
                 for g in range(first, last + 1)]
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def _make(self, rows: pa.Table) -> list[Sample]:
        ids = rows.column("sample_id").to_pylist()
        if not self._fast:
            return [self.grid.sample(str(i).strip()) for i in ids]
        size = self.grid.spec.patch_m
        cols = [rows.column(c).to_pylist() for c in ("cell", "a", "b", "epsg", "x0", "y0")]
        return [Sample(i, c, a, b, e, x, y, size) for i, c, a, b, e, x, y in zip(ids, *cols, strict=True)]

    @overload
    def __getitem__(self, key: int) -> Sample: ...

    @overload
    def __getitem__(self, key: slice) -> list[Sample]: ...

    def __getitem__(self, key: int | slice) -> Sample | list[Sample]:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._make(self._rows(start, stop)) if stop > start else []
            return [self[i] for i in range(start, stop, step)]
        i = int(key)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {key} out of range for {n} samples")
        return self._make(self._rows(i, i + 1))[0]

    def __iter__(self) -> Iterator[Sample]:
        for g in range(len(self._starts) - 1):
            yield from self._make(self._group(g))

    def ids(self) -> list[str]:
        """Every sample id, in order (no Sample objects made)."""
        return [str(i).strip() for i in self._file.read(columns=["sample_id"]).column("sample_id").to_pylist()]

    def lonlat(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Every sample's centre (lon, lat) as arrays, if the list holds them (else None)."""
        if not self._fast or not {"lon", "lat"} <= set(self._file.schema_arrow.names):
            return None
        t = self._file.read(columns=["lon", "lat"])
        return t.column("lon").to_numpy(), t.column("lat").to_numpy()
