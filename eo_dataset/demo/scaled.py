"""The scaled demo world: ``N`` seeded Major TOM cells over several UTM zones and latitudes (``eo-dataset demo
--cells N --seed S``), rendered as the same products as the two-cell demo world and built by the same recipe.

Each cell gets its own landscape (:mod:`eo_dataset.demo.landscape`) and is rendered independently (in a process
pool), so the world's bytes depend only on ``N`` and the seed, never on the number of workers. Every cell has gaps on
purpose (clouds, a swath edge, missing tiles, S1 and Landsat passes that may be too far from the S2 date, an OSM
extract that stops short of the northernmost cell) so that availability masks have something to say.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import mapping, shape

from eo_dataset.demo.landscape import BUILT, CROPS, TREES, WATER, Fields, Landscape
from eo_dataset.demo.world import LANDSAT, S1_OF_CLASS, S2_BANDS, SCL_OF_CLASS, SPECTRA, RasterGrid, utm_grid
from eo_dataset.errors import OutputError
from eo_dataset.spec.grid import Grid

GENERATOR_VERSION = 1
ZONE_BANDS = tuple(range(-12, 42, 6))  # western edges of the UTM zones cells are spread over (zones 29..37)
LAT_RANGE = (-42.0, 62.0)
WINDOW_START, WINDOW_END = dt.date(2023, 6, 1), dt.date(2023, 8, 31)  # the demo recipe's time window
MIN_SEPARATION_KM = 40.0  # cells never share a source item
GAP_PROBABILITY = 0.35  # chance that a cell's product misses a corner (cell 0: always)


@dataclass(frozen=True)
class WorldSpec:
    """What identifies a scaled world: its generator version, number of cells and seed."""

    cells: int
    seed: int
    version: int = GENERATOR_VERSION

    def stamp(self) -> dict[str, Any]:
        """The ``world.json`` / catalog record of this world."""
        return {"generator": "eo_dataset.demo.scaled", "version": self.version, "cells": self.cells,
                "seed": self.seed}


def pick_cells(n: int, seed: int, grid: Grid | None = None) -> list[str]:
    """``n`` Major TOM cell ids, round-robin over UTM zones 29-37, latitudes -42..62, >= 40 km apart.

    The first ``k`` cells of a world are the same for any ``n >= k`` (with the same seed).
    """
    grid = grid or Grid()
    rng = np.random.default_rng([seed, 0x5CA1ED])
    names: list[str] = []
    centres: list[tuple[float, float]] = []
    for i in range(n):
        west = ZONE_BANDS[i % len(ZONE_BANDS)]
        for _ in range(10_000):
            lon, lat = float(rng.uniform(west + 0.1, west + 5.8)), float(rng.uniform(*LAT_RANGE))
            cell = grid.cell_at(lon, lat)
            lon_c, lat_c = grid.samples_of_cell(cell)[5].center_lonlat
            if all(math.hypot((lon_c - a) * 111.3 * math.cos(math.radians(lat_c)), (lat_c - b) * 110.6)
                   > MIN_SEPARATION_KM for a, b in centres):
                names.append(cell.name)
                centres.append((lon_c, lat_c))
                break
        else:  # pragma: no cover - only for absurd n
            raise OutputError(f"cannot place {n} cells >= {MIN_SEPARATION_KM:g} km apart; ask for fewer cells")
    return names


# -- writing ----------------------------------------------------------------------------------------------------
def _cog(path: Path, grid: RasterGrid, arrays: list[np.ndarray], nodata: float | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = arrays[0].shape
    profile = {"driver": "COG", "width": w, "height": h, "count": len(arrays), "dtype": arrays[0].dtype.name,
               "crs": f"EPSG:{grid.epsg}", "transform": grid.transform @ Affine.scale(grid.width / w),
               "nodata": nodata, "compress": "deflate", "level": 1, "blocksize": 256, "overviews": "none"}
    with rasterio.open(path, "w", **profile) as dst:
        for i, a in enumerate(arrays, start=1):
            dst.write(a, i)
    return path


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _when(day: dt.date, hour: int = 10) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, 20, tzinfo=dt.UTC)


class _Cell:
    """Renders one cell's products under ``root``; collects their STAC items and OSM ways."""

    def __init__(self, root: Path, index: int, name: str, seed: int) -> None:
        self.root, self.index, self.name = root, index, name
        self.rngs = {k: np.random.default_rng([seed, index, j]) for j, k in enumerate(
            ("land", "plan", "s2", "s1", "landsat", "osm"))}
        grid = Grid()
        self.samples = grid.samples_of_cell(name)
        self.epsg = self.samples[0].epsg
        w, s, e, n = shapely.union_all([sm.footprint() for sm in self.samples]).bounds
        pad = 0.006
        self.bbox = (w - pad, s - pad, e + pad, n + pad)
        lon0, lat0 = (w + e) / 2, (s + n) / 2
        self.land = Landscape.draw(self.rngs["land"], lon0, lat0)
        a, c = self.rngs["plan"].choice([0, 3], 2)  # the corner sub-cell this cell's products may miss
        self.corner = next(s for s in self.samples if s.id.endswith(f"_{a}_{c}")).footprint().buffer(0.004)
        self.items: list[dict] = []
        self.ways: list[tuple[list[tuple[float, float]], dict[str, str], bool]] = []
        self.utm10 = utm_grid(self.epsg, *self.bbox, 10)
        self._lonlat10 = self.utm10.lonlat()
        self._fields10 = self.land.fields(*self._lonlat10)
        self._cls10 = self.land.land_cover(self._fields10)

    # what each product misses: a corner of the cell (a sub-cell and its neighbourhood), or nothing
    def gap(self, force: bool) -> shapely.Geometry | None:
        rng = self.rngs["plan"]
        if not (rng.random() < GAP_PROBABILITY or force):
            return None
        return self.corner

    def path(self, collection: str, item_id: str, asset: str) -> Path:
        return self.root / collection / item_id / f"{asset}.tif"

    def add(self, item_id: str, collection: str, grid: RasterGrid, missing: shapely.Geometry | None,
            when: dt.datetime, props: dict, assets: dict[str, Path]) -> None:
        geom = grid.footprint()
        if missing is not None:
            geom = shapely.difference(geom, missing)
        props = {"proj:code": f"EPSG:{grid.epsg}", "proj:shape": [grid.height, grid.width],
                 "proj:transform": list(grid.transform)[:6], "demo:cell": self.name, **props}
        item = pystac.Item(item_id, mapping(geom), list(geom.bounds), when, props, collection=collection,
                           stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                                            "https://stac-extensions.github.io/eo/v1.1.0/schema.json"])
        for key, path in assets.items():
            item.add_asset(key, pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"]))
        self.items.append(item.to_dict(include_self_link=False, transform_hrefs=False))

    @staticmethod
    def mask(grid: RasterGrid, missing: shapely.Geometry | None, factor: int = 1) -> np.ndarray:
        """Pixels (at ``factor`` x the grid's pixel size) inside the lon/lat polygon ``missing``."""
        shape_ = (grid.height // factor, grid.width // factor)
        if missing is None:
            return np.zeros(shape_, bool)
        if grid.epsg != 4326:
            tr = Transformer.from_crs(4326, grid.epsg, always_xy=True)
            missing = shapely.transform(missing, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        return rasterio.features.geometry_mask([mapping(missing)], shape_, grid.transform @ Affine.scale(factor),
                                               invert=True)

    # -- dates ------------------------------------------------------------------------------------------------
    def plan_dates(self, full: bool) -> None:
        """S2 dates and cloudiness; S1 and Landsat passes near them (or not). ``full``: at least one of each
        within the recipe's tolerances (the first cell of every world)."""
        rng = self.rngs["plan"]
        days = (WINDOW_END - WINDOW_START).days
        n = int(rng.integers(2, 4))
        offs = sorted(rng.choice(np.arange(0, days + 1, 5), n, replace=False).tolist())
        self.s2_dates = [WINDOW_START + dt.timedelta(days=int(o)) for o in offs]
        kinds = rng.choice(3, n, p=[0.45, 0.3, 0.25])
        self.s2_clouds = [float(rng.uniform(*((0.0, 0.08), (0.1, 0.4), (0.55, 0.95))[k])) for k in kinds]
        if full:  # the first date is the clear one, so the passes planned near it below are the ones matched
            self.s2_clouds = [0.0] + [max(c, 0.1) for c in self.s2_clouds[1:]]
        s1 = [(d + dt.timedelta(days=int(rng.integers(-11, 12))), rng.random() < 0.8) for d in self.s2_dates]
        ls = [(d + dt.timedelta(days=int(rng.integers(-24, 25))), rng.random() < 0.6) for d in self.s2_dates]
        close = [(d + dt.timedelta(days=int(rng.integers(-4, 5))), True) for d in self.s2_dates]
        if full:
            s1, ls = close, [close[0]] + ls[1:]
        self.s1_dates = sorted({d for d, keep in s1 if keep})
        self.landsat_dates = sorted({d for d, keep in ls if keep})
        self.landsat_clouds = [float(rng.uniform(0, 0.6)) for _ in self.landsat_dates]

    # -- clouds -----------------------------------------------------------------------------------------------
    def clouds(self, rng: np.random.Generator, lon: np.ndarray, lat: np.ndarray, frac: float,
               step: int = 1) -> np.ndarray:
        """A cloud mask covering about ``frac`` of the grid (the smooth field evaluated every ``step`` pixels)."""
        waves = self.land.cloud_field(rng)
        field = waves(*self.land.xy(lon[::step, ::step], lat[::step, ::step]))
        if step > 1:
            field = np.repeat(np.repeat(field, step, axis=0), step, axis=1)[:lon.shape[0], :lon.shape[1]]
        if frac <= 0:
            return np.zeros(lon.shape, bool)
        return field > np.quantile(field[::7, ::7], 1 - frac)

    def reflectance(self, cls: np.ndarray, fd: Fields, day: dt.date, bands: list[int]) -> list[np.ndarray]:
        """Surface reflectance (x 10000) per S2 band index, before clouds."""
        veg = self.land.vegetation(day)
        soil = np.asarray(SPECTRA[8], np.float64)
        illum = self.land.illumination(fd, day)
        texture = 1 + 0.05 * fd.fine
        shade = (np.where(cls == WATER, 1.0, illum) * texture).astype(np.float32)
        out = []
        for b in bands:
            lut = np.zeros(256, np.float32)
            for c, spec in SPECTRA.items():
                v = float(spec[b])
                if c in veg:
                    v = veg[c] * v + (1 - veg[c]) * soil[b]
                lut[c] = v * self.land.spectra_gain[c][b]
            out.append(lut[cls] * shade)
        return out

    # -- products ----------------------------------------------------------------------------------------------
    def sentinel2(self, force_gap: bool) -> None:
        rng = self.rngs["s2"]
        grid = self.utm10
        lon, lat = self._lonlat10
        cls = self._cls10
        swath = None
        if force_gap or rng.random() < GAP_PROBABILITY:  # a swath edge: a diagonal strip without data
            side = int(rng.integers(0, 4))
            u0 = float(rng.uniform(0.35, 0.6))
            uu, vv = np.meshgrid(np.linspace(0, 1, 41), np.linspace(0, 1, 41))
            uv = {0: uu - 0.4 * vv, 1: 1 - uu + 0.4 * vv, 2: vv + 0.3 * uu, 3: 1 - vv - 0.3 * uu}[side]
            w, s, e, n = self.bbox
            pts = [(w + (e - w) * uu[i, j] + 0, n - (n - s) * vv[i, j]) for i in range(41) for j in range(41)
                   if uv[i, j] > u0]
            swath = shapely.MultiPoint(pts).convex_hull.buffer(0.002) if len(pts) > 3 else None
        nodata = self.mask(grid, swath)
        orbit = int(rng.integers(1, 143))
        for day, frac in zip(self.s2_dates, self.s2_clouds, strict=True):
            cloud = self.clouds(rng, lon, lat, frac, step=4)
            shift = (int(rng.integers(10, 30)), int(rng.integers(-30, 30)))
            shadow = np.roll(cloud, shift, axis=(0, 1)) & ~cloud
            item_id = f"S2B_MSIL2A_{day:%Y%m%d}T102031_R{orbit:03d}_{self.name}"
            assets = {}
            refls = self.reflectance(cls, self._fields10, day, list(range(len(S2_BANDS))))
            for b, (band, res) in enumerate(S2_BANDS.items()):
                refl = refls[b] * (1 + 0.02 * rng.standard_normal(cls.shape, dtype=np.float32))
                refl = np.where(cloud, 0.3 * refl + 7000, np.where(shadow, 0.4 * refl, refl))
                f = res // 10
                dn = np.clip(np.rint(_block_mean(refl, f)), 1, 65535).astype(np.uint16)
                dn[_block_mean(nodata.astype(np.float32), f) > 0] = 0
                assets[band] = _cog(self.path("sentinel-2-l2a", item_id, band), grid, [dn], 0)
            scl = np.zeros(cls.shape, np.uint8)
            for c, v in SCL_OF_CLASS.items():
                scl[cls == c] = v
            scl[shadow] = 3
            scl[cloud] = 9
            scl[nodata] = 0
            assets["SCL"] = _cog(self.path("sentinel-2-l2a", item_id, "SCL"), grid, [scl[::2, ::2]], 0)
            cover = float(cloud[~nodata].mean() * 100) if (~nodata).any() else 100.0
            self.add(item_id, "sentinel-2-l2a", grid, swath, _when(day),
                     {"platform": "Sentinel-2B", "eo:cloud_cover": round(cover, 2), "s2:mgrs_tile": self.name,
                      "s2:processing_baseline": "05.09"}, assets)

    def sentinel1(self, force_gap: bool) -> None:
        rng = self.rngs["s1"]
        grid = self.utm10
        cls = self._cls10
        terrain = self.land.local_incidence(self._fields10)
        for day in self.s1_dates:
            missing = self.gap(force_gap)
            nodata = self.mask(grid, missing)
            veg = self.land.vegetation(day)
            item_id = f"S1A_IW_GRDH_1SDV_{day:%Y%m%d}T053012_{self.index:06d}_rtc_{self.name}"
            assets = {}
            for p, pol in enumerate(("vv", "vh")):
                base = np.zeros(cls.shape, np.float64)
                for c, vals in S1_OF_CLASS.items():
                    base[cls == c] = vals[p] * (0.6 + 0.8 * veg[c] if c in veg and p == 1 else 1.0)
                speckle = rng.gamma(4.4, 1 / 4.4, cls.shape)
                sigma = np.where(cls == BUILT, base, base * terrain) * speckle
                arr = np.where(nodata, -32768.0, sigma).astype(np.float32)
                assets[pol] = _cog(self.path("sentinel-1-rtc", item_id, pol), grid, [arr], -32768.0)
            self.add(item_id, "sentinel-1-rtc", grid, missing, _when(day, 5),
                     {"platform": "SENTINEL-1A", "sar:polarizations": ["VV", "VH"],
                      "sat:orbit_state": "descending", "sar:instrument_mode": "IW"}, assets)

    def landsat(self, force_gap: bool) -> None:
        rng = self.rngs["landsat"]
        grid = utm_grid(self.epsg, *self.bbox, 30, snap=30)
        lon, lat = grid.lonlat()
        fd = self.land.fields(lon, lat)
        cls = self.land.land_cover(fd)
        for k, (day, frac) in enumerate(zip(self.landsat_dates, self.landsat_clouds, strict=True)):
            missing = self.gap(force_gap and k == 0)
            nodata = self.mask(grid, missing)
            cloud = self.clouds(rng, lon, lat, frac)
            refls = self.reflectance(cls, fd, day, list(LANDSAT.values()))
            item_id = f"LC09_L2SP_{self.index:06d}_{day:%Y%m%d}_02_T1"
            assets = {}
            for refl, band in zip(refls, LANDSAT, strict=True):
                r = refl / 10000 * (1 + 0.02 * rng.standard_normal(cls.shape))
                r = np.where(cloud, 0.3 * r + 0.7, r)
                dn = np.clip(np.rint((r + 0.2) / 0.0000275), 1, 65535).astype(np.uint16)
                dn[nodata] = 0
                assets[band] = _cog(self.path("landsat-c2-l2", item_id, band), grid, [dn], 0)
            qa = np.where(cloud, (1 << 3) | (1 << 1), 1 << 6).astype(np.uint16)
            qa[nodata] = 1
            assets["qa_pixel"] = _cog(self.path("landsat-c2-l2", item_id, "qa_pixel"), grid, [qa], 1)
            cover = float(cloud[~nodata].mean() * 100) if (~nodata).any() else 100.0
            self.add(item_id, "landsat-c2-l2", grid, missing, _when(day),
                     {"platform": "landsat-9", "eo:cloud_cover": round(cover, 2)}, assets)

    def static(self, collection: str, item_id: str, grid: RasterGrid, values: np.ndarray, dtype: str,
               nodata: float, missing: shapely.Geometry | None, when: dt.datetime, props: dict | None = None) -> None:
        arr = np.rint(values).astype(dtype) if np.dtype(dtype).kind in "ui" else values.astype(dtype)
        arr[self.mask(grid, missing)] = nodata
        path = _cog(self.path(collection, item_id, "data"), grid, [arr], nodata)
        self.add(item_id, collection, grid, missing, when, props or {}, {"data": path})

    def statics(self, force_gap: bool) -> None:
        w, s, e, n = self.bbox
        step = 1 / 3600
        lon0, lat1 = math.floor(w / step) * step, math.ceil(n / step) * step
        g = RasterGrid(4326, Affine(step, 0, lon0, 0, -step, lat1), math.ceil((e - lon0) / step),
                       math.ceil((lat1 - s) / step))
        self.static("cop-dem-glo-30", f"Copernicus_DSM_COG_10_{self.name}_DEM", g, self.land.elevation(*g.lonlat()),
                    "float32", -32767.0, self.gap(force_gap), dt.datetime(2021, 4, 22, tzinfo=dt.UTC))
        self.static("io-lulc-annual-v02", f"{self.name}-2023", self.utm10, self._cls10, "uint8", 0,
                    self.gap(force_gap), dt.datetime(2023, 1, 1, tzinfo=dt.UTC),
                    {"start_datetime": "2023-01-01T00:00:00Z", "end_datetime": "2023-12-31T23:59:59Z"})
        merc = Transformer.from_crs(4326, 3857, always_xy=True)
        (mx0, mx1), (my0, my1) = [np.asarray(v) for v in merc.transform([w, e], [s, n])]
        mx0, my1 = math.floor(mx0 / 15) * 15, math.ceil(my1 / 15) * 15
        g = RasterGrid(3857, Affine(15, 0, mx0, 0, -15, my1), math.ceil((mx1 - mx0) / 15),
                       math.ceil((my1 - my0) / 15))
        fd = self.land.fields(*g.lonlat())
        heights = self.land.canopy(fd, self.land.land_cover(fd))
        self.static("canopy-height", f"canopy_{self.name}", g, heights, "uint8", 255, self.gap(force_gap),
                    dt.datetime(2021, 4, 22, tzinfo=dt.UTC))

    def osm(self) -> None:
        """OSM ways traced from the landscape (forest, water, farmland, towns, buildings, roads), mapped
        incompletely (some features dropped), as on the real map."""
        rng = self.rngs["osm"]
        w, s, e, n = self.bbox
        step = 0.0005
        tr = Affine(step, 0, w, 0, -step, n)
        lon, lat = RasterGrid(4326, tr, int((e - w) / step), int((n - s) / step)).lonlat()
        cls = self.land.land_cover(self.land.fields(lon, lat))
        tags = {TREES: {"landuse": "forest"}, WATER: {"natural": "water"}, CROPS: {"landuse": "farmland"},
                BUILT: {"landuse": "residential"}}
        for c, tag in tags.items():
            polys = [shape(g) for g, v in rasterio.features.shapes((cls == c).astype(np.uint8), transform=tr)
                     if v == 1]
            for poly in polys:
                if poly.area < 6 * step * step or rng.random() < 0.12:
                    continue
                ring = list(poly.exterior.simplify(step * 0.7).coords)
                if len(ring) >= 4:
                    self.ways.append((ring[:-1], tag, True))
        built = np.argwhere(cls[::2, ::2] == BUILT)
        dx, dy = 0.00009, 0.00006
        for i, j in built:
            if rng.random() < 0.25:
                continue
            x0, y0 = float(lon[2 * i, 2 * j]), float(lat[2 * i, 2 * j])
            self.ways.append(([(x0 - dx, y0 - dy), (x0 + dx, y0 - dy), (x0 + dx, y0 + dy), (x0 - dx, y0 + dy)],
                              {"building": "yes"}, True))
        to_lonlat = self._km_to_lonlat
        towns = sorted(self.land.towns)
        if towns:  # a primary road through the towns, residential streets across each
            pts = [(-6.0, towns[0][1])] + [(t[0], t[1]) for t in towns] + [(6.0, towns[-1][1])]
            self.ways.append(([to_lonlat(px, py) for px, py in pts], {"highway": "primary"}, False))
            for tx, ty, r in towns:
                self.ways.append(([to_lonlat(tx - r, ty), to_lonlat(tx + r, ty)], {"highway": "residential"}, False))
                self.ways.append(([to_lonlat(tx, ty - r), to_lonlat(tx, ty + r)], {"highway": "residential"}, False))
        a = float(rng.uniform(0, math.pi))
        self.ways.append(([to_lonlat(6 * math.cos(a) * t, 6 * math.sin(a) * t) for t in np.linspace(-1, 1, 9)],
                          {"highway": "track"}, False))
        if rng.random() < 0.4:
            y0 = float(rng.uniform(-4, 4))
            self.ways.append(([to_lonlat(-6, y0), to_lonlat(6, y0 + 1)], {"railway": "rail"}, False))

    def _km_to_lonlat(self, x: float, y: float) -> tuple[float, float]:
        lat = self.land.lat0 + y / 110.57
        return self.land.lon0 + x / (110.57 * 1.0072 * math.cos(math.radians(self.land.lat0))), lat

    def render(self) -> dict[str, Any]:
        force = self.index == 0
        self.plan_dates(force)
        self.sentinel2(force)
        self.sentinel1(force)
        self.landsat(force)
        self.statics(force)
        self.osm()
        return {"items": self.items, "ways": self.ways, "bbox": self.bbox}


def render_cell(root: str, index: int, name: str, seed: int) -> dict[str, Any]:
    """Render cell ``name`` (the ``index``-th of a world with ``seed``) under ``root``: its STAC items (dicts,
    absolute asset paths), OSM ways and lon/lat bbox."""
    return _Cell(Path(root), index, name, seed).render()


# -- the world --------------------------------------------------------------------------------------------------
def _write_osm(path: Path, ways: list[tuple[list[tuple[float, float]], dict[str, str], bool]],
               bounds: tuple[float, float, float, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, s, e, n = bounds
    lines = ["<?xml version='1.0' encoding='UTF-8'?>",
             '<osm version="0.6" generator="eo-dataset demo --cells" timestamp="2023-06-01T00:00:00Z">',
             f'  <bounds minlat="{s:.7f}" minlon="{w:.7f}" maxlat="{n:.7f}" maxlon="{e:.7f}"/>']
    way_lines = []
    nid = 0
    for k, (coords, tags, closed) in enumerate(ways, start=1):
        ids = []
        for x, y in coords:
            nid += 1
            lines.append(f'  <node id="{nid}" version="1" lat="{y:.7f}" lon="{x:.7f}"/>')
            ids.append(nid)
        refs = "".join(f'<nd ref="{i}"/>' for i in ids + ([ids[0]] if closed else []))
        tag = "".join(f'<tag k="{a}" v="{b}"/>' for a, b in tags.items())
        way_lines.append(f'  <way id="{k}" version="1">{refs}{tag}</way>')
    path.write_text("\n".join(lines + way_lines) + "\n</osm>\n")


def _save_catalog(root: Path, items: list[dict], spec: WorldSpec) -> Path:
    by_collection: dict[str, list[pystac.Item]] = {}
    for d in items:
        item = pystac.Item.from_dict(d)
        by_collection.setdefault(item.collection_id or "", []).append(item)
    catalog = pystac.Catalog("eo-dataset-demo-world", f"4M4EO scaled demo world: {spec.cells} cells, seed "
                             f"{spec.seed} (synthetic, deterministic)", extra_fields={"eo_dataset:world": spec.stamp()})
    for cid, its in sorted(by_collection.items()):
        collection = pystac.Collection(cid, f"Demo {cid}", pystac.Extent(
            pystac.SpatialExtent([list(shapely.union_all([shape(i.geometry) for i in its]).bounds)]),
            pystac.TemporalExtent([[min(i.datetime for i in its if i.datetime), None]])), license="CC-BY-4.0")
        collection.add_items(sorted(its, key=lambda i: i.id))
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()  # the world moves (and hashes the same) wherever it is
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def check_world_folder(root: str | Path, cells: int, seed: int) -> bool:
    """True when ``root`` already holds the complete scaled world of ``cells`` and ``seed``; False when it is free
    (absent, empty or an unfinished run of this world); raises :class:`~eo_dataset.errors.OutputError` when it holds
    anything else (another world, or files that are not a demo world)."""
    if cells < 1:
        raise OutputError(f"--cells must be >= 1, got {cells}")
    return _check_root(Path(root).resolve(), WorldSpec(cells, seed))


def _check_root(root: Path, spec: WorldSpec) -> bool:
    stamp = root / "world.json"
    if stamp.is_file():
        try:
            found = json.loads(stamp.read_text())
        except ValueError:
            found = {}
        mine = {k: found.get(k) for k in spec.stamp()}
        if mine != spec.stamp():
            what = (f"a scaled demo world with --cells {found.get('cells')} --seed {found.get('seed')} "
                    f"(generator version {found.get('version')})" if found.get("generator") == spec.stamp()["generator"]
                    else "another demo world")
            raise OutputError(f"{root} holds {what}, not --cells {spec.cells} --seed {spec.seed} (version "
                              f"{spec.version}); pass another --world folder, or delete {root} yourself")
        return bool(found.get("complete"))
    if root.exists() and any(root.iterdir()):
        raise OutputError(f"{root} exists and is not a demo world (no world.json); pass another --world folder")
    return False


def make_scaled_world(root: str | Path, cells: int, seed: int = 0, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Generate a scaled demo world of ``cells`` Major TOM cells (16 samples each) under ``root``.

    The same ``cells`` and ``seed`` give the same files, byte for byte, whatever ``workers``. A complete world of the
    same ``cells``/``seed`` already in ``root`` is reused; a folder holding anything else is refused
    (:class:`~eo_dataset.errors.OutputError`), never overwritten. Also writes ``root/samples.csv`` and
    ``root/world.json`` (generator version, cells, seed).

    Args:
        root: The world's folder.
        cells: Number of Major TOM cells (>= 1).
        seed: Random seed.
        workers: Processes rendering cells in parallel (default: one per core; 1: in this process).
        progress: Called as ``progress(cells_done, cells)``.

    Returns:
        The world's ``catalog.json`` (point the demo recipe at it with :func:`~eo_dataset.demo.demo_sources`).
    """
    if cells < 1:
        raise OutputError(f"--cells must be >= 1, got {cells}")
    spec = WorldSpec(cells, seed)
    root = Path(root).resolve()
    if _check_root(root, spec):
        return root / "catalog.json"
    root.mkdir(parents=True, exist_ok=True)
    (root / "world.json").write_text(json.dumps({**spec.stamp(), "complete": False}))
    grid = Grid()
    names = pick_cells(cells, seed, grid)
    results: dict[int, dict[str, Any]] = {}
    if progress:
        progress(0, cells)
    n_workers = min(workers or len(os.sched_getaffinity(0)) or 1, cells)
    if n_workers <= 1:
        for i, name in enumerate(names):
            results[i] = render_cell(str(root), i, name, seed)
            if progress:
                progress(len(results), cells)
    else:
        with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(render_cell, str(root), i, name, seed): i for i, name in enumerate(names)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(len(results), cells)
    ordered = [results[i] for i in range(cells)]
    boxes = np.array([r["bbox"] for r in ordered])
    north = int(np.argmax(boxes[:, 3]))  # the extract stops halfway up the northernmost cell
    bounds = (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()),
              float((boxes[north, 1] + boxes[north, 3]) / 2))
    _write_osm(root / "osm" / "demo.osm", [w for r in ordered for w in r["ways"]], bounds)
    items = [d for r in ordered for d in r["items"]]
    canopy = sorted((d for d in items if d["collection"] == "canopy-height"), key=lambda d: d["id"])
    index = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": d["geometry"],
         "properties": {"id": d["id"], "href": Path(d["assets"]["data"]["href"]).relative_to(root / "canopy-height")
                        .as_posix(), "year": 2021}} for d in canopy]}
    (root / "canopy-height").mkdir(exist_ok=True)
    (root / "canopy-height" / "index.geojson").write_text(json.dumps(index))
    with open(root / "samples.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sample_id"])
        for name in names:
            for s in grid.samples_of_cell(name):
                out.writerow([s.id])
    catalog = _save_catalog(root, items, spec)
    (root / "world.json").write_text(json.dumps({**spec.stamp(), "complete": True, "cell_ids": names}))
    return catalog
