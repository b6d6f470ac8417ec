"""CubeDataset: layout, values against the cube, aligned crops, normalisation, geo metadata, errors, pickling."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from eo_dataset import CubeError, Grid, GridSpec
from eo_dataset.torch import CubeDataset, Normalize, band_stats


@pytest.fixture(scope="module")
def cube(demo_cube: Path) -> xr.Dataset:
    return xr.open_zarr(demo_cube).load()


@pytest.fixture(scope="module")
def raw(demo_cube: Path) -> CubeDataset:
    return CubeDataset(demo_cube, normalize=False)


@pytest.fixture(scope="module")
def norm(demo_cube: Path) -> CubeDataset:
    return CubeDataset(demo_cube)


def test_layout_shapes_dtypes(norm: CubeDataset, cube: xr.Dataset) -> None:
    assert len(norm) == 32 and norm.modalities == list(cube.attrs["modalities"])
    assert {"s2l2a", "s1rtc", "landsat", "dem", "lulc", "canopy"} <= set(norm.modalities)
    i = int(np.flatnonzero(norm.availability.all(axis=1))[0])
    s = norm[i]
    for m in norm.modalities:
        side = 264 // round(cube[m].attrs["resolution_m"] / 10)
        assert s[m].shape == (cube.sizes[f"{m}_band"], side, side), m
        kind = cube[m].attrs["kind"]
        stored = torch.from_numpy(np.zeros(0, cube[m].dtype)).dtype
        assert s[m].dtype == {"continuous": torch.float32, "categorical": torch.int64}.get(kind, stored), m
        if kind not in ("continuous", "categorical"):  # e.g. osm presence layers: stored values, 0 where not valid
            valid = cube[f"{m}_valid"].values[i]
            assert np.array_equal(s[m].numpy()[:, valid], cube[m].values[i][:, valid])
            assert (s[m].numpy()[:, ~valid] == 0).all()
        assert s[f"{m}_valid"].shape == (side, side) and s[f"{m}_valid"].dtype == torch.bool
        assert s[f"{m}_available"].dtype == torch.bool and bool(s[f"{m}_available"])
        assert np.array_equal(s[f"{m}_valid"].numpy(), cube[f"{m}_valid"].values[i]), m
        assert norm.shapes[m][0] == tuple(s[m].shape) and norm.shapes[m][1] == s[m].dtype
    assert s["landsat"].shape[1:] == (88, 88) and s["lulc"].dtype == torch.int64
    assert s["sample_id"] == str(cube.sample_id.values[i]) and s["index"] == i
    assert s["caption"] == (str(cube.caption.values[i]) if "caption" in cube else "")


def test_stored_values_match_the_cube(raw: CubeDataset, cube: xr.Dataset) -> None:
    for i in range(len(raw)):
        s = raw[i]
        for m in raw.modalities:
            if bool(cube[f"{m}_available"].values[i]):
                assert s[m].numpy().dtype == cube[m].dtype, m
                assert np.array_equal(s[m].numpy(), cube[m].values[i]), (i, m)
                assert np.array_equal(s[f"{m}_valid"].numpy(), cube[f"{m}_valid"].values[i]), (i, m)
                assert np.isfinite(float(s[f"{m}_time"]))
            else:  # honest: no tensor at all, a False flag and no time
                assert m not in s and f"{m}_valid" not in s
                assert not bool(s[f"{m}_available"]) and np.isnan(float(s[f"{m}_time"]))


def test_batches_read_in_spans_match_the_cube(raw: CubeDataset, cube: xr.Dataset) -> None:
    """Unsorted indices, repeats, gaps and several shards in one batch: every row is its own sample."""
    indices = [3, 0, 17, 17, 9, 31, 2, 30, 12]
    batch = raw.get_batch(indices)
    for j, i in enumerate(indices):
        assert batch["sample_id"][j] == str(cube.sample_id.values[i])
        assert batch["caption"][j] == str(cube.caption.values[i])
        for m in raw.modalities:
            have = bool(cube[f"{m}_available"].values[i])
            assert bool(batch[f"{m}_available"][j]) is have
            want = cube[m].values[i] if have else np.zeros_like(cube[m].values[i])
            assert np.array_equal(batch[m][j].numpy(), want), (i, m)
            assert np.array_equal(batch[f"{m}_valid"][j].numpy(), cube[f"{m}_valid"].values[i] & have), (i, m)


def test_worker_batches_are_one_shared_buffer(norm: CubeDataset) -> None:
    """In a worker a batch is carved from one shared-memory buffer (one file descriptor to send), same values."""
    indices = [5, 1, 9, 30]
    torch.manual_seed(0)
    shared = norm._read(indices, shared=True)
    torch.manual_seed(0)
    private = norm._read(indices, shared=False)
    tensors = {k: v for k, v in shared.items() if isinstance(v, torch.Tensor)}
    assert len({v.untyped_storage().data_ptr() for v in tensors.values()}) == 1
    assert shared.lease.buffer.shared  # a memfd, sent by the pool (see test_buffers.py), not by torch
    for k, v in tensors.items():
        assert v.data_ptr() % 64 == 0, k
        assert torch.equal(v, private[k]) or torch.allclose(v, private[k], equal_nan=True), k
    assert shared["sample_id"] == private["sample_id"] and shared["caption"] == private["caption"]


def test_spans() -> None:
    from eo_dataset.torch.dataset import read_spans

    assert read_spans([5, 3, 4, 3], 8) == [(3, 6)]
    assert read_spans([7, 8], 8) == [(7, 8), (8, 9)]  # never across a shard boundary
    assert read_spans([0, 2, 4], 8) == [(0, 5)]  # 5 <= 2 x 3: one read, two unwanted chunks decoded
    assert read_spans([0, 1, 7], 8) == [(0, 2), (7, 8)]  # sparse: one read per run
    assert read_spans([], 8) == []


def test_workers_fork_after_the_parent_read_a_batch(demo_cube: Path) -> None:
    """zarrs decodes with one thread per process: a thread pool would not survive the DataLoader's fork."""
    import subprocess
    import sys

    code = f"""
import torch
from eo_dataset.torch import CubeDataset, ShardSampler
ds = CubeDataset({str(demo_cube)!r}, normalize=False, codec_pipeline="zarrs")
ds.get_batch(range(8))  # several chunks per selection, in the parent
loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=ShardSampler(ds), collate_fn=ds.collate_fn,
                                     num_workers=2, multiprocessing_context="fork")
print(sum(len(b["sample_id"]) for b in loader))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(CubeDataset(demo_cube, normalize=False)))


def test_normalisation_uses_the_cube_stats(norm: CubeDataset, cube: xr.Dataset) -> None:
    i = int(np.flatnonzero(~cube.s2l2a_valid.values.all(axis=(1, 2)) & cube.s2l2a_available.values)[0])
    bands, mean, std = band_stats(cube.attrs, "s2l2a")
    assert bands == list(cube.s2l2a_band.values)
    stats = cube.attrs["stats"]["s2l2a"]["bands"]["B04"]
    assert mean[3] == pytest.approx(stats["mean"]) and std[3] == pytest.approx(stats["std"])
    s = norm[i]
    valid = cube.s2l2a_valid.values[i]
    expect = (cube.s2l2a.values[i].astype(np.float64) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    got = s["s2l2a"].numpy()
    np.testing.assert_allclose(got[:, valid], expect[:, valid], rtol=1e-5, atol=1e-5)
    assert (got[:, ~valid] == 0).all() and (~valid).any()
    # categorical: class ids, not normalised
    j = int(np.flatnonzero(cube.lulc_available.values)[0])
    assert np.array_equal(norm[j]["lulc"].numpy(), cube.lulc.values[j].astype(np.int64))


def test_normalize_module_round_trip(norm: CubeDataset) -> None:
    n = norm.normalizer
    continuous = {m for m, a in norm.attrs["modalities"].items() if a["kind"] == "continuous"}
    assert set(n.modalities) == continuous and "lulc" not in continuous  # class ids are not normalised
    x = torch.rand(2, 12, 5, 5) * 3000
    back = n.denormalize("s2l2a", n.normalize("s2l2a", x))
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-2)
    again = Normalize.from_dict(n.to_dict())
    torch.testing.assert_close(again.mean("dem"), n.mean("dem"))
    torch.testing.assert_close(again.std("dem"), n.std("dem"))
    assert n.to_dict()["s2l2a"]["bands"][3] == "B04"
    batch = {"s2l2a": x, "s2l2a_valid": torch.ones(2, 5, 5, dtype=torch.bool), "other": 1}
    out = n(batch)
    assert out["other"] == 1 and out["s2l2a"].dtype == torch.float32
    with pytest.raises(CubeError, match="has no 'stats'"):
        band_stats({k: v for k, v in norm.attrs.items() if k != "stats"}, "s2l2a")  # a cube built before stats
    with pytest.raises(CubeError, match="not an eo-dataset cube"):
        band_stats({"modalities": {}}, "s2l2a")
    with pytest.raises(CubeError, match="not in the cube"):
        Normalize.from_cube(norm.attrs, ["nope"])


def test_center_crop_aligned_across_resolutions(demo_cube: Path, cube: xr.Dataset) -> None:
    ds = CubeDataset(demo_cube, ["s2l2a", "landsat", "dem"], crop=120, crop_mode="center", normalize=False)
    i = int(np.flatnonzero(ds.availability.all(axis=1))[0])
    s = ds[i]
    assert s["s2l2a"].shape == (12, 120, 120) and s["landsat"].shape == (6, 40, 40)
    r0 = 72  # (264 - 120) / 2 = 72, already a multiple of 3
    assert np.array_equal(s["s2l2a"].numpy(), cube.s2l2a.values[i][:, r0:r0 + 120, r0:r0 + 120])
    assert np.array_equal(s["landsat"].numpy(), cube.landsat.values[i][:, 24:64, 24:64])
    assert np.array_equal(s["dem_valid"].numpy(), cube.dem_valid.values[i][24:64, 24:64])
    x0, y0 = float(cube.x0.values[i]), float(cube.y0.values[i])
    assert s["bounds"].tolist() == pytest.approx([x0 + 720, y0 - 1920, x0 + 1920, y0 - 720])


def test_random_crops_aligned_and_reproducible(demo_cube: Path, cube: xr.Dataset) -> None:
    ds = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"], crop=99, normalize=False)
    i = int(np.flatnonzero(ds.availability.all(axis=1))[0])
    x0, y0 = float(cube.x0.values[i]), float(cube.y0.values[i])
    offsets = set()
    torch.manual_seed(0)
    for _ in range(6):
        s = ds[i]
        xmin, ymin, xmax, ymax = s["bounds"].tolist()
        c0, r0 = round((xmin - x0) / 10), round((y0 - ymax) / 10)
        assert c0 % 3 == 0 and r0 % 3 == 0 and xmax - xmin == 990 and ymax - ymin == 990
        offsets.add((r0, c0))
        # the 10 m and the 30 m crops are the same ground: both match the cube at the same offset
        assert np.array_equal(s["s2l2a"].numpy(), cube.s2l2a.values[i][:, r0:r0 + 99, c0:c0 + 99])
        assert np.array_equal(s["lulc"].numpy(), cube.lulc.values[i][:, r0:r0 + 99, c0:c0 + 99])
        r3, c3 = r0 // 3, c0 // 3
        assert np.array_equal(s["landsat"].numpy(), cube.landsat.values[i][:, r3:r3 + 33, c3:c3 + 33])
    assert len(offsets) > 1
    torch.manual_seed(0)
    first = ds[i]["bounds"]
    torch.manual_seed(0)
    assert torch.equal(ds[i]["bounds"], first)


def test_crop_and_modality_errors(demo_cube: Path) -> None:
    with pytest.raises(CubeError, match=r"not a whole number of pixels at 30 m.*of 3 px \(e\.g\. 255 or 258\)"):
        CubeDataset(demo_cube, ["s2l2a", "landsat"], crop=256)
    CubeDataset(demo_cube, ["s2l2a", "lulc"], crop=256)  # 10 m only: any size fits
    with pytest.raises(CubeError, match=r"crop must be an int in 1\.\.264"):
        CubeDataset(demo_cube, crop=300)
    with pytest.raises(CubeError, match="crop_mode must be"):
        CubeDataset(demo_cube, crop=120, crop_mode="corner")
    with pytest.raises(CubeError, match=r"unknown modalities \['s2'\]; the cube has \['s2l2a', 's1rtc'"):
        CubeDataset(demo_cube, ["s2", "dem"])
    with pytest.raises(CubeError, match="twice"):
        CubeDataset(demo_cube, ["dem", "dem"])
    with pytest.raises(CubeError, match="not a Zarr v3 store"):
        CubeDataset(demo_cube.parent / "nothing.zarr")
    with pytest.raises(CubeError, match="codec_pipeline must be one of"):
        CubeDataset(demo_cube, codec_pipeline="fast")
    ds = CubeDataset(demo_cube, ["dem"])
    with pytest.raises(IndexError, match="out of range"):
        ds[32]
    assert ds[-1]["index"] == 31


def test_geo_metadata(raw: CubeDataset, cube: xr.Dataset, demo_recipe) -> None:
    grid = Grid(GridSpec(**{k: v for k, v in cube.attrs["grid"].items() if k in GridSpec.__dataclass_fields__}))
    assert grid.spec == demo_recipe.grid.spec()
    epsgs = set()
    for i in (0, 5, 17, 31):
        s = raw[i]
        sample = grid.sample(s["sample_id"])
        assert s["crs"] == sample.crs == f"EPSG:{int(cube.epsg.values[i])}"
        assert s["bounds"].tolist() == pytest.approx(list(sample.bounds), abs=1e-6)
        t = cube.anchor_time.values[i]
        if np.isnat(t):
            assert np.isnan(float(s["time"]))
        else:
            assert np.datetime64(int(round(float(s["time"]) * 1e6)), "us") == t.astype("datetime64[us]")
        epsgs.add(s["crs"])
    assert epsgs == {"EPSG:32632", "EPSG:32633"}


def test_caption_empty_or_read(demo_cube: Path, tmp_path: Path) -> None:
    copy = tmp_path / "captioned.zarr"
    shutil.copytree(demo_cube, copy)
    n = xr.open_zarr(copy).sizes["sample"]
    group = zarr.open_group(copy, mode="r+")
    if "caption" in group:
        del group["caption"]
    zarr.consolidate_metadata(copy)
    bare = CubeDataset(copy, ["dem"])
    assert not bare.has_caption and bare[7]["caption"] == "" and bare.get_batch([1, 2])["caption"] == ["", ""]
    caption = group.create_array("caption", shape=(n,), dtype=str, chunks=(8,), dimension_names=["sample"])
    caption[:] = np.array([f"caption of sample {i}" for i in range(n)])
    zarr.consolidate_metadata(copy)
    ds = CubeDataset(copy, ["dem"])
    assert ds.has_caption
    assert ds[7]["caption"] == "caption of sample 7"
    assert ds.get_batch([3, 4])["caption"] == ["caption of sample 3", "caption of sample 4"]


def add_flag(sample: dict) -> dict:
    """A transform (module level, so the dataset pickles)."""
    sample["seen"] = True
    return sample


def test_transforms_and_pickling(demo_cube: Path) -> None:
    ds = CubeDataset(demo_cube, ["dem", "lulc"], transforms=add_flag)
    assert ds[0]["seen"] is True
    assert ds.get_batch([0, 1])["seen"].tolist() == [True, True]
    assert ds.handle._group is not None  # opened by the reads above
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.handle._group is None and clone._buffers == {}  # handles never travel to workers
    assert torch.equal(clone[3]["dem"], ds[3]["dem"])


def test_codec_pipelines_agree(demo_cube: Path) -> None:
    a = CubeDataset(demo_cube, codec_pipeline="zarr").get_batch(range(8, 16))
    b = CubeDataset(demo_cube, codec_pipeline="zarrs").get_batch(range(8, 16))
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]) or torch.allclose(v, b[k], equal_nan=True), k
        else:
            assert v == b[k], k
