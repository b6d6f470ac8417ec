"""A block's writes and the cube's creation, made cheaper without changing a byte: shards written by
``write_shards`` (zarrs' pipeline where it writes the same bytes, zarr-python's in batches elsewhere) equal
zarr-python's own, the per-sample string arrays are created without being computed, and the sample ids are
listed, checked and hashed in one pass."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from eo_dataset.cube.manifest import hash_ids, read_ids
from eo_dataset.cube.store import CUBE_MARKER, check_unique, compressors, create_or_open, sample_ids, write_shards
from eo_dataset.errors import CubeError
from eo_dataset.pipeline.sample_list import SampleList, write_sample_list
from eo_dataset.pipeline.sampling import draw_samples
from eo_dataset.spec.grid import Grid
from eo_dataset.spec.recipe import load_recipe

N, SHARD = 20, 8  # three blocks, the last one partial


def _cube(path: Path, codec: str) -> None:
    """Two sharded arrays as a cube has them (pixels with a NaN fill, a valid mask), one inner chunk per sample."""
    build = load_recipe("synthetic").build.model_copy(update={"codec": codec})
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("pix", shape=(N, 2, 5, 5), dtype="float32", chunks=(1, 2, 5, 5), shards=(SHARD, 2, 5, 5),
                      compressors=compressors(build), fill_value=np.nan, dimension_names=("sample", "b", "y", "x"))
    root.create_array("valid", shape=(N, 5, 5), dtype=bool, chunks=(1, 5, 5), shards=(SHARD, 5, 5),
                      compressors=compressors(build), fill_value=False, dimension_names=("sample", "y", "x"))


def _block(start: int, stop: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(start)
    n = stop - start
    pix = rng.normal(size=(n, 2, 5, 5)).astype("float32")
    valid = rng.random((n, 5, 5)) > 0.3
    pix[1] = np.nan  # a sample without data: its chunks equal the fill value and are not stored
    valid[1] = False
    return {"pix": pix, "valid": valid}


@pytest.mark.parametrize("codec", ["blosc-lz4", "zstd", "none"])
def test_shards_are_byte_identical_to_zarr_python(tmp_path: Path, codec: str) -> None:
    ours, plain = tmp_path / "ours.zarr", tmp_path / "plain.zarr"
    _cube(ours, codec)
    _cube(plain, codec)
    group = zarr.open_group(str(plain), mode="r+")
    for start in range(0, N, SHARD):
        region = slice(start, min(start + SHARD, N))
        block = _block(region.start, region.stop)
        write_shards(ours, region, block)
        for name, values in block.items():  # zarr-python's default pipeline, chunk by chunk
            group[name][region] = values
    files = sorted(str(p.relative_to(plain)) for p in plain.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(ours)) for p in ours.rglob("*") if p.is_file())
    assert any("/c/" in f for f in files)
    for f in files:
        assert (ours / f).read_bytes() == (plain / f).read_bytes(), f
    assert zarr.config.get("codec_pipeline.batch_size") == 1  # the configuration is restored


def test_a_block_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    _cube(tmp_path / "c.zarr", "blosc-lz4")
    block = _block(0, SHARD)
    with pytest.raises(CubeError, match=r"'pix' has shape \(8, 2, 5, 5\), expected \(4, 2, 5, 5\)"):
        write_shards(tmp_path / "c.zarr", slice(16, 20), block)


@pytest.fixture(scope="module")
def sample_list(tmp_path_factory: pytest.TempPathFactory) -> SampleList:
    recipe = load_recipe("synthetic")
    path = write_sample_list(draw_samples(300, 0, spec=recipe.grid.spec(), region=(11.9, 45.0, 12.7, 45.8)),
                             tmp_path_factory.mktemp("list") / "s.parquet")
    return SampleList(path, Grid(recipe.grid.spec()))


def test_ids_once_checked_and_hashed_in_pieces(sample_list: SampleList) -> None:
    ids = sample_ids(sample_list)
    assert ids.tolist() == [s.id for s in sample_list]
    assert sample_ids(list(sample_list)).tolist() == ids.tolist()  # any sequence of samples
    joined = hashlib.sha256("\n".join(ids.tolist()).encode()).hexdigest()[:16]
    assert hash_ids(ids) == hash_ids(ids.tolist(), chunk=7) == joined
    check_unique(ids)
    with pytest.raises(CubeError, match=f"duplicate ids \\(e.g. '{ids[3]}'\\)"):
        check_unique(np.concatenate([ids, ids[3:4]]))


def test_creation_stores_no_string_chunk_and_the_ids(tmp_path: Path, sample_list: SampleList) -> None:
    recipe = load_recipe("synthetic")
    out = tmp_path / "cube.zarr"
    assert create_or_open(out, recipe, sample_list) is False
    assert (out / CUBE_MARKER).is_file()
    for name in recipe.modalities:  # created, not written: blocks write them
        assert [p.name for p in (out / f"{name}_item").rglob("*") if p.is_file()] == ["zarr.json"]
        assert zarr.open_array(str(out / f"{name}_item"), mode="r").metadata.data_type.to_json(3) == "string"
    n_blocks = -(-len(sample_list) // recipe.build.shard_samples)
    assert len(list((out / "sample_id" / "c").iterdir())) == n_blocks  # the coordinates are written
    assert read_ids(out) == [s.id for s in sample_list]
    assert (out / "_build" / "samples.txt").read_text() == "".join(f"{s.id}\n" for s in sample_list)
    assert create_or_open(out, recipe, sample_list) is True  # the same list: a resume
