"""The global sample grid: Major TOM cells and TerraMesh sub-cells.

A *cell* follows ESA's Major TOM grid: 2004 rows of equal latitude spacing (for d = 10 km), each row cut into
``ceil(2*pi*R*cos(lat) / d)`` columns; a cell is named by its row (``kU`` north / ``kD`` south of the equator) and
column (``cR`` east / ``cL`` west of longitude 0) and located by its south-west corner.

A *sample* is a sub-cell ``<cell>_<a>_<b>`` (``a`` column from the west, ``b`` row from the north) of
``patch_px`` pixels at ``pixel_size_m``, in the UTM zone of the cell's south-west corner. With the defaults this
reproduces TerraMesh's 264 px patches and ids to the millimetre.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, overload

import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from eo_dataset.errors import GridError

EARTH_RADIUS_KM = 6378.137  # Major TOM's equatorial radius

_CELL_RE = re.compile(r"^(\d+)([UD])_(\d+)([LR])$")
_SAMPLE_RE = re.compile(r"^(\d+[UD]_\d+[LR])_(\d+)_(\d+)$")


@dataclass(frozen=True)
class GridSpec:
    """Geometry of the sample grid (the recipe's ``grid`` section).

    Attributes:
        cell_size_m: Major TOM cell size ``d`` in metres (10 km gives the 2004-row grid).
        margin_m: Margin of the cell window beyond the cell on each side (Major TOM: 340 m).
        patch_px: Sample size in pixels at ``pixel_size_m`` (TerraMesh: 264).
        pixel_size_m: Base (finest) resolution in metres.
        subcells: Sub-cells per cell side (TerraMesh: 4, ids ``_0_0`` .. ``_3_3``).
        origin: ``exact`` keeps the fractional-metre TerraMesh origin; ``snap`` rounds it to the nearest multiple of
            ``snap_m`` in the zone so source pixels on that lattice are copied without resampling.
        snap_m: Lattice used by ``origin: snap``.
    """

    cell_size_m: float = 10_000.0
    margin_m: float = 340.0
    patch_px: int = 264
    pixel_size_m: float = 10.0
    subcells: int = 4
    origin: str = "exact"
    snap_m: float = 60.0

    @property
    def patch_m(self) -> float:
        """Side of a sample in metres."""
        return self.patch_px * self.pixel_size_m


@dataclass(frozen=True)
class Cell:
    """One Major TOM cell."""

    name: str
    row: int  # index into the sorted row latitudes (south to north)
    col: int  # index into the sorted column longitudes of that row (west to east)
    lat: float  # south edge
    lon: float  # west edge
    lat_step: float
    lon_step: float

    @property
    def epsg(self) -> int:
        """EPSG code of the UTM zone of the cell's south-west corner."""
        return utm_epsg(self.lon, self.lat)


@dataclass(frozen=True)
class Sample:
    """One sample (a sub-cell) with its pixel grid.

    ``x0``/``y0`` are the top-left corner of the sample in ``epsg`` (metres); every resolution shares it.
    """

    id: str
    cell: str
    a: int
    b: int
    epsg: int
    x0: float
    y0: float
    size_m: float

    def shape(self, resolution_m: float) -> tuple[int, int]:
        """Pixel shape (rows, cols) at ``resolution_m``."""
        n = self.size_m / resolution_m
        if abs(n - round(n)) > 1e-9:
            raise GridError(
                f"resolution {resolution_m} m does not divide the sample size {self.size_m} m; "
                "choose a resolution whose multiple is the patch size"
            )
        return int(round(n)), int(round(n))

    def transform(self, resolution_m: float) -> Affine:
        """Affine transform of the sample grid at ``resolution_m``."""
        return Affine(resolution_m, 0.0, self.x0, 0.0, -resolution_m, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the sample's CRS."""
        return (self.x0, self.y0 - self.size_m, self.x0 + self.size_m, self.y0)

    @property
    def crs(self) -> str:
        """The CRS as an ``EPSG:<code>`` string."""
        return f"EPSG:{self.epsg}"

    def footprint(self, densify: int = 8) -> BaseGeometry:
        """Footprint in lon/lat (EPSG:4326), edges densified; longitudes may exceed 180 near the antimeridian."""
        lon, lat = _footprint_lonlat(np.array([self.x0]), np.array([self.y0]), self.size_m, np.array([self.epsg]),
                                     densify)
        return shapely.Polygon(np.column_stack([lon[0], lat[0]]))

    @property
    def center_lonlat(self) -> tuple[float, float]:
        """Centre of the sample in lon/lat."""
        xmin, ymin, xmax, ymax = self.bounds
        lon, lat = _to_lonlat(self.epsg).transform((xmin + xmax) / 2, (ymin + ymax) / 2)
        return float((lon + 180) % 360 - 180), float(lat)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone of a point, with the Norway and Svalbard exceptions (as Major TOM)."""
    zone = math.floor((lon + 180) / 6) + 1
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat < 84.0:
        if 0.0 <= lon < 9.0:
            zone = 31
        elif 9.0 <= lon < 21.0:
            zone = 33
        elif 21.0 <= lon < 33.0:
            zone = 35
        elif 33.0 <= lon < 42.0:
            zone = 37
    zone = min(max(zone, 1), 60)
    return (32700 if lat < 0 else 32600) + zone


def utm_epsg_array(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """:func:`utm_epsg` for arrays of points (the same rule, the same floating-point operations)."""
    lon, lat = np.asarray(lon, dtype="float64"), np.asarray(lat, dtype="float64")
    zone = np.floor((lon + 180) / 6).astype("int64") + 1
    svalbard = (72.0 <= lat) & (lat < 84.0)
    zone = np.select(
        [(56.0 <= lat) & (lat < 64.0) & (3.0 <= lon) & (lon < 12.0),
         svalbard & (0.0 <= lon) & (lon < 9.0), svalbard & (9.0 <= lon) & (lon < 21.0),
         svalbard & (21.0 <= lon) & (lon < 33.0), svalbard & (33.0 <= lon) & (lon < 42.0)],
        [32, 31, 33, 35, 37], zone)
    return np.where(lat < 0, 32700, 32600) + np.clip(zone, 1, 60)


@lru_cache(maxsize=256)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


@lru_cache(maxsize=256)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


def _footprint_lonlat(x0: np.ndarray, y0: np.ndarray, size_m: float, epsg: np.ndarray,
                      densify: int) -> tuple[np.ndarray, np.ndarray]:
    """Footprint vertices of samples in lon/lat, one row per sample (``x0``/``y0``/``epsg`` are 1-D arrays).

    The sample square's edges, each cut into ``densify`` segments, clockwise from the top-left corner; a footprint
    across the antimeridian gets longitudes past 180 so it stays one polygon. :meth:`Sample.footprint` is this for
    one sample; region enumeration runs it on arrays.
    """
    xmin, ymin = x0[:, None], y0[:, None] - size_m
    xmax, ymax = x0[:, None] + size_m, y0[:, None]
    t = np.linspace(0.0, 1.0, densify + 1)[:-1][None, :]
    k = t.shape[1]
    xs = np.concatenate([xmin + (xmax - xmin) * t, np.repeat(xmax, k, 1), xmax - (xmax - xmin) * t,
                         np.repeat(xmin, k, 1)], axis=1)
    ys = np.concatenate([np.repeat(ymax, k, 1), ymax - (ymax - ymin) * t, np.repeat(ymin, k, 1),
                         ymin + (ymax - ymin) * t], axis=1)
    lon, lat = np.empty_like(xs), np.empty_like(ys)
    for code in np.unique(epsg):
        sel = epsg == code
        lo, la = _to_lonlat(int(code)).transform(xs[sel].ravel(), ys[sel].ravel())
        lon[sel], lat[sel] = np.reshape(lo, (-1, 4 * k)), np.reshape(la, (-1, 4 * k))
    wrap = lon.max(axis=1) - lon.min(axis=1) > 180  # crosses the antimeridian: keep it one polygon
    lon[wrap] = np.where(lon[wrap] < 0, lon[wrap] + 360, lon[wrap])
    return lon, lat


@lru_cache(maxsize=8)
def row_lats(cell_size_m: float) -> tuple[np.ndarray, int]:
    """Row south edges, sorted south to north, and the index of the row at the equator (as Major TOM builds them)."""
    n = math.ceil(math.pi * EARTH_RADIUS_KM / (cell_size_m / 1000.0))
    lats = np.sort(np.mod(np.linspace(-90, 90, n + 1)[:-1], 180) - 90)
    return lats, int(np.searchsorted(lats, 0))


@lru_cache(maxsize=4096)
def row_lons(cell_size_m: float, row: int) -> tuple[np.ndarray, int]:
    """Column west edges of one row, sorted west to east, and the index of the column at longitude 0."""
    lats, _ = row_lats(cell_size_m)
    circumference = 2 * math.pi * EARTH_RADIUS_KM * math.cos(lats[row] * math.pi / 180)
    n = math.ceil(circumference / (cell_size_m / 1000.0))
    lons = np.sort(np.mod(np.linspace(-180, 180, n + 1)[:-1], 360) - 180)
    return lons, int(np.flatnonzero(lons == 0)[0])


class Grid:
    """The sample grid for one :class:`GridSpec`.

    Example:
        >>> g = Grid()
        >>> g.sample_at(-48.11, -25.32).id
        '282D_485L_3_3'
    """

    def __init__(self, spec: GridSpec | None = None) -> None:
        self.spec = spec or GridSpec()
        self._lats, self._zero_row = row_lats(self.spec.cell_size_m)

    # -- cells ---------------------------------------------------------------------------------------------
    def _row_name(self, row: int) -> str:
        k = row - self._zero_row
        return f"{k}U" if k >= 0 else f"{-k}D"

    def _cell_from_index(self, row: int, col: int) -> Cell:
        lons, zero_col = row_lons(self.spec.cell_size_m, row)
        k = col - zero_col
        name = f"{self._row_name(row)}_{k}R" if k >= 0 else f"{self._row_name(row)}_{-k}L"
        lat_step = 180.0 / len(self._lats)
        return Cell(name, row, col, float(self._lats[row]), float(lons[col]), lat_step, 360.0 / len(lons))

    def cell_at(self, lon: float, lat: float) -> Cell:
        """The cell containing a point (its south-west corner is at or south-west of the point)."""
        if not (-90.0 <= lat <= 90.0) or not np.isfinite(lon):
            raise GridError(f"latitude must be within [-90, 90] and longitude finite; got lon={lon}, lat={lat}")
        lon = (lon + 180.0) % 360.0 - 180.0
        row = int(np.clip(np.searchsorted(self._lats, lat, side="right") - 1, 0, len(self._lats) - 1))
        lons, _ = row_lons(self.spec.cell_size_m, row)
        col = int(np.clip(np.searchsorted(lons, lon, side="right") - 1, 0, len(lons) - 1))
        return self._cell_from_index(row, col)

    def cell(self, name: str) -> Cell:
        """A cell by name, e.g. ``"451U_946L"``."""
        m = _CELL_RE.match(name)
        if not m:
            raise GridError(f"cell id {name!r} is not of the form <row><U|D>_<col><L|R>, e.g. '451U_946L'")
        k = int(m.group(1)) * (1 if m.group(2) == "U" else -1)
        row = self._zero_row + k
        if m.group(2) == "D" and k == 0 or not 0 <= row < len(self._lats):
            raise GridError(f"cell row {m.group(1)}{m.group(2)} does not exist: rows run 1D..{self._zero_row}D "
                            f"and 0U..{len(self._lats) - self._zero_row - 1}U")
        lons, zero_col = row_lons(self.spec.cell_size_m, row)
        c = int(m.group(3)) * (1 if m.group(4) == "R" else -1)
        col = zero_col + c
        if m.group(4) == "L" and c == 0 or not 0 <= col < len(lons):
            raise GridError(f"cell column {m.group(3)}{m.group(4)} does not exist in row {m.group(1)}{m.group(2)}: "
                            f"columns run 1L..{zero_col}L and 0R..{len(lons) - zero_col - 1}R")
        return self._cell_from_index(row, col)

    # -- samples -------------------------------------------------------------------------------------------
    def _cell_origin(self, cell: Cell) -> tuple[int, float, float]:
        """EPSG, and the top-left corner of the cell window: (X - margin, Y + d + margin)."""
        epsg = cell.epsg
        x, y = _to_utm(epsg).transform(cell.lon, cell.lat)
        return epsg, x - self.spec.margin_m, y + self.spec.cell_size_m + self.spec.margin_m

    def _origins(self, left: Any, top: Any, a: Any, b: Any) -> tuple[Any, Any]:
        """Sample origins from cell-window corners and sub-cell indices (scalars or arrays alike)."""
        spec = self.spec
        x0, y0 = left + spec.patch_m * a, top - spec.patch_m * b
        if spec.origin == "snap":  # round half to even, as Python's round(); + 0.0 turns -0.0 into 0.0
            x0, y0 = np.round(x0 / spec.snap_m) * spec.snap_m + 0.0, np.round(y0 / spec.snap_m) * spec.snap_m + 0.0
        return x0, y0

    def _make_sample(self, cell: Cell, a: int, b: int) -> Sample:
        epsg, left, top = self._cell_origin(cell)
        x0, y0 = self._origins(left, top, a, b)
        return Sample(f"{cell.name}_{a}_{b}", cell.name, a, b, epsg, float(x0), float(y0), self.spec.patch_m)

    def sample(self, sample_id: str) -> Sample:
        """A sample by id, e.g. ``"282D_485L_3_3"``."""
        m = _SAMPLE_RE.match(sample_id)
        if not m:
            raise GridError(f"sample id {sample_id!r} is not of the form <cell>_<a>_<b>, e.g. '282D_485L_3_3'")
        a, b = int(m.group(2)), int(m.group(3))
        n = self.spec.subcells
        if not (0 <= a < n and 0 <= b < n):
            raise GridError(f"sample id {sample_id!r}: sub-cell indices must be in 0..{n - 1}, got a={a}, b={b}")
        return self._make_sample(self.cell(m.group(1)), a, b)

    def samples_of_cell(self, cell: Cell | str) -> list[Sample]:
        """All sub-cells of a cell, row by row from the north-west."""
        cell = self.cell(cell) if isinstance(cell, str) else cell
        n = self.spec.subcells
        return [self._make_sample(cell, a, b) for b in range(n) for a in range(n)]

    def sample_at(self, lon: float, lat: float) -> Sample:
        """The sample of the point's cell whose footprint contains the point (else the nearest sub-cell)."""
        cell = self.cell_at(lon, lat)
        epsg, left, top = self._cell_origin(cell)
        x, y = _to_utm(epsg).transform((lon + 180.0) % 360.0 - 180.0, lat)
        n = self.spec.subcells
        a = int(np.clip(math.floor((x - left) / self.spec.patch_m), 0, n - 1))
        b = int(np.clip(math.floor((top - y) / self.spec.patch_m), 0, n - 1))
        return self._make_sample(cell, a, b)

    # -- regions -------------------------------------------------------------------------------------------
    def _candidate_cells(self, geom: BaseGeometry) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the cells whose window may touch ``geom``: part by part, rows south to north,
        columns west to east (by index); a cell near several parts is listed once per part."""
        pad_m = self.spec.margin_m + self.spec.patch_m  # windows reach past the cell's own edges
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for part in getattr(geom, "geoms", [geom]):
            w, s, e, n = part.bounds
            pad_lat = pad_m / 111_000.0
            s, n = max(s - pad_lat, -90.0), min(n + pad_lat, 90.0)
            r0 = max(int(np.searchsorted(self._lats, s, side="right")) - 1, 0)
            r1 = max(int(np.searchsorted(self._lats, n, side="right")) - 1, 0)
            for row in range(r0, r1 + 1):
                lons, _ = row_lons(self.spec.cell_size_m, row)
                coslat = max(math.cos(math.radians(min(abs(self._lats[row]), 89.9))), 1e-3)
                pad_lon = min(pad_m / (111_000.0 * coslat), 180.0)
                lo, hi = w - pad_lon, e + pad_lon
                if hi - lo >= 360:
                    c = np.arange(len(lons))
                else:
                    c0 = int(np.searchsorted(lons, ((lo + 180) % 360) - 180, side="right")) - 1
                    ncols = int(math.ceil((hi - lo) / (360.0 / len(lons)))) + 2
                    c = np.unique((c0 + np.arange(ncols)) % len(lons))
                rows.append(np.full(len(c), row, dtype=np.int32))
                cols.append(c.astype(np.int32))
        if not rows:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        return np.concatenate(rows), np.concatenate(cols)

    def _cell_table(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """West-edge longitude and the row's column index at longitude 0, per cell (arrays)."""
        lon = np.empty(len(rows))
        zero = np.empty(len(rows), dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]) if len(rows) else []
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else len(rows)
            sel = order[start:stop]
            lons, zero_col = row_lons(self.spec.cell_size_m, int(sorted_rows[start]))
            lon[sel], zero[sel] = lons[cols[sel]], zero_col
        return lon, zero

    def _cell_frames(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_cell_origin` for arrays of cells: EPSG and the top-left corner of each cell window."""
        lon, _ = self._cell_table(rows, cols)
        lat = self._lats[rows]
        epsg = utm_epsg_array(lon, lat)
        x, y = np.empty(len(rows)), np.empty(len(rows))
        for code in np.unique(epsg):
            sel = epsg == code
            xs, ys = _to_utm(int(code)).transform(lon[sel], lat[sel])
            x[sel], y[sel] = xs, ys
        return epsg, x - self.spec.margin_m, y + self.spec.cell_size_m + self.spec.margin_m

    def _envelope_deg(self) -> float:
        """A bound (degrees of latitude, with a 1.5x safety factor) on how far any point of a cell's window lies
        from the cell's south-west corner: UTM distances over-state ground distances by at most 1/0.9996."""
        spec = self.spec
        side = spec.subcells * spec.patch_m
        dx = max(spec.margin_m, side - spec.margin_m)
        dy = max(spec.cell_size_m + spec.margin_m, abs(spec.cell_size_m + spec.margin_m - side))
        return 1.5 * math.hypot(dx, dy) / 0.9996 / 110_574.0  # 110.574 km: the shortest degree of latitude

    def _keep(self, rows: np.ndarray, cols: np.ndarray, geom: BaseGeometry, shifted: BaseGeometry,
              valid: bool = True) -> np.ndarray:
        """Which sub-cells of these cells intersect the region: (cells, subcells**2) booleans.

        Cells whose whole window is certainly inside or outside the region (a lon/lat box around the window, from
        :meth:`_envelope_deg`) are decided at once; the rest (near the region's edge, the antimeridian or a pole)
        get the exact test: each sample's ``footprint(densify=2)`` intersects the region or the region shifted by
        360 degrees. ``geom`` and ``shifted`` are best prepared (:func:`shapely.prepare`); ``valid`` says whether
        the region is a valid geometry (if not, every sample gets the exact test).
        """
        n_sub = self.spec.subcells**2
        keep = np.zeros((len(rows), n_sub), dtype=bool)
        if not len(rows):
            return keep
        lon, _ = self._cell_table(rows, cols)
        lat = self._lats[rows]
        pad = self._envelope_deg()
        phi = np.minimum(np.abs(lat) + pad, 90.0)
        pad_lon = pad / np.maximum(np.cos(np.radians(phi)), 1e-9)
        sure = (phi < 85.0) & (pad_lon < 30.0) & (lon - pad_lon > -180.0) & (lon + pad_lon < 180.0)
        if not valid:
            sure[:] = False  # predicates on invalid geometry may disagree with each other: test every sample
        idx = np.flatnonzero(sure)
        if len(idx):
            w, s, e, n = lon[idx] - pad_lon[idx], lat[idx] - pad, lon[idx] + pad_lon[idx], lat[idx] + pad
            rects = _rectangles(geom)
            if rects is not None:  # boxes (a bbox region): plain comparisons
                inside, touch = np.zeros(len(idx), bool), np.zeros(len(idx), bool)
                for rw, rs, re_, rn in rects + [(rw + 360.0, rs, re_ + 360.0, rn) for rw, rs, re_, rn in rects]:
                    inside |= (w > rw) & (e < re_) & (s > rs) & (n < rn)
                    touch |= (w <= re_) & (e >= rw) & (s <= rn) & (n >= rs)
                outside = ~touch
            else:
                boxes = shapely.box(w, s, e, n)
                inside = shapely.contains_properly(geom, boxes) | shapely.contains_properly(shifted, boxes)
                outside = ~(shapely.intersects(geom, boxes) | shapely.intersects(shifted, boxes))
            keep[idx[inside]] = True
            sure[idx[~inside & ~outside]] = False
        exact = np.flatnonzero(~sure)
        if len(exact):
            keep[exact] = self._keep_exact(rows[exact], cols[exact], geom, shifted)
        return keep

    def _keep_exact(self, rows: np.ndarray, cols: np.ndarray, geom: BaseGeometry,
                    shifted: BaseGeometry) -> np.ndarray:
        """The exact test of :meth:`_keep`, vectorised over every sub-cell of these cells."""
        n = self.spec.subcells
        k = np.arange(n * n)
        epsg, left, top = self._cell_frames(rows, cols)
        x0, y0 = self._origins(left[:, None], top[:, None], (k % n)[None, :], (k // n)[None, :])
        lon, lat = _footprint_lonlat(x0.ravel(), y0.ravel(), self.spec.patch_m, np.repeat(epsg, n * n), 2)
        polygons = shapely.polygons(shapely.linearrings(np.stack([lon, lat], axis=-1)))
        hit = shapely.intersects(geom, polygons) | shapely.intersects(shifted, polygons)
        return hit.reshape(len(rows), n * n)

    def cells_in(self, region: Any) -> Iterator[Cell]:
        """Cells whose window may touch a region (bbox or geometry); a superset, filter samples exactly."""
        for row, col in zip(*self._candidate_cells(region_geometry(region)), strict=True):
            yield self._cell_from_index(int(row), int(col))

    def sample_index(self, region: Any, progress: Callable[[int, int], None] | None = None,
                     chunk_cells: int = 1 << 16) -> SampleIndex:
        """The samples whose footprint intersects a region, as index arrays: :meth:`samples_in` without making a
        :class:`Sample` per sample (a 9M-sample region takes seconds; ``len()`` is its count).

        Args:
            region: As for :meth:`samples_in`.
            progress: Called with (candidate cells done, candidate cells) after each chunk of cells.
            chunk_cells: Candidate cells per chunk (bounds the memory of the exact test).
        """
        geom = region_geometry(region)
        if geom.is_empty:
            raise GridError("the region is an empty geometry; give (west, south, east, north) or GeoJSON with "
                            "coordinates")
        shifted = shapely.affinity.translate(geom, xoff=360.0)
        valid = bool(shapely.is_valid(geom))
        # prepared copies (the caller's geometry stays as it was): predicates against many boxes and footprints
        geom, shifted = shapely.from_wkb(shapely.to_wkb(geom)), shapely.from_wkb(shapely.to_wkb(shifted))
        shapely.prepare(geom)
        shapely.prepare(shifted)
        rows, cols = self._candidate_cells(geom)
        _, first = np.unique(rows.astype(np.int64) * (1 << 32) + cols, return_index=True)
        first.sort()  # a cell listed for several parts counts once, where it came first
        rows, cols = rows[first], cols[first]
        n_sub = self.spec.subcells**2
        keep = np.zeros((len(rows), n_sub), dtype=bool)
        for start in range(0, len(rows), chunk_cells):
            stop = min(start + chunk_cells, len(rows))
            keep[start:stop] = self._keep(rows[start:stop], cols[start:stop], geom, shifted, valid)
            if progress:
                progress(stop, len(rows))
        used = keep.any(axis=1)
        flat = np.flatnonzero(keep[used])  # cell by cell, sub-cells row by row from the north-west
        return SampleIndex(self, rows[used], cols[used], (flat // n_sub).astype(np.int32),
                           (flat % n_sub).astype(np.int16))

    def samples_in(self, region: Any) -> list[Sample]:
        """Samples whose footprint intersects a region, in a stable order: cell by cell (region part by part, rows
        south to north, columns west to east), each cell's sub-cells row by row from the north-west.

        Args:
            region: ``(west, south, east, north)`` in degrees (``west > east`` crosses the antimeridian), a
                GeoJSON geometry/Feature/FeatureCollection mapping, or a shapely geometry in lon/lat.

        For large regions prefer :meth:`sample_index` (counts and ids without a Python object per sample).
        """
        return list(self.sample_index(region))

    def describe(self) -> dict[str, Any]:
        """Plain-data description of the grid, stored in the cube's attrs."""
        return {
            "name": "Major TOM cells / TerraMesh sub-cells",
            "earth_radius_km": EARTH_RADIUS_KM,
            "cell_size_m": self.spec.cell_size_m,
            "margin_m": self.spec.margin_m,
            "patch_px": self.spec.patch_px,
            "pixel_size_m": self.spec.pixel_size_m,
            "subcells": self.spec.subcells,
            "origin": self.spec.origin,
            "snap_m": self.spec.snap_m,
            "rows": len(self._lats),
            "crs_rule": "UTM zone of the cell's south-west corner (Norway/Svalbard exceptions)",
            "sample_origin": "x0 = X - margin + patch*a, y0 = Y + d + margin - patch*b; (X, Y) = projected SW corner",
        }


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while making many small objects that form no cycles (2x faster)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, eq=False)
class SampleIndex(Sequence[Sample]):
    """The samples of a region as index arrays (from :meth:`Grid.sample_index`): a read-only sequence in cube order.

    ``len()`` is free; ``index[i]`` is a :class:`Sample` and ``index[i:j]`` a list of them (a build block), made on
    demand; iterating makes them chunk by chunk; :meth:`ids` gives every id without making Sample objects.

    Attributes:
        grid: The grid the samples belong to.
        cell_rows: Row index (into the grid's rows, south to north) of each cell that has samples here, in order.
        cell_cols: Column index of those cells in their row (west to east).
        cell: Per sample, the index of its cell in ``cell_rows``/``cell_cols``.
        sub: Per sample, its sub-cell ``b * subcells + a`` (``a`` from the west, ``b`` from the north).
    """

    grid: Grid
    cell_rows: np.ndarray
    cell_cols: np.ndarray
    cell: np.ndarray
    sub: np.ndarray

    def __len__(self) -> int:
        return len(self.cell)

    def __repr__(self) -> str:
        return f"SampleIndex({len(self)} samples in {len(self.cell_rows)} cells)"

    @overload
    def __getitem__(self, key: int) -> Sample: ...

    @overload
    def __getitem__(self, key: slice) -> list[Sample]: ...

    def __getitem__(self, key: int | slice) -> Sample | list[Sample]:
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        i = int(key)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {key} out of range for {len(self)} samples")
        return self.take(np.array([i]))[0]

    def __iter__(self) -> Iterator[Sample]:
        for start in range(0, len(self), 1 << 16):
            yield from self.take(np.arange(start, min(start + (1 << 16), len(self))))

    @cached_property
    def _frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.grid._cell_frames(self.cell_rows, self.cell_cols)

    @cached_property
    def cell_names(self) -> list[str]:
        """Major TOM names of ``cell_rows``/``cell_cols``, e.g. ``451U_946L``."""
        _, zero_col = self.grid._cell_table(self.cell_rows, self.cell_cols)
        rows = (self.cell_rows - self.grid._zero_row).tolist()
        cols = (self.cell_cols - zero_col).tolist()
        return [(f"{r}U" if r >= 0 else f"{-r}D") + (f"_{c}R" if c >= 0 else f"_{-c}L")
                for r, c in zip(rows, cols, strict=True)]

    def ids(self) -> list[str]:
        """Every sample id, in order (no Sample objects made)."""
        n = self.grid.spec.subcells
        suffix = [f"_{k % n}_{k // n}" for k in range(n * n)]
        names = self.cell_names
        with _no_gc():
            return [names[c] + suffix[k] for c, k in zip(self.cell.tolist(), self.sub.tolist(), strict=True)]

    def take(self, indices: np.ndarray) -> list[Sample]:
        """The samples at these positions, as :class:`Sample` objects."""
        indices = np.asarray(indices, dtype=np.int64)
        cell = self.cell[indices]
        n = self.grid.spec.subcells
        a, b = np.divmod(self.sub[indices].astype(np.int64), n)[::-1]
        epsg, left, top = self._frames
        x0, y0 = self.grid._origins(left[cell], top[cell], a, b)
        names, size = self.cell_names, self.grid.spec.patch_m
        with _no_gc():
            return [Sample(f"{names[c]}_{ai}_{bi}", names[c], ai, bi, e, x, y, size) for c, ai, bi, e, x, y in
                    zip(cell.tolist(), a.tolist(), b.tolist(), epsg[cell].tolist(), x0.tolist(), y0.tolist(),
                        strict=True)]


def _rectangles(geom: BaseGeometry) -> list[tuple[float, float, float, float]] | None:
    """The parts of ``geom`` as (west, south, east, north) if every part is an axis-aligned rectangle, else None."""
    parts = list(getattr(geom, "geoms", [geom]))
    if not parts or any(p.geom_type != "Polygon" or p.is_empty for p in parts):
        return None
    boxes = [box(*p.bounds) for p in parts]
    return [p.bounds for p in boxes] if all(shapely.equals(p, b) for p, b in zip(parts, boxes, strict=True)) else None


def region_geometry(region: Any) -> BaseGeometry:
    """Turn a bbox tuple, GeoJSON mapping or shapely geometry (lon/lat) into one shapely geometry."""
    if isinstance(region, BaseGeometry):
        return region
    if isinstance(region, dict):
        kind = region.get("type")
        if kind == "FeatureCollection":
            return shapely.union_all([shape(f["geometry"]) for f in region.get("features", [])])
        if kind == "Feature":
            return shape(region["geometry"])
        try:
            return shape(region)
        except Exception as exc:  # shapely raises several types for bad GeoJSON
            raise GridError(f"region is not valid GeoJSON: {exc}") from exc
    try:
        w, s, e, n = (float(v) for v in region)
    except (TypeError, ValueError) as exc:
        raise GridError(f"region must be (west, south, east, north) or GeoJSON; got {region!r}") from exc
    if not (-90 <= s <= n <= 90):
        raise GridError(f"region latitudes must satisfy -90 <= south <= north <= 90; got south={s}, north={n}")
    if w > e:  # crosses the antimeridian
        return shapely.MultiPolygon([box(w, s, 180.0, n), box(-180.0, s, e, n)])
    return box(w, s, e, n)
