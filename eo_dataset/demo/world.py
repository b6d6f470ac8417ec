"""The offline demo world: a small, deterministic synthetic landscape served as a real static STAC catalog.

Two Major TOM cells (32 samples) on either side of the UTM 32/33 zone edge at 12 deg E, south of Munich. One
synthetic landscape (elevation, land cover, canopy) is rendered into Cloud-Optimized GeoTIFFs the way the real
products come: Sentinel-2 L2A tiles per UTM zone with 10/20/60 m bands, SCL, clouds and a swath edge; Sentinel-1
RTC; Landsat C2 L2 at 30 m with QA_PIXEL; a DEM in EPSG:4326 tiles; annual land cover per zone; canopy height in
EPSG:3857 tiles. Coverage and dates are laid out so that every modality has available and unavailable samples.
The engine reads it through the same source interface as any STAC catalog.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import mapping

from eo_dataset.errors import OutputError
from eo_dataset.spec.grid import Grid

WORLD_VERSION = 3
CELLS = ("532U_89R", "532U_90R")
REGION = (11.88, 47.77, 12.18, 47.89)  # lon/lat box the sources cover (with gaps on purpose)
S2_BANDS = {  # band -> native resolution (m)
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
    "B09": 60, "B11": 20, "B12": 20,
}
# reflectance x 10000 per land-cover class, bands in S2_BANDS order
SPECTRA = {
    1: [600, 500, 450, 300, 250, 200, 180, 150, 130, 80, 50, 30],  # water
    2: [250, 300, 500, 300, 800, 2200, 2800, 3000, 3100, 900, 1500, 700],  # trees
    5: [300, 400, 700, 500, 1200, 2500, 3100, 3300, 3400, 1000, 2200, 1200],  # crops
    7: [1100, 1200, 1300, 1400, 1500, 1600, 1700, 1800, 1850, 600, 2200, 2000],  # built
    8: [1200, 1400, 1700, 2000, 2200, 2400, 2500, 2600, 2700, 900, 3200, 2800],  # bare
    11: [400, 500, 800, 800, 1300, 2000, 2400, 2600, 2700, 900, 2600, 1600],  # rangeland
}
SCL_OF_CLASS = {1: 6, 2: 4, 5: 4, 7: 5, 8: 5, 11: 4}
S1_OF_CLASS = {1: (0.008, 0.001), 2: (0.12, 0.035), 5: (0.06, 0.012), 7: (0.45, 0.08), 8: (0.05, 0.006),
               11: (0.07, 0.015)}
LANDSAT = {"coastal": 0, "blue": 1, "green": 2, "red": 3, "nir08": 8, "swir16": 10, "swir22": 11}
CLOUDS = {  # date -> cloud blobs (lon, lat, radius km)
    "2023-05-20": [(11.95, 47.82, 1.5)],
    "2023-06-10": [(11.93, 47.80, 3.5), (12.02, 47.85, 3.0), (12.12, 47.81, 4.0), (11.99, 47.88, 2.0)],
    "2023-07-05": [(11.97, 47.84, 0.9), (12.10, 47.79, 0.7)],
    "2023-07-14": [(11.92, 47.86, 1.2)],
    "2023-08-15": [(11.95, 47.83, 5.0), (12.05, 47.80, 4.0)],
    "2023-08-30": [],
}


# -- the landscape -------------------------------------------------------------------------------------------
def _uv(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w, s, e, n = REGION
    return (lon - w) / (e - w), (lat - s) / (n - s)


def elevation(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Terrain height (m)."""
    u, v = _uv(lon, lat)
    tau = 2 * math.pi
    return (560 + 220 * np.sin(tau * (1.3 * u + 0.2)) * np.cos(tau * (0.9 * v - 0.1))
            + 90 * np.sin(tau * (4.1 * u + 3.3 * v)) + 35 * np.cos(tau * (9.0 * u - 7.0 * v)))


def land_cover(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Land-cover class ids (Impact Observatory scheme)."""
    u, v = _uv(lon, lat)
    tau = 2 * math.pi
    z = elevation(lon, lat)
    forest = np.sin(tau * (2.7 * u + 0.4)) * np.cos(tau * 3.1 * v) + 0.3 * np.sin(tau * (11 * u + 13 * v))
    cls = np.full(lon.shape, 11, dtype=np.uint8)
    cls[forest < -0.3] = 5
    cls[(forest > 0.25) | (z > 690)] = 2
    cls[z > 770] = 8
    cls[z < 385] = 1
    town = ((lon - 11.955) / 0.012) ** 2 + ((lat - 47.825) / 0.008) ** 2 < 1
    town |= ((lon - 12.09) / 0.008) ** 2 + ((lat - 47.80) / 0.006) ** 2 < 1
    cls[town & (cls != 1)] = 7
    return cls


def canopy(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Canopy height (m): trees only."""
    u, v = _uv(lon, lat)
    h = 12 + 10 * (0.5 + 0.5 * np.sin(2 * math.pi * (17 * u + 5 * v)))
    return np.where(land_cover(lon, lat) == 2, h, 0.0)


def cloud_mask(lon: np.ndarray, lat: np.ndarray, date: str) -> np.ndarray:
    """Where the date's clouds are."""
    out = np.zeros(lon.shape, dtype=bool)
    for clon, clat, r_km in CLOUDS.get(date, []):
        dx = (lon - clon) * 111.32 * math.cos(math.radians(clat))
        dy = (lat - clat) * 110.57
        out |= dx * dx + dy * dy < r_km * r_km
    return out


# -- rasters -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterGrid:
    """A north-up pixel grid in some CRS."""

    epsg: int
    transform: Affine
    width: int
    height: int

    def lonlat(self, factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Lon/lat of pixel centres at ``factor`` times the pixel size."""
        w, h = self.width // factor, self.height // factor
        t = self.transform @ Affine.scale(factor)
        cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        x, y = t @ (cols, rows)
        if self.epsg == 4326:
            return x, y
        lon, lat = Transformer.from_crs(self.epsg, 4326, always_xy=True).transform(x, y)
        return np.asarray(lon), np.asarray(lat)

    def footprint(self, keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> shapely.Geometry:
        """Lon/lat polygon of the grid (or of the part where ``keep(u, v)`` holds, u/v in 0..1 of the grid)."""
        n = 40
        u, v = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1))
        x, y = self.transform @ (u * self.width, v * self.height)
        if self.epsg != 4326:
            x, y = Transformer.from_crs(self.epsg, 4326, always_xy=True).transform(x, y)
        if keep is None:
            ring = np.concatenate([np.column_stack([x[0], y[0]]), np.column_stack([x[:, -1], y[:, -1]]),
                                   np.column_stack([x[-1, ::-1], y[-1, ::-1]]), np.column_stack([x[::-1, 0],
                                                                                                y[::-1, 0]])])
            return shapely.Polygon(ring)
        cells = [shapely.Polygon([(x[i, j], y[i, j]), (x[i, j + 1], y[i, j + 1]), (x[i + 1, j + 1], y[i + 1, j + 1]),
                                  (x[i + 1, j], y[i + 1, j])])
                 for i in range(n) for j in range(n) if keep((j + 0.5) / n, (i + 0.5) / n)]
        return shapely.union_all(cells).simplify(0)


def utm_grid(epsg: int, lon0: float, lat0: float, lon1: float, lat1: float, res: float,
             snap: float = 60.0) -> RasterGrid:
    """A grid in a UTM zone covering a lon/lat box, origin on a ``snap`` m lattice (as real S2 tiles)."""
    tr = Transformer.from_crs(4326, epsg, always_xy=True)
    xs, ys = tr.transform([lon0, lon0, lon1, lon1], [lat0, lat1, lat0, lat1])
    x0, x1 = math.floor(min(xs) / snap) * snap, math.ceil(max(xs) / snap) * snap
    y0, y1 = math.floor(min(ys) / snap) * snap, math.ceil(max(ys) / snap) * snap
    return RasterGrid(epsg, Affine(res, 0, x0, 0, -res, y1), int((x1 - x0) / res), int((y1 - y0) / res))


def _write_cog(path: Path, grid: RasterGrid, arrays: list[np.ndarray], nodata: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = arrays[0].shape
    scale = grid.width / w
    profile = {"driver": "COG", "width": w, "height": h, "count": len(arrays), "dtype": arrays[0].dtype.name,
               "crs": f"EPSG:{grid.epsg}", "transform": grid.transform @ Affine.scale(scale), "nodata": nodata,
               "compress": "deflate", "blocksize": 256, "overviews": "none"}
    with rasterio.open(path, "w", **profile) as dst:
        for i, a in enumerate(arrays, start=1):
            dst.write(a, i)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


# -- items ---------------------------------------------------------------------------------------------------
def _item(item_id: str, collection: str, geom: shapely.Geometry, when: dt.datetime | None, props: dict,
          grid: RasterGrid, assets: dict[str, Path]) -> pystac.Item:
    props = {"proj:code": f"EPSG:{grid.epsg}", "proj:shape": [grid.height, grid.width],
             "proj:transform": list(grid.transform)[:6], **props}
    item = pystac.Item(item_id, mapping(geom), list(geom.bounds), when, props, collection=collection,
                       stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                                        "https://stac-extensions.github.io/eo/v1.1.0/schema.json"])
    for key, path in assets.items():
        item.add_asset(key, pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"]))
    return item


def _date(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(hour=10, minute=20, tzinfo=dt.UTC)


class _World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.items: dict[str, list[pystac.Item]] = {}
        self.rng = np.random.default_rng(4_2023)

    def add(self, item: pystac.Item) -> None:
        self.items.setdefault(item.collection_id or "", []).append(item)

    def path(self, collection: str, item_id: str, asset: str) -> Path:
        return self.root / collection / item_id / f"{asset}.tif"

    # Sentinel-2 L2A: one tile per zone; the zone-33 tile has a swath edge (no data in its north-east)
    def sentinel2(self, tile: str, grid: RasterGrid, dates: list[str], swath: Callable | None) -> None:
        lon, lat = grid.lonlat()
        cls = land_cover(lon, lat)
        texture = 1 + 0.06 * np.sin(lon * 2900) * np.cos(lat * 3100)
        rows, cols = np.meshgrid(np.arange(grid.height), np.arange(grid.width), indexing="ij")
        nodata = swath(cols / grid.width, rows / grid.height) if swath else np.zeros(cls.shape, bool)
        for date in dates:
            cloud = cloud_mask(lon, lat, date)
            shadow = np.roll(cloud, (25, 25), axis=(0, 1)) & ~cloud
            item_id = f"S2B_MSIL2A_{date.replace('-', '')}T102031_R065_{tile}"
            assets = {}
            for b, (band, res) in enumerate(S2_BANDS.items()):
                refl = np.zeros(cls.shape, dtype=np.float32)
                for c, spec in SPECTRA.items():
                    refl[cls == c] = spec[b]
                refl = refl * texture * (1 + 0.02 * self.rng.standard_normal(cls.shape))
                refl = np.where(cloud, 0.3 * refl + 7000, np.where(shadow, 0.4 * refl, refl))
                f = res // 10
                dn = np.clip(np.rint(_block_mean(refl, f)), 1, 65535).astype(np.uint16)
                dn[_block_mean(nodata.astype(np.float32), f) > 0] = 0
                assets[band] = self.path("sentinel-2-l2a", item_id, band)
                _write_cog(assets[band], grid, [dn], 0)
            scl = np.vectorize(SCL_OF_CLASS.get, otypes=[np.uint8])(cls)
            scl[shadow] = 3
            scl[cloud] = 9
            scl[nodata] = 0
            assets["SCL"] = self.path("sentinel-2-l2a", item_id, "SCL")
            _write_cog(assets["SCL"], grid, [scl[::2, ::2]], 0)
            cover = float(cloud[~nodata].mean() * 100)
            self.add(_item(item_id, "sentinel-2-l2a", grid.footprint(
                (lambda u, v: not swath(u, v)) if swath else None), _date(date),
                {"platform": "Sentinel-2B", "eo:cloud_cover": round(cover, 2), "s2:mgrs_tile": tile[1:],
                 "s2:processing_baseline": "05.09"}, grid, assets))

    def sentinel1(self, grid: RasterGrid, date: str, orbit: str) -> None:
        lon, lat = grid.lonlat()
        cls = land_cover(lon, lat)
        item_id = f"S1A_IW_GRDH_1SDV_{date.replace('-', '')}T053012_{orbit}_rtc_{grid.epsg}"
        assets = {}
        for p, pol in enumerate(("vv", "vh")):
            base = np.zeros(cls.shape, np.float32)
            for c, vals in S1_OF_CLASS.items():
                base[cls == c] = vals[p]
            speckle = self.rng.gamma(4.0, 0.25, cls.shape).astype(np.float32)
            assets[pol] = self.path("sentinel-1-rtc", item_id, pol)
            _write_cog(assets[pol], grid, [base * speckle], -32768.0)
        self.add(_item(item_id, "sentinel-1-rtc", grid.footprint(), _date(date).replace(hour=5),
                       {"platform": "SENTINEL-1A", "sar:polarizations": ["VV", "VH"],
                        "sat:orbit_state": "descending", "sar:instrument_mode": "IW"}, grid, assets))

    def landsat(self, grid: RasterGrid, date: str) -> None:
        lon, lat = grid.lonlat()
        cls = land_cover(lon, lat)
        cloud = cloud_mask(lon, lat, date)
        item_id = f"LC09_L2SP_193027_{date.replace('-', '')}_02_T1"
        assets = {}
        for band, b in LANDSAT.items():
            refl = np.zeros(cls.shape, np.float32)
            for c, spec in SPECTRA.items():
                refl[cls == c] = spec[b] / 10000
            refl = np.where(cloud, 0.3 * refl + 0.7, refl)
            dn = np.clip(np.rint((refl + 0.2) / 0.0000275), 1, 65535).astype(np.uint16)
            assets[band] = self.path("landsat-c2-l2", item_id, band)
            _write_cog(assets[band], grid, [dn], 0)
        qa = np.where(cloud, (1 << 3) | (1 << 1), 1 << 6).astype(np.uint16)  # cloud+dilated, else clear bit
        assets["qa_pixel"] = self.path("landsat-c2-l2", item_id, "qa_pixel")
        _write_cog(assets["qa_pixel"], grid, [qa], 1)
        self.add(_item(item_id, "landsat-c2-l2", grid.footprint(), _date(date),
                       {"platform": "landsat-9", "eo:cloud_cover": round(float(cloud.mean() * 100), 2)},
                       grid, assets))

    def static(self, collection: str, item_id: str, grid: RasterGrid, fn: Callable, dtype: str, nodata: float,
               when: dt.datetime | None = None, props: dict | None = None) -> None:
        lon, lat = grid.lonlat()
        values = fn(lon, lat)
        arr = np.rint(values).astype(dtype) if np.dtype(dtype).kind in "ui" else values.astype(dtype)
        path = self.path(collection, item_id, "data")
        _write_cog(path, grid, [arr], nodata)
        when = when or dt.datetime(2021, 4, 22, tzinfo=dt.UTC)
        self.add(_item(item_id, collection, grid.footprint(), when, props or {}, grid, {"data": path}))

    def save(self) -> Path:
        catalog = pystac.Catalog("eo-dataset-demo-world", "4M4EO offline demo world (synthetic, deterministic)")
        for cid, items in sorted(self.items.items()):
            collection = pystac.Collection(cid, f"Demo {cid}", pystac.Extent(
                pystac.SpatialExtent([list(shapely.union_all([shapely.geometry.shape(i.geometry)
                                                             for i in items]).bounds)]),
                pystac.TemporalExtent([[min(i.datetime or i.common_metadata.start_datetime for i in items), None]])),
                license="CC-BY-4.0")
            collection.add_items(sorted(items, key=lambda i: i.id))
            catalog.add_child(collection)
        catalog.normalize_hrefs(str(self.root))
        catalog.save(pystac.CatalogType.SELF_CONTAINED)
        return self.root / "catalog.json"


def write_tile_index(path: Path, items: list[pystac.Item]) -> None:
    """A GeoJSON tile index of the items' ``data`` COGs (the layout of global canopy-height products)."""
    features = [{"type": "Feature", "geometry": i.geometry,
                 "properties": {"id": i.id, "href": Path(i.assets["data"].href).relative_to(path.parent).as_posix(),
                                "year": 2021}} for i in items]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


OSM_BOUNDS = (11.88, 47.77, 12.10, 47.89)  # the extract stops west of the eastern cell's far side


def write_osm(path: Path) -> None:
    """An OSM XML extract of the landscape: buildings in the towns, roads, a river, lakes and forests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, s, e, n = OSM_BOUNDS
    nodes: list[str] = []
    ways: list[str] = []

    def node(lon: float, lat: float) -> int:
        nodes.append(f'  <node id="{len(nodes) + 1}" version="1" lat="{lat:.7f}" lon="{lon:.7f}"/>')
        return len(nodes)

    def way(coords: list[tuple[float, float]], tags: dict[str, str], closed: bool = False) -> None:
        ids = [node(x, y) for x, y in coords]
        refs = "".join(f'<nd ref="{i}"/>' for i in ids + ([ids[0]] if closed else []))
        tag = "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items())
        ways.append(f'  <way id="{len(ways) + 1}" version="1">{refs}{tag}</way>')

    def ring(lon: float, lat: float, r_km: float, k: int = 24) -> list[tuple[float, float]]:
        t = np.linspace(0, 2 * math.pi, k, endpoint=False)
        return [(lon + r_km / (111.32 * math.cos(math.radians(lat))) * math.cos(a), lat + r_km / 110.57 * math.sin(a))
                for a in t]

    # buildings: 14 m squares every 45 m where the landscape is built up
    lons, lats = np.meshgrid(np.arange(w, e, 0.0006), np.arange(s, n, 0.0004))
    built = land_cover(lons, lats) == 7
    dx, dy = 0.00019 / 2, 0.000126 / 2
    for lon, lat in zip(lons[built], lats[built], strict=True):
        way([(lon - dx, lat - dy), (lon + dx, lat - dy), (lon + dx, lat + dy), (lon - dx, lat + dy)],
            {"building": "yes"}, closed=True)
    t = np.linspace(0, 1, 60)
    way([(w + (e - w) * a, 47.82 + 0.02 * math.sin(6 * a)) for a in t], {"highway": "primary", "name": "B 472"})
    way([(11.955 + 0.02 * (a - 0.5), 47.80 + 0.05 * a) for a in t], {"highway": "residential"})
    way([(w + (e - w) * a, 47.79 + 0.01 * math.cos(9 * a)) for a in t], {"waterway": "river", "name": "Mangfall"})
    way([(12.02 + 0.03 * a, 47.86 - 0.03 * a) for a in t], {"highway": "track"})
    way([(w, 47.845), (e, 47.85)], {"railway": "rail"})
    way(ring(11.93, 47.865, 0.4), {"natural": "water"}, closed=True)
    for lon, lat, r in ((11.91, 47.80, 1.2), (12.06, 47.87, 0.9)):
        way(ring(lon, lat, r), {"landuse": "forest"}, closed=True)
    way(ring(12.00, 47.80, 1.0), {"landuse": "farmland"}, closed=True)
    path.write_text("<?xml version='1.0' encoding='UTF-8'?>\n"
                    '<osm version="0.6" generator="eo-dataset demo" timestamp="2023-06-01T00:00:00Z">\n'
                    f'  <bounds minlat="{s}" minlon="{w}" maxlat="{n}" maxlon="{e}"/>\n'
                    + "\n".join(nodes + ways) + "\n</osm>\n")


def demo_sources(catalog: str | Path) -> dict[str, str]:
    """``--source`` overrides pointing the bundled demo recipe at a demo world (given its ``catalog.json``)."""
    root = Path(catalog).parent
    return {"demo": str(catalog), "canopy_tiles": str(root / "canopy-height" / "index.geojson"),
            "osm": str(root / "osm" / "demo.osm")}


def make_world(root: str | Path, force: bool = False) -> Path:
    """Generate the demo world under ``root`` (or reuse it if it is already there); returns ``catalog.json``.

    Also writes ``root/samples.csv`` (the 32 samples of the two demo cells).
    """
    root = Path(root).resolve()
    stamp = root / "world.json"
    found = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if not force and found.get("version") == WORLD_VERSION and "generator" not in found:
        return root / "catalog.json"
    if "generator" in found:  # a scaled world (eo-dataset demo --cells): never replaced by this one
        raise OutputError(f"{root} holds a scaled demo world (--cells {found.get('cells')} --seed "
                          f"{found.get('seed')}), not the default one; pass another --world folder")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    w = _World(root)
    z32 = utm_grid(32632, 11.88, 47.77, 12.06, 47.89, 10)
    z33 = utm_grid(32633, 12.00, 47.77, 12.18, 47.89, 10)
    w.sentinel2("T32TQT", z32, ["2023-05-20", "2023-06-10", "2023-07-05", "2023-08-15"], None)
    w.sentinel2("T33TUN", z33, ["2023-06-10", "2023-07-05"], lambda u, v: (u - 0.45) > 1.6 * v)
    w.sentinel1(z32, "2023-06-12", "048712")
    w.sentinel1(z32, "2023-07-08", "049087")
    w.sentinel1(z33, "2023-06-12", "048712")
    w.sentinel1(z33, "2023-07-20", "049262")  # 15 days from the anchor: outside the +-7 day tolerance
    ls = utm_grid(32632, 11.88, 47.77, 12.10, 47.89, 30, snap=30)
    w.landsat(ls, "2023-07-14")
    w.landsat(ls, "2023-08-30")
    for lon0 in (11.8, 11.9, 12.0, 12.1):
        for lat0 in (47.7, 47.8):
            if (lon0, lat0) == (12.1, 47.8):
                continue  # a missing DEM tile
            g = RasterGrid(4326, Affine(1 / 3600, 0, lon0, 0, -1 / 3600, lat0 + 0.1), 360, 360)
            name = f"Copernicus_DSM_COG_10_N{lat0:05.2f}_E{lon0:06.2f}_DEM".replace(".", "_")
            w.static("cop-dem-glo-30", name, g, elevation, "float32", -32767.0)
    for grid, year in ((z32, 2023), (z32, 2022), (z33, 2022)):
        w.static("io-lulc-annual-v02", f"{grid.epsg % 100}T-{year}", grid, land_cover, "uint8", 0,
                 dt.datetime(year, 1, 1, tzinfo=dt.UTC),
                 {"start_datetime": f"{year}-01-01T00:00:00Z", "end_datetime": f"{year}-12-31T23:59:59Z"})
    merc = Transformer.from_crs(4326, 3857, always_xy=True)
    (mx0, mx1), (my0, my1) = [np.asarray(v) for v in merc.transform([11.88, 12.18], [47.77, 47.89])]
    step_x, step_y = math.ceil((mx1 - mx0) / 2 / 15) * 15, math.ceil((my1 - my0) / 2 / 15) * 15
    for i in range(2):
        for j in range(2):
            if (i, j) == (0, 1):
                continue  # a missing canopy tile (south-west)
            g = RasterGrid(3857, Affine(15, 0, mx0 + i * step_x, 0, -15, my1 - j * step_y),
                           int(step_x / 15), int(step_y / 15))
            w.static("canopy-height", f"canopy_{i}_{j}", g, canopy, "uint8", 255)
    write_tile_index(root / "canopy-height" / "index.geojson", w.items["canopy-height"])
    write_osm(root / "osm" / "demo.osm")
    grid = Grid()
    with open(root / "samples.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sample_id"])
        for cell in CELLS:
            for s in grid.samples_of_cell(cell):
                out.writerow([s.id])
    catalog = w.save()
    stamp.write_text(json.dumps({"version": WORLD_VERSION, "cells": CELLS}))
    return catalog
