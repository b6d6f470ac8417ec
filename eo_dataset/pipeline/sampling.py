"""Drawing the corpus's sample list: Major TOM samples over land, stratified, reproducible.

``eo-dataset sample --n 9000000 --seed 0 --out corpus.parquet`` runs :func:`draw_samples`:

1. **Candidates.** Every sample of the grid (all sub-cells of all Major TOM cells) whose centre lies between
   latitudes -56 and 84 (the land Sentinel-2, the anchor modality, acquires) and over land according to an offline
   1 km land mask (the ``global-land-mask`` package: the GLOBE dataset's land/sea mask). The exact sample centre
   (projected from the sample's UTM grid, as :attr:`~eo_dataset.spec.grid.Sample.center_lonlat`) is tested, so
   "over land" means: the centre pixel of the sample is land in that mask.
2. **Strata.** Latitude band of the sample centre x a land-cover proxy (:data:`LAT_BANDS`, :data:`SURFACES`):
   the bands follow climate zones (tropics, subtropics, temperate, boreal, arctic; per hemisphere), which decide
   vegetation, snow and cloud regimes and so what a model must see; the proxy is whether the sample's cell is
   ``inland`` (all its sub-cell centres on land) or ``coast`` (some over the sea; the mask is a land/sea mask, so
   lakes count as land): coasts and small islands are ~2% of land samples but a distinct surface (water, shore,
   wetlands, ports) that a purely area-proportional draw leaves to chance.
3. **Allocation.** By default proportional: each stratum gets ``n`` times its share of the candidates (largest
   remainders settle the rounding), so the corpus has the land's own mix but every stratum's count is fixed,
   not left to sampling noise. ``per_stratum`` instead asks the same count of every stratum (all of a stratum's
   candidates if it has fewer): a balanced corpus.
4. **Draw.** Within a stratum, uniformly without replacement by :class:`numpy.random.Generator` seeded with
   ``seed``: the same seed, grid, region and exclusions give the same ids. The list is in grid order (rows south to
   north, columns west to east, sub-cells from the north-west), so consecutive samples -- a build block -- are near
   each other.

Everything is vectorised over cells with numpy and pyproj (one transform per UTM zone and chunk of rows).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from pyproj import Transformer

from eo_dataset.errors import GridError
from eo_dataset.spec.grid import GridSpec, row_lats, row_lons, utm_epsg_array

#: Latitude bands (name, south, north) in degrees: climate zones per hemisphere, within Sentinel-2's acquisitions.
LAT_BANDS: tuple[tuple[str, float, float], ...] = (
    ("s-temperate", -56.0, -35.0),
    ("s-subtropics", -35.0, -23.44),
    ("s-tropics", -23.44, 0.0),
    ("n-tropics", 0.0, 23.44),
    ("n-subtropics", 23.44, 35.0),
    ("n-temperate", 35.0, 55.0),
    ("boreal", 55.0, 66.56),
    ("arctic", 66.56, 84.0),
)
#: The land-cover proxy: ``coast`` when some sub-cell centre of the sample's cell is over the sea, else ``inland``.
SURFACES: tuple[str, ...] = ("coast", "inland")
#: Every stratum name, in the order strata are drawn: ``<band>/<surface>``.
STRATA: tuple[str, ...] = tuple(f"{b}/{s}" for b, _, _ in LAT_BANDS for s in SURFACES)
MASK_NAME = "global-land-mask (GLOBE 1 km land/sea mask)"

_ID_RE = re.compile(r"^(\d+)([UD])_(\d+)([LR])_(\d+)_(\d+)$")


@dataclass
class Drawn:
    """A drawn sample list as arrays, in grid order (see :func:`draw_samples`).

    Per sample: ``row``/``col`` index the grid's rows (south to north) and the row's columns (west to east);
    ``a``/``b`` the sub-cell (from the west, from the north); ``epsg``, ``x0``, ``y0`` its pixel grid's CRS and
    top-left corner; ``lon``/``lat`` its centre; ``stratum`` an index into :data:`STRATA`; ``land`` the share of
    its cell's sub-cell centres over land.
    """

    spec: GridSpec
    row: np.ndarray
    col: np.ndarray
    a: np.ndarray
    b: np.ndarray
    epsg: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    stratum: np.ndarray
    land: np.ndarray
    candidates: dict[str, int] = field(default_factory=dict)  # per stratum: samples over land it was drawn from
    seed: int = 0

    def __len__(self) -> int:
        return len(self.row)

    def counts(self) -> dict[str, int]:
        """Samples drawn per stratum."""
        c = np.bincount(self.stratum, minlength=len(STRATA))
        return {name: int(k) for name, k in zip(STRATA, c, strict=True)}

    def cell_names(self) -> list[str]:
        """The Major TOM cell name of every sample, e.g. ``451U_946L``."""
        return _cell_names(self.spec, self.row, self.col)

    def ids(self) -> list[str]:
        """Every sample id, ``<cell>_<a>_<b>``."""
        names = self.cell_names()
        return [f"{c}_{a}_{b}" for c, a, b in zip(names, self.a.tolist(), self.b.tolist(), strict=True)]


def _cell_names(spec: GridSpec, row: np.ndarray, col: np.ndarray) -> list[str]:
    """Cell names of (row, col) index pairs, made once per distinct cell."""
    key = row.astype(np.int64) * (1 << 20) + col
    uniq, inverse = np.unique(key, return_inverse=True)
    _, zero_row = row_lats(spec.cell_size_m)
    names = []
    for k in uniq.tolist():
        r, c = divmod(k, 1 << 20)
        _, zero_col = row_lons(spec.cell_size_m, r)
        kr, kc = r - zero_row, c - zero_col
        names.append((f"{kr}U" if kr >= 0 else f"{-kr}D") + (f"_{kc}R" if kc >= 0 else f"_{-kc}L"))
    return [names[i] for i in inverse.tolist()]


def sample_keys(spec: GridSpec, ids: Iterable[str]) -> np.ndarray:
    """Integer keys ``(row * 2**20 + col) * subcells**2 + b * subcells + a`` of sample ids (to exclude them).

    Raises:
        GridError: an id is not of the form ``<cell>_<a>_<b>`` or names no cell of the grid.
    """
    _, zero_row = row_lats(spec.cell_size_m)
    n_rows = len(row_lats(spec.cell_size_m)[0])
    out = []
    for sid in ids:
        m = _ID_RE.match(str(sid).strip())
        if not m:
            raise GridError(f"sample id {sid!r} is not of the form <cell>_<a>_<b>, e.g. '282D_485L_3_3'")
        r = zero_row + int(m.group(1)) * (1 if m.group(2) == "U" else -1)
        if not 0 <= r < n_rows:
            raise GridError(f"sample id {sid!r}: row {m.group(1)}{m.group(2)} is not in the grid")
        _, zero_col = row_lons(spec.cell_size_m, r)
        c = zero_col + int(m.group(3)) * (1 if m.group(4) == "R" else -1)
        a, b = int(m.group(5)), int(m.group(6))
        out.append((r * (1 << 20) + c) * spec.subcells**2 + b * spec.subcells + a)
    return np.asarray(out, dtype=np.int64)


@lru_cache(maxsize=512)
def _transformer(src: int, dst: int) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def _land_mask() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``is_land(lat, lon)`` of the offline land mask (loading it takes ~10 s and ~1 GB)."""
    try:
        from global_land_mask import globe
    except ImportError as exc:  # a dependency, but say how to get it if someone removed it
        raise GridError(f"the land mask package is missing ({exc}); install it with pip install global-land-mask") \
            from None
    return globe.is_land


def _band_of(lat: np.ndarray) -> np.ndarray:
    """Index into :data:`LAT_BANDS` of each latitude (-1: outside every band)."""
    edges = np.array([s for _, s, _ in LAT_BANDS] + [LAT_BANDS[-1][2]])
    band = np.searchsorted(edges, lat, side="right") - 1
    return np.where((lat >= edges[0]) & (lat < edges[-1]), band, -1)


def _in_region(lon: np.ndarray, lat: np.ndarray, region: tuple[float, float, float, float] | None) -> np.ndarray:
    if region is None:
        return np.ones(len(lon), dtype=bool)
    w, s, e, n = region
    in_lon = (lon >= w) & (lon <= e) if w <= e else (lon >= w) | (lon <= e)
    return in_lon & (lat >= s) & (lat <= n)


def _rows_cells(spec: GridSpec, rows: range) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every cell of these rows: row and column indices, west edge and south edge (degrees)."""
    lats, _ = row_lats(spec.cell_size_m)
    rr, cc, lon, lat = [], [], [], []
    for r in rows:
        lons, _ = row_lons(spec.cell_size_m, r)
        rr.append(np.full(len(lons), r, np.int32))
        cc.append(np.arange(len(lons), dtype=np.int32))
        lon.append(lons)
        lat.append(np.full(len(lons), lats[r]))
    return np.concatenate(rr), np.concatenate(cc), np.concatenate(lon), np.concatenate(lat)


def _cell_frames(spec: GridSpec, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPSG and the top-left corner of the cell window of distinct cells (as the grid places them)."""
    lats, _ = row_lats(spec.cell_size_m)
    lon_w = np.empty(len(row))
    order = np.argsort(row, kind="stable")
    sr = row[order]
    starts = np.flatnonzero(np.r_[True, sr[1:] != sr[:-1]]) if len(row) else np.array([], int)
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else len(row)
        sel = order[start:stop]
        lon_w[sel] = row_lons(spec.cell_size_m, int(sr[start]))[0][col[sel]]
    lat_s = lats[row]
    epsg = utm_epsg_array(lon_w, lat_s).astype(np.int32)
    left, top = np.empty(len(row)), np.empty(len(row))
    for code in np.unique(epsg).tolist():
        sel = epsg == code
        x, y = _transformer(4326, code).transform(lon_w[sel], lat_s[sel])
        left[sel] = np.asarray(x) - spec.margin_m
        top[sel] = np.asarray(y) + spec.cell_size_m + spec.margin_m
    return epsg, left, top


def subcell_frames(spec: GridSpec, row: np.ndarray, col: np.ndarray, a: np.ndarray, b: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EPSG, origin (``x0``, ``y0``) and centre (lon, lat) of samples given by cell indices and sub-cell indices,
    exactly as :class:`~eo_dataset.spec.grid.Grid` places them (same projection, same arithmetic)."""
    key = row.astype(np.int64) * (1 << 20) + col
    uniq, inverse = np.unique(key, return_inverse=True)
    epsg, left, top = _cell_frames(spec, (uniq >> 20).astype(np.int64), (uniq & ((1 << 20) - 1)).astype(np.int64))
    epsg, left, top = epsg[inverse], left[inverse], top[inverse]
    x0, y0 = left + spec.patch_m * a, top - spec.patch_m * b
    if spec.origin == "snap":  # round half to even, as the grid does; + 0.0 turns -0.0 into 0.0
        x0 = np.round(x0 / spec.snap_m) * spec.snap_m + 0.0
        y0 = np.round(y0 / spec.snap_m) * spec.snap_m + 0.0
    lon, lat = np.empty(len(row)), np.empty(len(row))
    for code in np.unique(epsg).tolist():
        sel = epsg == code
        clon, clat = _transformer(code, 4326).transform(x0[sel] + spec.patch_m / 2, y0[sel] - spec.patch_m / 2)
        lon[sel], lat[sel] = (np.asarray(clon) + 180) % 360 - 180, clat
    return epsg, x0, y0, lon, lat


def draw_samples(n: int | None = None, seed: int = 0, *, spec: GridSpec | None = None,
                 region: tuple[float, float, float, float] | None = None, per_stratum: int | None = None,
                 exclude: Iterable[str] = (), rows_per_chunk: int = 48,
                 progress: Callable[[int, int], None] | None = None,
                 is_land: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Drawn:
    """Draw ``n`` samples over land, stratified by latitude band and surface (see the module's description).

    Args:
        n: Samples to draw in all, allocated to strata in proportion to their candidates (or ``per_stratum``).
        seed: Seed of the draw: the same seed and arguments give the same samples.
        spec: Grid geometry (default: TerraMesh's, as the bundled recipes).
        region: Only samples whose centre lies in ``(west, south, east, north)`` degrees (``west > east`` crosses
            the antimeridian).
        per_stratum: Instead of ``n``: this many samples from every stratum (all of a smaller stratum's).
        exclude: Sample ids never to draw (e.g. those already in a cube).
        rows_per_chunk: Grid rows handled at once (bounds memory).
        progress: Called with (rows done, rows) as the candidates are found.
        is_land: ``is_land(lat, lon) -> bool array``; default: the offline 1 km land mask.

    Raises:
        GridError: neither or both of ``n`` and ``per_stratum``, a count <= 0, or more samples asked than there are
            candidates.
    """
    if (n is None) == (per_stratum is None):
        raise GridError("give either n (samples in all) or per_stratum (samples per stratum), not both or neither")
    count = n if n is not None else per_stratum
    if count is None or count <= 0:
        raise GridError(f"the number of samples must be a positive integer; got {count}; e.g. --n 9000000")
    spec = spec or GridSpec()
    is_land = is_land or _land_mask()
    lats, _ = row_lats(spec.cell_size_m)
    lo, hi = LAT_BANDS[0][1], LAT_BANDS[-1][2]
    margin = 2 * (spec.cell_size_m + spec.margin_m) / 110_574.0  # a cell's samples may lie a little north of it
    s_lim, n_lim = (max(lo, region[1]), min(hi, region[3])) if region else (lo, hi)
    first = max(int(np.searchsorted(lats, s_lim - margin)) - 1, 0)
    last = min(int(np.searchsorted(lats, n_lim + margin)) + 1, len(lats))
    excluded = np.unique(sample_keys(spec, exclude))
    k = spec.subcells
    sub_a, sub_b = np.tile(np.arange(k), k), np.repeat(np.arange(k), k)  # b * k + a order: from the north-west
    parts: dict[str, list[np.ndarray]] = {x: [] for x in ("row", "col", "sub", "stratum", "land")}
    for start in range(first, last, rows_per_chunk):
        stop = min(start + rows_per_chunk, last)
        row, col, _, _ = _rows_cells(spec, range(start, stop))
        rr, cc = np.repeat(row, k * k), np.repeat(col, k * k)
        aa, bb = np.tile(sub_a, len(row)), np.tile(sub_b, len(row))
        _, _, _, lon, lat = subcell_frames(spec, rr, cc, aa, bb)
        land = np.zeros(len(lat), dtype=bool)
        inside = (lat >= lo) & (lat < hi)
        land[inside] = is_land(lat[inside], lon[inside])
        share = land.reshape(-1, k * k).mean(axis=1)
        band = _band_of(lat)
        surface = np.repeat(share < 1.0, k * k)  # True: coast (index 0), False: inland (index 1)
        keep = land & (band >= 0) & _in_region(lon, lat, region)
        sub = (bb * k + aa).astype(np.int8)
        if len(excluded):
            keys = (rr.astype(np.int64) * (1 << 20) + cc) * k * k + sub
            keep &= ~np.isin(keys, excluded)
        parts["row"].append(rr[keep])
        parts["col"].append(cc[keep])
        parts["sub"].append(sub[keep])
        parts["stratum"].append((band * len(SURFACES) + np.where(surface, 0, 1))[keep].astype(np.int8))
        parts["land"].append(np.repeat(share, k * k)[keep].astype(np.float32))
        if progress:
            progress(stop - first, last - first)
    cand = {key: np.concatenate(v) if v else np.array([]) for key, v in parts.items()}
    sizes = np.bincount(cand["stratum"].astype(np.int64), minlength=len(STRATA))
    total = int(sizes.sum())
    if per_stratum is not None:
        want = np.minimum(sizes, per_stratum)
    else:
        if count > total:
            raise GridError(f"asked for {count:,} samples but only {total:,} samples lie over land in the region "
                            "(less those excluded); ask for fewer or widen the region")
        want = _allocate(count, sizes)
    rng = np.random.default_rng(seed)
    chosen = []
    for s in range(len(STRATA)):
        members = np.flatnonzero(cand["stratum"] == s)
        if want[s]:
            chosen.append(members[np.sort(rng.choice(len(members), size=int(want[s]), replace=False))])
    pick = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)
    row, col, sub = cand["row"][pick], cand["col"][pick], cand["sub"][pick].astype(np.int64)
    a, b = sub % k, sub // k
    epsg, x0, y0, lon, lat = subcell_frames(spec, row, col, a, b)
    return Drawn(spec, row, col, a.astype(np.int8), b.astype(np.int8), epsg, x0, y0, lon, lat,
                 cand["stratum"][pick], cand["land"][pick],
                 {name: int(c) for name, c in zip(STRATA, sizes, strict=True)}, seed)


def _allocate(n: int, sizes: np.ndarray) -> np.ndarray:
    """``n`` split over strata in proportion to ``sizes`` (largest remainders; ties to the earlier stratum)."""
    exact = n * sizes / sizes.sum()
    want = np.floor(exact).astype(np.int64)
    rest = n - int(want.sum())
    order = np.argsort(-(exact - want), kind="stable")
    want[order[:rest]] += 1
    return np.minimum(want, sizes)


def describe(drawn: Drawn, **extra: Any) -> dict[str, Any]:
    """What a sample list was drawn from (stored in its Parquet metadata)."""
    return {"grid": {k: getattr(drawn.spec, k) for k in ("cell_size_m", "margin_m", "patch_px", "pixel_size_m",
                                                         "subcells", "origin", "snap_m")},
            "seed": drawn.seed, "n": len(drawn), "strata": list(STRATA),
            "lat_bands": [list(b) for b in LAT_BANDS], "surfaces": list(SURFACES), "land_mask": MASK_NAME,
            "counts": drawn.counts(), "candidates": drawn.candidates, "over_land": "the sample centre",
            "allocation": "proportional allocation (largest remainders), uniform without replacement within a stratum"
            if extra.get("per_stratum") is None else "the same count per stratum", **extra}

