"""The TorchGeo adapter: TorchGeo samplers and DataLoader over the cube, values checked against the cube."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from torch.utils.data import DataLoader
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import GridGeoSampler, PreChippedGeoSampler, RandomGeoSampler

from eo_dataset import CubeError
from eo_dataset.torch import CubeDataset, CubeGeoDataset


@pytest.fixture(scope="module")
def geo(demo_cube: Path) -> CubeGeoDataset:
    return CubeGeoDataset(demo_cube, image=["s2l2a", "landsat"], mask="lulc")


def test_index_is_one_footprint_per_sample(geo: CubeGeoDataset, demo_cube: Path) -> None:
    cube = xr.open_zarr(demo_cube)
    complete = (cube.s2l2a_available & cube.landsat_available & cube.lulc_available).values
    assert len(geo) == int(complete.sum()) and geo.index["sample"].tolist() == np.flatnonzero(complete).tolist()
    assert geo.crs.to_epsg() in (32632, 32633) and geo.res == (10.0, 10.0)
    row = geo.index.iloc[0]
    i = int(row["sample"])
    if int(cube.epsg.values[i]) == geo.crs.to_epsg():
        x0, y0 = float(cube.x0.values[i]), float(cube.y0.values[i])
        assert row.geometry.bounds == pytest.approx((x0, y0 - 2640, x0 + 2640, y0))


def test_prechipped_sampler_returns_the_samples(geo: CubeGeoDataset, demo_cube: Path) -> None:
    cube = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"])
    loader = DataLoader(geo, sampler=PreChippedGeoSampler(geo), batch_size=4, collate_fn=stack_samples)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 18, 264, 264) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 264, 264) and batch["mask"].dtype == torch.int64
    assert len(batch["crs"]) == 4 and len(batch["bounds"]) == 4
    checked = 0
    for query in PreChippedGeoSampler(geo):
        b = geo.index.geometry.bounds
        hit = geo.index[(b["minx"] == query[0].start) & (b["maxy"] == query[1].stop)]
        assert len(hit) == 1
        i = int(hit["sample"].iloc[0])
        if f"EPSG:{geo.crs.to_epsg()}" != cube[i]["crs"]:
            continue  # a sample of the other UTM zone is warped, not copied
        s, ref = geo[query], cube[i]
        assert torch.equal(s["image"][:12], ref["s2l2a"])
        # the 30 m Landsat pixels repeated onto the 10 m grid, exactly
        assert torch.equal(s["image"][12:], ref["landsat"].repeat_interleave(3, 1).repeat_interleave(3, 2))
        assert torch.equal(s["mask"], ref["lulc"][0].masked_fill(~ref["lulc_valid"], 0))
        checked += 1
    assert checked >= 5


def test_random_and_grid_samplers(geo: CubeGeoDataset) -> None:
    torch.manual_seed(0)
    loader = DataLoader(geo, sampler=RandomGeoSampler(geo, size=66, length=6), batch_size=3, num_workers=2,
                        collate_fn=stack_samples, multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 2
    for b in batches:
        assert b["image"].shape == (3, 18, 66, 66) and b["mask"].shape == (3, 66, 66)
        assert torch.isfinite(b["image"]).all() and (b["image"] != 0).any()
    grid = GridGeoSampler(geo, size=132, stride=132)
    assert len(grid) >= 4 * len(geo)
    sample = geo[next(iter(grid))]
    assert sample["image"].shape == (18, 132, 132)


def test_joins_a_torchgeo_raster_dataset(geo: CubeGeoDataset, demo_cube: Path, tmp_path: Path) -> None:
    cube = xr.open_zarr(demo_cube)
    crs = geo.crs.to_epsg()
    for i in geo.index["sample"].tolist()[:4]:
        if int(cube.epsg.values[i]) != crs:
            continue
        arr = cube.dem.values[i]
        profile = {"driver": "GTiff", "width": 88, "height": 88, "count": 1, "dtype": "float32",
                   "crs": f"EPSG:{crs}", "transform": Affine(30, 0, float(cube.x0.values[i]), 0, -30,
                                                             float(cube.y0.values[i]))}
        with rasterio.open(tmp_path / f"dem_{i}.tif", "w", **profile) as dst:
            dst.write(arr)

    class Dem(RasterDataset):
        filename_glob = "dem_*.tif"

    joined = geo & Dem(paths=str(tmp_path))
    query = next(iter(PreChippedGeoSampler(joined)))
    sample = joined[query]
    assert sample["image"].shape[0] == 18 + 1 and "mask" in sample


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
