"""The TorchGeo adapter: TorchGeo samplers and DataLoader over the cube, values checked against the cube, batches
that mix the demo cube's two UTM zones, and the TorchGeo example of docs/loading.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.crs
import shapely
import torch
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from torch.utils.data import DataLoader
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import GridGeoSampler, PreChippedGeoSampler, RandomGeoSampler

from eo_dataset import CubeError
from eo_dataset.torch import CubeDataset, CubeGeoDataset

DOCS = Path(__file__).resolve().parents[3] / "docs" / "loading.md"


@pytest.fixture(scope="module")
def geo(demo_cube: Path) -> CubeGeoDataset:
    return CubeGeoDataset(demo_cube, image=["s2l2a", "landsat"], mask="lulc")


@pytest.fixture(scope="module")
def epsg(demo_cube: Path) -> np.ndarray:
    return xr.open_zarr(demo_cube).epsg.values


@pytest.fixture(scope="module")
def dem_tifs(demo_cube: Path, geo: CubeGeoDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GeoTIFF of the cube's DEM per indexed sample, each on the sample's own grid in its own UTM zone."""
    cube = xr.open_zarr(demo_cube)
    out = tmp_path_factory.mktemp("dem")
    for i in geo.index["sample"].tolist():
        profile = {"driver": "GTiff", "width": 88, "height": 88, "count": 1, "dtype": "float32",
                   "crs": f"EPSG:{int(cube.epsg.values[i])}",
                   "transform": Affine(30, 0, float(cube.x0.values[i]), 0, -30, float(cube.y0.values[i]))}
        with rasterio.open(out / f"dem_{i}.tif", "w", **profile) as dst:
            dst.write(cube.dem.values[i])
    return out


class Dem(RasterDataset):
    filename_glob = "dem_*.tif"
    resampling = Resampling.nearest  # (TorchGeo's default for float rasters is bilinear)


def _zone(geo: CubeGeoDataset, epsg: np.ndarray, query: tuple[slice, slice, slice]) -> int:
    """The UTM zone (EPSG) of the indexed sample covering most of the query."""
    window = shapely.box(query[0].start, query[1].start, query[0].stop, query[1].stop)
    row = int(np.argmax(geo.index.geometry.intersection(window).area.to_numpy()))
    return int(epsg[int(geo.index["sample"].iloc[row])])


def _mixes_zones(geo: CubeGeoDataset, epsg: np.ndarray, batch: dict) -> bool:
    return len({_zone(geo, epsg, q) for q in batch["bounds"]}) > 1


def test_index_is_one_patch_sized_square_per_sample(geo: CubeGeoDataset, demo_cube: Path) -> None:
    cube = xr.open_zarr(demo_cube)
    complete = (cube.s2l2a_available & cube.landsat_available & cube.lulc_available).values
    assert len(geo) == int(complete.sum()) and geo.index["sample"].tolist() == np.flatnonzero(complete).tolist()
    assert geo.crs.to_epsg() == 32632 and geo.res == (10.0, 10.0)
    zones = cube.epsg.values[geo.index["sample"].to_numpy()]
    assert set(zones.tolist()) == {32632, 32633}  # the demo cube spans two UTM zones
    for (_, row), zone in zip(geo.index.iterrows(), zones, strict=True):
        i = int(row["sample"])
        x0, y0 = float(cube.x0.values[i]), float(cube.y0.values[i])
        xmin, ymin, xmax, ymax = row.geometry.bounds
        assert (xmax - xmin, ymax - ymin) == pytest.approx((2640, 2640))
        if zone == 32632:  # the exact footprint
            assert row.geometry.bounds == pytest.approx((x0, y0 - 2640, x0 + 2640, y0))
        else:  # centred on the sample's centre
            centre = Transformer.from_crs(int(zone), 32632, always_xy=True).transform(x0 + 1320, y0 - 1320)
            assert ((xmin + xmax) / 2, (ymin + ymax) / 2) == pytest.approx(centre)


def test_prechipped_batches_mix_zones(geo: CubeGeoDataset, epsg: np.ndarray) -> None:
    sampler = PreChippedGeoSampler(geo, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = list(DataLoader(geo, sampler=sampler, batch_size=8, collate_fn=stack_samples))
    assert len(batches) == 3 and any(_mixes_zones(geo, epsg, b) for b in batches)
    for b in batches:
        assert b["image"].shape == (8, 18, 264, 264) and b["image"].dtype == torch.float32
        assert b["mask"].shape == (8, 264, 264) and b["mask"].dtype == torch.int64
        assert len(b["crs"]) == 8 and len(b["bounds"]) == 8


def test_prechipped_sampler_returns_the_samples(geo: CubeGeoDataset, demo_cube: Path) -> None:
    """Samples in the dataset's CRS: exact copies of the cube."""
    cube = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"])
    checked = 0
    for query in PreChippedGeoSampler(geo):
        b = geo.index.geometry.bounds
        hit = geo.index[(b["minx"] == query[0].start) & (b["maxy"] == query[1].stop)]
        assert len(hit) == 1
        i = int(hit["sample"].iloc[0])
        if f"EPSG:{geo.crs.to_epsg()}" != cube[i]["crs"]:
            continue  # a sample of the other UTM zone is warped, not copied: see the next test
        s, ref = geo[query], cube[i]
        assert torch.equal(s["image"][:12], ref["s2l2a"])
        # the 30 m Landsat pixels repeated onto the 10 m grid, exactly
        assert torch.equal(s["image"][12:], ref["landsat"].repeat_interleave(3, 1).repeat_interleave(3, 2))
        assert torch.equal(s["mask"], ref["lulc"][0].masked_fill(~ref["lulc_valid"], 0))
        checked += 1
    assert checked >= 5


def test_prechipped_sample_of_another_zone_is_that_sample_warped(demo_cube: Path, epsg: np.ndarray) -> None:
    """Each output pixel holds the value of the sample's own pixel under its centre (nearest), for every modality
    and resolution; off by one pixel only where the centre falls within 2 % of a pixel of a pixel edge (GDAL's
    warper approximates the transformation to 1/8 pixel)."""
    geo = CubeGeoDataset(demo_cube, image=["s2l2a", "landsat"], mask="lulc", normalize=False)
    cube = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"], normalize=False)
    crs = geo.crs.to_epsg()
    other = [(q, int(i)) for q, i in zip(PreChippedGeoSampler(geo), geo.index["sample"], strict=True) if epsg[i] != crs]
    assert len(other) == 8
    for query, i in other[::3]:
        s, ref = geo[query], cube[i]
        assert s["image"].shape == (18, 264, 264) and s["mask"].shape == (264, 264)
        centres = query[0].start + 10 * (np.arange(264) + 0.5), query[1].stop - 10 * (np.arange(264) + 0.5)
        x, y = Transformer.from_crs(crs, int(epsg[i]), always_xy=True).transform(*np.meshgrid(*centres))
        for got, data, valid, res in [(s["image"][:12], ref["s2l2a"], ref["s2l2a_valid"], 10),
                                      (s["image"][12:], ref["landsat"], ref["landsat_valid"], 30),
                                      (s["mask"][None], ref["lulc"], ref["lulc_valid"], 10)]:
            col, row = (x - cube.x0[i]) / res, (cube.y0[i] - y) / res
            n = data.shape[-1]
            inside = (col >= 0) & (col < n) & (row >= 0) & (row < n)
            assert inside.mean() > 0.95  # only the corners of the square lie outside the sample
            c, r = np.floor(col[inside]).astype(int), np.floor(row[inside]).astype(int)
            own = valid.numpy()[r, c]
            expected = data.numpy()[:, r, c][:, own]
            differ = (got.numpy()[:, inside][:, own] != expected).any(axis=0)
            edge = np.minimum(np.abs(col - np.round(col)), np.abs(row - np.round(row)))[inside][own]
            assert own.any() and not (differ & (edge > 0.02)).any()


def test_random_and_grid_samplers(geo: CubeGeoDataset, epsg: np.ndarray) -> None:
    sampler = RandomGeoSampler(geo, size=66, length=12, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(geo, sampler=sampler, batch_size=6, num_workers=2, collate_fn=stack_samples,
                        multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 2 and any(_mixes_zones(geo, epsg, b) for b in batches)
    for b in batches:
        assert b["image"].shape == (6, 18, 66, 66) and b["mask"].shape == (6, 66, 66)
        assert torch.isfinite(b["image"]).all() and (b["image"] != 0).any()
    grid = GridGeoSampler(geo, size=132, stride=132)
    assert len(grid) == 4 * len(geo)  # 2 x 2 windows in every sample's square, in either zone
    queries = list(grid)
    zones = [_zone(geo, epsg, q) for q in queries]
    start = next(k for k in range(len(zones) - 1) if zones[k] != zones[k + 1]) - 3  # 8 windows across the zones
    batch = stack_samples([geo[q] for q in queries[start:start + 8]])
    assert batch["image"].shape == (8, 18, 132, 132) and _mixes_zones(geo, epsg, batch)


def test_joins_a_torchgeo_raster_dataset(geo: CubeGeoDataset, dem_tifs: Path, demo_cube: Path,
                                         epsg: np.ndarray) -> None:
    """``geo & raster`` over rasters in both zones: batches mixing zones, and the raster's pixels line up with
    the cube's."""
    cube = xr.open_zarr(demo_cube)
    joined = geo & Dem(paths=str(dem_tifs))
    sampler = RandomGeoSampler(joined, size=64, length=16, generator=torch.Generator().manual_seed(0))
    batches = list(DataLoader(joined, sampler=sampler, batch_size=8, collate_fn=stack_samples))
    assert any(_mixes_zones(geo, epsg, b) for b in batches)
    for b in batches:
        assert b["image"].shape == (8, 18 + 1, 64, 64) and b["mask"].shape == (8, 64, 64)
    grid = list(GridGeoSampler(joined, size=132, stride=132))
    assert {round((q[0].stop - q[0].start) / 10) for q in grid} == {132}
    # a sample of the dataset's zone that no other sample overlaps: its DEM band is the cube's, pixel for pixel
    alone = [i for i, g in zip(geo.index["sample"], geo.index.geometry, strict=True)
             if epsg[i] == geo.crs.to_epsg() and (geo.index.geometry.intersection(g).area > 1).sum() == 1]
    i = int(alone[0])
    x0, y0 = float(cube.x0.values[i]), float(cube.y0.values[i])
    t = geo.index.index[int(np.flatnonzero(geo.index["sample"] == i)[0])]
    sample = joined[x0:x0 + 2640, y0 - 2640:y0, t.left:t.right]
    dem = torch.from_numpy(cube.dem.values[i][0]).repeat_interleave(3, 0).repeat_interleave(3, 1)
    assert torch.equal(sample["image"][-1], dem)


def test_joined_into_another_crs_is_reindexed(demo_cube: Path, dem_tifs: Path, epsg: np.ndarray) -> None:
    """``raster & geo`` re-projects ``geo`` into the raster's CRS (IntersectionDataset sets ``crs``): the index
    is rebuilt there, with patch-sized squares."""
    geo33 = CubeGeoDataset(demo_cube, image=["s2l2a", "landsat"], mask="lulc", crs=32633)
    assert geo33.crs.to_epsg() == 32633
    joined = Dem(paths=str(dem_tifs), crs=rasterio.crs.CRS.from_epsg(32632)) & geo33
    assert geo33.crs.to_epsg() == 32632 == joined.crs.to_epsg() and geo33.res == (30.0, 30.0)
    bounds = geo33.index.geometry.bounds
    assert np.allclose(bounds["maxx"] - bounds["minx"], 2640) and np.allclose(bounds["maxy"] - bounds["miny"], 2640)
    sampler = RandomGeoSampler(joined, size=44, length=12, generator=torch.Generator().manual_seed(0))
    batch = stack_samples([joined[q] for q in sampler])
    assert batch["image"].shape == (12, 1 + 18, 44, 44) and _mixes_zones(geo33, epsg, batch)


def _docs_snippet() -> str:
    """The python block of the TorchGeo section of docs/loading.md."""
    section = DOCS.read_text().split("\n## TorchGeo\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "expected one python block in the TorchGeo section of docs/loading.md"
    return blocks[0]


def test_docs_torchgeo_example_runs_on_batches_that_mix_zones(demo_cube: Path, epsg: np.ndarray) -> None:
    code = _docs_snippet()
    assert '"demo.zarr"' in code
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code.replace('"demo.zarr"', repr(str(demo_cube))), str(DOCS), "exec"), scope)  # noqa: S102
    geo, loader, patches = scope["geo"], scope["loader"], scope["patches"]
    batches = list(loader)  # every sample once
    assert [len(b["bounds"]) for b in batches] == [8, 8, 8] and any(_mixes_zones(geo, epsg, b) for b in batches)
    for b in batches:
        assert b["image"].shape == (8, 18, 264, 264) and b["mask"].shape == (8, 264, 264)
    mixed = 0
    for k, b in enumerate(patches):
        assert b["image"].shape == (8, 18, 128, 128) and b["mask"].shape == (8, 128, 128)
        mixed += _mixes_zones(geo, epsg, b)
        if mixed and k >= 2:
            break
    assert mixed


def test_adapter_errors(demo_cube: Path, geo: CubeGeoDataset) -> None:
    with pytest.raises(CubeError, match=r"unknown modalities \['sar'\]"):
        CubeGeoDataset(demo_cube, image=["sar"])
    with pytest.raises(CubeError, match="both the mask and an image modality"):
        CubeGeoDataset(demo_cube, image=["lulc"], mask="lulc")
    with pytest.raises(CubeError, match="resampling must be one of"):
        CubeGeoDataset(demo_cube, image=["dem"], resampling="magic")
    x, y, t = geo.bounds
    with pytest.raises(IndexError, match="does not intersect any sample"):
        geo[x.start - 5000:x.start - 4000, y.start - 5000:y.start - 4000, t.start:t.stop]
