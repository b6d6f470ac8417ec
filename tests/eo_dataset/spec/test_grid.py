"""The sample grid against Major TOM / TerraMesh: real tiles to the millimetre, poles, antimeridian, UTM edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely

from eo_dataset import Grid, GridError, utm_epsg
from eo_dataset.spec.grid import GridSpec
from tests.conftest import realdata

TERRAMIND_IDS = ["282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1", "609U_541L_3_0", "637U_59R_1_3"]
MODALITIES = ["S2L2A", "S2L1C", "S1RTC", "DEM", "LULC"]


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("sample_id", TERRAMIND_IDS)
def test_terramind_tile_geometry_from_its_name(sample_id: str, modality: str) -> None:
    """EPSG and origin derived from the file name alone match the real GeoTIFF to the millimetre."""
    path = realdata("terramind", modality, f"{sample_id}.tif")
    s = Grid().sample(sample_id)
    with rasterio.open(path) as src:
        assert s.epsg == src.crs.to_epsg()
        assert abs(s.x0 - src.transform.c) < 1e-3
        assert abs(s.y0 - src.transform.f) < 1e-3
        assert src.transform.a == 10 and src.transform.e == -10
        # TerraMind's 224 px examples are the top-left 224 x 224 px of the 264 px sub-cell
        assert src.width == src.height == 224 and s.shape(10) == (264, 264)


@pytest.mark.parametrize("sample_id", TERRAMIND_IDS)
def test_point_in_tile_maps_back_to_its_sample(sample_id: str) -> None:
    path = realdata("terramind", "S2L2A", f"{sample_id}.tif")
    with rasterio.open(path) as src:
        x, y = src.xy(112, 112)
        lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", [x], [y])
    assert Grid().sample_at(lon[0], lat[0]).id == sample_id


def test_readme_example_point() -> None:
    s = Grid().sample_at(-48.11, -25.32)
    assert s.id == "282D_485L_3_3" and s.epsg == 32722


def test_cell_crs_is_zone_of_south_west_corner() -> None:
    """Sample 609U_541L_3_0's centre lies in zone 17 but its cell's south-west corner, and so its CRS, in 16."""
    g = Grid()
    cell = g.cell("609U_541L")
    centre_lon, _ = g.sample("609U_541L_3_0").center_lonlat
    assert math.floor((centre_lon + 180) / 6) + 1 == 17
    assert cell.epsg == 32616
    assert all(s.epsg == 32616 for s in g.samples_of_cell(cell))


@pytest.mark.parametrize(("lon", "lat", "epsg"), [
    (5.999, 0.5, 32631), (6.0, 0.5, 32632), (-0.001, -0.5, 32730), (0.0, -0.5, 32731),
    (5.0, 60.0, 32632), (3.5, 56.0, 32632), (2.9, 60.0, 32631), (12.0, 60.0, 32633),  # Norway
    (5.0, 78.0, 32631), (10.0, 78.0, 32633), (20.0, 78.0, 32633), (25.0, 78.0, 32635), (40.0, 78.0, 32637),
    (10.0, 84.0, 32632),  # north of the Svalbard band: the plain rule again
    (179.99, 10.0, 32660), (-180.0, -10.0, 32701),
])
def test_utm_zone_rule(lon: float, lat: float, epsg: int) -> None:
    assert utm_epsg(lon, lat) == epsg


def test_nested_resolutions_share_origin() -> None:
    s = Grid().sample("637U_59R_1_3")
    for res, n in ((10, 264), (20, 132), (30, 88), (60, 44)):
        assert s.shape(res) == (n, n)
        t = s.transform(res)
        assert (t.c, t.f) == (s.x0, s.y0)
        assert t @ (n, n) == pytest.approx((s.x0 + 2640, s.y0 - 2640))
    with pytest.raises(GridError, match="does not divide"):
        s.shape(25)


def test_subcells_tile_the_cell_window() -> None:
    g = Grid()
    subs = g.samples_of_cell("451U_946L")
    assert len(subs) == 16 and len({s.id for s in subs}) == 16
    s00 = next(s for s in subs if (s.a, s.b) == (0, 0))
    for s in subs:
        assert s.x0 - s00.x0 == pytest.approx(2640 * s.a)
        assert s00.y0 - s.y0 == pytest.approx(2640 * s.b)
    union = shapely.union_all([shapely.box(*s.bounds) for s in subs])
    assert union.area == pytest.approx((4 * 2640) ** 2)


def test_row_count_and_names() -> None:
    g = Grid()
    assert g.describe()["rows"] == 2004
    assert g.cell_at(0.0, 0.0).name == "0U_0R"
    assert g.cell_at(-0.0001, -0.0001).name == "1D_1L"
    assert g.cell_at(0.0, 90.0).name.startswith("1001U_")
    assert g.cell_at(0.0, -90.0).name.startswith("1002D_")


@pytest.mark.parametrize("lat", [89.99, 85.0, -85.0, -89.999])
def test_near_poles(lat: float) -> None:
    g = Grid()
    cell = g.cell_at(33.0, lat)
    assert g.cell(cell.name) == cell
    s = g.sample_at(33.0, lat)
    assert g.sample(s.id) == s
    assert s.epsg == utm_epsg(cell.lon, cell.lat)
    # near the poles a 10 km row is cut into very few columns
    assert cell.lon_step > 1.0


def test_antimeridian() -> None:
    g = Grid()
    east, west = g.cell_at(179.999, 5.0), g.cell_at(-180.0, 5.0)
    assert east.name.endswith("R") and west.name.endswith("L")
    assert east.epsg == 32660 and west.epsg == 32601
    samples = g.samples_in((179.95, 5.0, -179.95, 5.05))
    names = {s.cell for s in samples}
    assert east.name in names and west.name in names
    for s in samples:
        fp = s.footprint()
        assert fp.is_valid and fp.bounds[2] - fp.bounds[0] < 1.0  # never wraps the whole globe
    assert g.sample_at(180.0, 5.0).cell == west.name  # 180 E is 180 W


def test_samples_in_bbox_and_geojson_agree() -> None:
    g = Grid()
    bbox = (11.9, 47.80, 12.0, 47.85)
    a = [s.id for s in g.samples_in(bbox)]
    geo = {"type": "Feature", "geometry": shapely.geometry.mapping(shapely.box(*bbox)), "properties": {}}
    b = [s.id for s in g.samples_in(geo)]
    assert a == b and len(a) > 0
    target = shapely.box(*bbox)
    assert all(g.sample(i).footprint().intersects(target) for i in a)
    # every sample of the cells around that intersects the box is found
    around = {s.id for c in g.cells_in(bbox) for s in g.samples_of_cell(c) if s.footprint().intersects(target)}
    assert around == set(a)


def test_random_points_fall_in_their_sample() -> None:
    g = Grid()
    rng = np.random.default_rng(0)
    for lon, lat in zip(rng.uniform(-180, 180, 300), rng.uniform(-60, 60, 300), strict=True):
        s = g.sample_at(lon, lat)
        assert s.footprint().buffer(1e-9).contains(shapely.Point(lon, lat)), s.id
        assert g.sample(s.id) == s


def test_snap_origin() -> None:
    exact = Grid().sample("282D_485L_3_3")
    snap = Grid(GridSpec(origin="snap")).sample("282D_485L_3_3")
    assert snap.x0 % 60 == 0 and snap.y0 % 60 == 0
    assert abs(snap.x0 - exact.x0) <= 30 and abs(snap.y0 - exact.y0) <= 30


@pytest.mark.parametrize("bad", ["282D_485L", "282X_485L_0_0", "282D_485L_4_0", "0D_1R_0_0", "1003U_0R_0_0",
                                 "282D_99999L_0_0", ""])
def test_bad_sample_ids(bad: str) -> None:
    with pytest.raises(GridError):
        Grid().sample(bad)


def test_bad_regions() -> None:
    with pytest.raises(GridError, match="WEST|west"):
        Grid().samples_in("nonsense")
    with pytest.raises(GridError, match="south"):
        Grid().samples_in((0, 10, 1, 5))
    with pytest.raises(GridError, match="latitude"):
        Grid().cell_at(0, 91)
    with pytest.raises(GridError, match="empty"):
        Grid().samples_in({"type": "Polygon", "coordinates": []})


# -- region enumeration: the vectorised Grid.sample_index against the original per-sample algorithm ------------------
def _reference_samples_in(grid: Grid, region) -> list[tuple[str, int, float, float]]:
    """The original enumeration (before vectorising), kept verbatim as the reference: candidate cells part by part and
    row by row, each cell's 16 sub-cells made one by one, kept if ``footprint(densify=2)`` intersects the region or
    the region shifted by 360 degrees. Returns (id, epsg, x0, y0) per sample."""
    from pyproj import Transformer

    from eo_dataset.spec.grid import region_geometry, row_lons

    spec = grid.spec
    geom = region_geometry(region)
    shifted = shapely.affinity.translate(geom, xoff=360.0)
    transformers: dict = {}

    def transformer(src: int, dst: int) -> Transformer:
        if (src, dst) not in transformers:
            transformers[src, dst] = Transformer.from_crs(src, dst, always_xy=True)
        return transformers[src, dst]

    def cells_in():
        pad_m = spec.margin_m + spec.patch_m
        for part in getattr(geom, "geoms", [geom]):
            w, s, e, n = part.bounds
            pad_lat = pad_m / 111_000.0
            s, n = max(s - pad_lat, -90.0), min(n + pad_lat, 90.0)
            r0 = max(int(np.searchsorted(grid._lats, s, side="right")) - 1, 0)
            r1 = max(int(np.searchsorted(grid._lats, n, side="right")) - 1, 0)
            for row in range(r0, r1 + 1):
                lons, _ = row_lons(spec.cell_size_m, row)
                coslat = max(math.cos(math.radians(min(abs(grid._lats[row]), 89.9))), 1e-3)
                pad_lon = min(pad_m / (111_000.0 * coslat), 180.0)
                lo, hi = w - pad_lon, e + pad_lon
                if hi - lo >= 360:
                    cols = range(len(lons))
                else:
                    c0 = int(np.searchsorted(lons, ((lo + 180) % 360) - 180, side="right")) - 1
                    ncols = int(math.ceil((hi - lo) / (360.0 / len(lons)))) + 2
                    cols = sorted({(c0 + i) % len(lons) for i in range(ncols)})
                for col in cols:
                    yield grid._cell_from_index(row, col)

    def make_sample(cell, a, b):
        epsg = utm_epsg(cell.lon, cell.lat)
        x, y = transformer(4326, epsg).transform(cell.lon, cell.lat)
        left, top = x - spec.margin_m, y + spec.cell_size_m + spec.margin_m
        x0, y0 = left + spec.patch_m * a, top - spec.patch_m * b
        if spec.origin == "snap":
            x0, y0 = round(x0 / spec.snap_m) * spec.snap_m, round(y0 / spec.snap_m) * spec.snap_m
        return f"{cell.name}_{a}_{b}", epsg, float(x0), float(y0)

    def footprint(epsg, x0, y0, densify=2):
        xmin, ymin, xmax, ymax = x0, y0 - spec.patch_m, x0 + spec.patch_m, y0
        t = np.linspace(0.0, 1.0, densify + 1)[:-1]
        xs = np.concatenate([xmin + (xmax - xmin) * t, np.full_like(t, xmax), xmax - (xmax - xmin) * t,
                             np.full_like(t, xmin)])
        ys = np.concatenate([np.full_like(t, ymax), ymax - (ymax - ymin) * t, np.full_like(t, ymin),
                             ymin + (ymax - ymin) * t])
        lon, lat = transformer(epsg, 4326).transform(xs, ys)
        lon = np.asarray(lon)
        if lon.max() - lon.min() > 180:
            lon = np.where(lon < 0, lon + 360, lon)
        return shapely.Polygon(np.column_stack([lon, lat]))

    seen, out = set(), []
    for cell in cells_in():
        if cell.name in seen:
            continue
        seen.add(cell.name)
        for b in range(spec.subcells):
            for a in range(spec.subcells):
                sid, epsg, x0, y0 = make_sample(cell, a, b)
                fp = footprint(epsg, x0, y0)
                if fp.intersects(geom) or fp.intersects(shifted):
                    out.append((sid, epsg, x0, y0))
    return out


def _polygon(*coords):
    return {"type": "Polygon", "coordinates": [[*coords, coords[0]]]}


REGIONS = {
    "bavaria": (11.9, 47.8, 12.0, 47.85),
    "interior cells": (0.0, 40.0, 0.6, 40.5),
    "antimeridian bbox": (179.8, -0.3, -179.8, 0.3),
    "antimeridian north": (179.9, 65.0, -179.9, 65.3),
    "past 180 (shapely)": shapely.box(179.7, 10.0, 180.3, 10.3),
    "utm edge at the equator": (5.8, -0.2, 6.2, 0.2),
    "greenwich and the equator": (-0.2, -0.2, 0.2, 0.2),
    "norway 32V west edge": (2.7, 55.8, 3.3, 56.2),
    "norway 32V east edge": (11.7, 63.8, 12.3, 64.2),
    "svalbard 31/33": (8.5, 71.8, 9.5, 72.2),
    "svalbard top edge": (20.5, 83.7, 21.5, 84.3),
    "svalbard 35/37": (32.5, 78.0, 33.5, 78.3),
    "svalbard 37 east": (41.5, 79.0, 42.5, 79.2),
    "north pole": (-10.0, 89.6, 10.0, 90.0),
    "south polar cap": (-180.0, -90.0, 180.0, -89.7),
    "geojson polygon": _polygon([10.0, 45.0], [11.2, 45.3], [10.7, 46.2], [10.2, 45.8]),
    "geojson polygon, interior cells": _polygon([20.0, 10.0], [21.6, 10.2], [21.2, 11.5], [20.3, 11.2]),
    "geojson feature collection across the antimeridian": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {},
         "geometry": _polygon([179.7, -17.0], [180.0, -17.0], [180.0, -16.7], [179.8, -16.8])},
        {"type": "Feature", "properties": {},
         "geometry": _polygon([-180.0, -17.0], [-179.8, -17.0], [-179.9, -16.8], [-180.0, -16.7])}]},
}


@pytest.mark.parametrize("name", list(REGIONS))
def test_sample_index_equals_the_reference_enumeration(name: str) -> None:
    g = Grid()
    expected = _reference_samples_in(g, REGIONS[name])
    index = g.sample_index(REGIONS[name])
    assert len(expected) > 0
    assert index.ids() == [e[0] for e in expected]
    assert [(s.id, s.epsg, s.x0, s.y0) for s in index] == expected  # the same floats, bit for bit
    assert [s.id for s in g.samples_in(REGIONS[name])] == [e[0] for e in expected]


@pytest.mark.parametrize("spec", [GridSpec(origin="snap"), GridSpec(subcells=2, patch_px=528)])
@pytest.mark.parametrize("name", ["antimeridian bbox", "norway 32V west edge", "geojson polygon"])
def test_sample_index_equals_the_reference_for_other_grids(spec: GridSpec, name: str) -> None:
    g = Grid(spec)
    assert [(s.id, s.epsg, s.x0, s.y0) for s in g.sample_index(REGIONS[name])] == \
        _reference_samples_in(g, REGIONS[name])


def test_sample_index_is_a_lazy_sequence() -> None:
    import pickle

    g = Grid()
    calls = []
    index = g.sample_index((11.5, 47.5, 12.5, 48.0), progress=lambda done, total: calls.append((done, total)),
                           chunk_cells=20)
    samples = g.samples_in((11.5, 47.5, 12.5, 48.0))
    assert isinstance(samples, list) and len(index) == len(samples) > 700
    assert calls[-1][0] == calls[-1][1] and len(calls) > 2  # progress per chunk of cells, ending at the total
    assert index[0] == samples[0] and index[-1] == samples[-1] and index[17] == samples[17]
    assert index[8:24] == samples[8:24] and index[::500] == samples[::500]
    assert list(index) == samples and index.ids() == [s.id for s in samples]
    assert index[5] == g.sample(index[5].id)
    with pytest.raises(IndexError):
        index[len(index)]
    again = pickle.loads(pickle.dumps(index))
    assert again.ids() == index.ids()
    assert len(g.sample_index((0.0, 10.0, 0.0001, 10.0001))) >= 1
    assert "samples in" in repr(index)


def test_a_large_region_is_counted_fast() -> None:
    """0,40,10,50 (141,048 samples) took 26 s one sample at a time; the index takes well under a second alone."""
    import time

    t0 = time.perf_counter()
    n = len(Grid().sample_index((0.0, 40.0, 10.0, 50.0)))
    assert n == 141_048
    assert time.perf_counter() - t0 < 10  # generous: shared, busy test machines
