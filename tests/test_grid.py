"""The sample grid against Major TOM / TerraMesh: real tiles to the millimetre, poles, antimeridian, UTM edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely

from eo_dataset import Grid, GridError, utm_epsg
from eo_dataset.grid import GridSpec
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
