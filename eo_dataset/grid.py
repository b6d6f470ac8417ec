"""The global sample grid: Major TOM cells and TerraMesh sub-cells.

A *cell* follows ESA's Major TOM grid: 2004 rows of equal latitude spacing (for d = 10 km), each row cut into
``ceil(2*pi*R*cos(lat) / d)`` columns; a cell is named by its row (``kU`` north / ``kD`` south of the equator) and
column (``cR`` east / ``cL`` west of longitude 0) and located by its south-west corner.

A *sample* is a sub-cell ``<cell>_<a>_<b>`` (``a`` column from the west, ``b`` row from the north) of
``patch_px`` pixels at ``pixel_size_m``, in the UTM zone of the cell's south-west corner. With the defaults this
reproduces TerraMesh's 264 px patches and ids to the millimetre.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

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
        xmin, ymin, xmax, ymax = self.bounds
        t = np.linspace(0.0, 1.0, densify + 1)[:-1]
        xs = np.concatenate([xmin + (xmax - xmin) * t, np.full_like(t, xmax), xmax - (xmax - xmin) * t,
                             np.full_like(t, xmin)])
        ys = np.concatenate([np.full_like(t, ymax), ymax - (ymax - ymin) * t, np.full_like(t, ymin),
                             ymin + (ymax - ymin) * t])
        lon, lat = _to_lonlat(self.epsg).transform(xs, ys)
        lon = np.asarray(lon)
        if lon.max() - lon.min() > 180:  # crosses the antimeridian: keep it one polygon
            lon = np.where(lon < 0, lon + 360, lon)
        return shapely.Polygon(np.column_stack([lon, lat]))

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


@lru_cache(maxsize=256)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


@lru_cache(maxsize=256)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


@lru_cache(maxsize=8)
def _row_lats(cell_size_m: float) -> tuple[np.ndarray, int]:
    """Row south edges, sorted south to north, and the index of the row at the equator (as Major TOM builds them)."""
    n = math.ceil(math.pi * EARTH_RADIUS_KM / (cell_size_m / 1000.0))
    lats = np.sort(np.mod(np.linspace(-90, 90, n + 1)[:-1], 180) - 90)
    return lats, int(np.searchsorted(lats, 0))


@lru_cache(maxsize=4096)
def _row_lons(cell_size_m: float, row: int) -> tuple[np.ndarray, int]:
    """Column west edges of one row, sorted west to east, and the index of the column at longitude 0."""
    lats, _ = _row_lats(cell_size_m)
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
        self._lats, self._zero_row = _row_lats(self.spec.cell_size_m)

    # -- cells ---------------------------------------------------------------------------------------------
    def _row_name(self, row: int) -> str:
        k = row - self._zero_row
        return f"{k}U" if k >= 0 else f"{-k}D"

    def _cell_from_index(self, row: int, col: int) -> Cell:
        lons, zero_col = _row_lons(self.spec.cell_size_m, row)
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
        lons, _ = _row_lons(self.spec.cell_size_m, row)
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
        lons, zero_col = _row_lons(self.spec.cell_size_m, row)
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

    def _make_sample(self, cell: Cell, a: int, b: int) -> Sample:
        spec = self.spec
        epsg, left, top = self._cell_origin(cell)
        x0, y0 = left + spec.patch_m * a, top - spec.patch_m * b
        if spec.origin == "snap":
            x0, y0 = round(x0 / spec.snap_m) * spec.snap_m, round(y0 / spec.snap_m) * spec.snap_m
        return Sample(f"{cell.name}_{a}_{b}", cell.name, a, b, epsg, float(x0), float(y0), spec.patch_m)

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

    def cells_in(self, region: Any) -> Iterator[Cell]:
        """Cells whose window may touch a region (bbox or geometry); a superset, filter samples exactly."""
        geom = region_geometry(region)
        pad_m = self.spec.margin_m + self.spec.patch_m  # windows reach past the cell's own edges
        for part in getattr(geom, "geoms", [geom]):
            w, s, e, n = part.bounds
            pad_lat = pad_m / 111_000.0
            s, n = max(s - pad_lat, -90.0), min(n + pad_lat, 90.0)
            r0 = max(int(np.searchsorted(self._lats, s, side="right")) - 1, 0)
            r1 = max(int(np.searchsorted(self._lats, n, side="right")) - 1, 0)
            for row in range(r0, r1 + 1):
                lons, _ = _row_lons(self.spec.cell_size_m, row)
                coslat = max(math.cos(math.radians(min(abs(self._lats[row]), 89.9))), 1e-3)
                pad_lon = min(pad_m / (111_000.0 * coslat), 180.0)
                lo, hi = w - pad_lon, e + pad_lon
                cols: Iterable[int]
                if hi - lo >= 360:
                    cols = range(len(lons))
                else:
                    c0 = int(np.searchsorted(lons, ((lo + 180) % 360) - 180, side="right")) - 1
                    ncols = int(math.ceil((hi - lo) / (360.0 / len(lons)))) + 2
                    cols = sorted({(c0 + i) % len(lons) for i in range(ncols)})
                for col in cols:
                    yield self._cell_from_index(row, col)

    def samples_in(self, region: Any) -> list[Sample]:
        """Samples whose footprint intersects a region, in a stable order (cell by cell, north-west first).

        Args:
            region: ``(west, south, east, north)`` in degrees (``west > east`` crosses the antimeridian), a
                GeoJSON geometry/Feature/FeatureCollection mapping, or a shapely geometry in lon/lat.
        """
        geom = region_geometry(region)
        shifted = shapely.affinity.translate(geom, xoff=360.0)
        seen: set[str] = set()
        out: list[Sample] = []
        for cell in self.cells_in(geom):
            if cell.name in seen:
                continue
            seen.add(cell.name)
            for s in self.samples_of_cell(cell):
                fp = s.footprint(densify=2)
                if fp.intersects(geom) or fp.intersects(shifted):
                    out.append(s)
        return out

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
