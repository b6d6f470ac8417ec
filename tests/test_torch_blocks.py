"""Batch blocks are reused, and never while anybody (this process or the training process) still holds a tensor."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from eo_dataset.torch import CubeDataset, ShardSampler, blocks
from eo_dataset.torch.blocks import BlockPool


def _tensor(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))


def test_private_block_reused_only_when_released() -> None:
    pool = BlockPool(max_blocks=2)
    a, _ = pool.acquire(1000, shared=False)
    held = _tensor(a)
    b, _ = pool.acquire(1000, shared=False)
    assert b.data_ptr() != a.data_ptr()  # a is still in use here
    del held
    c, _ = pool.acquire(1000, shared=False)
    assert c.data_ptr() in (a.data_ptr(), b.data_ptr()) and pool.reused == 1


def test_pool_is_bounded_and_evicts_other_sizes() -> None:
    pool = BlockPool(max_blocks=2)
    held = [_tensor(pool.acquire(100, shared=False)[0]) for _ in range(3)]
    assert pool.acquire(100, shared=False)[1] is None  # two pooled blocks in use: a fresh, unpooled one
    held.clear()
    pool.acquire(200, shared=False)  # another batch size: an idle 100-byte block makes room
    assert sorted(b.storage.nbytes() for b in pool._blocks) == [100, 200]


def test_shared_block_that_left_without_its_batch_is_never_reused() -> None:
    """A shared block handed out but never pickled through its SharedBatch may live on in another process."""
    pool = BlockPool()
    s, entry = pool.acquire(4096, shared=True)
    assert s.is_shared() and pool.lease(entry) is not None
    del s, entry
    s2, _ = pool.acquire(4096, shared=True)
    assert pool.reused == 0 and len(pool._blocks) == 1  # the first one was let go, not handed out again


def test_without_use_count_every_batch_gets_a_fresh_block(monkeypatch: pytest.MonkeyPatch,
                                                          demo_cube: Path) -> None:
    monkeypatch.setattr(blocks, "_use_count", None)
    ds = CubeDataset(demo_cube, ["landsat", "dem"], normalize=False)
    first = ds.get_batch([0, 1])
    second = ds.get_batch([0, 1])
    assert first["landsat"].data_ptr() != second["landsat"].data_ptr()
    assert torch.equal(first["landsat"], second["landsat"]) and ds._pool.reused == 0


def test_reused_block_keeps_nothing_of_the_previous_batch(monkeypatch: pytest.MonkeyPatch, demo_cube: Path) -> None:
    """A block that held a full batch, reused for samples that lack modalities: zeros and False where they lack."""
    ds = CubeDataset(demo_cube)
    full = [int(i) for i in (ds.availability.all(axis=1)).nonzero()[0][:4]]
    gaps = [int(i) for i in (~ds.availability.all(axis=1)).nonzero()[0][:4]]
    assert len(full) == 4 and len(gaps) == 4
    first = ds.get_batch(full)
    ptr = first["s2l2a"].untyped_storage().data_ptr()
    del first
    reused = ds.get_batch(gaps)
    assert reused["s2l2a"].untyped_storage().data_ptr() == ptr and ds._pool.reused >= 1
    monkeypatch.setattr(blocks, "_use_count", None)
    assert _same(reused, CubeDataset(demo_cube).get_batch(gaps))


def _inode(t: torch.Tensor) -> int:
    fd, _ = t.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


def _same(batch: dict, ref: dict) -> bool:
    for k, v in ref.items():
        if isinstance(v, torch.Tensor) and not torch.equal(batch[k], v) and not torch.allclose(
                batch[k], v, equal_nan=True):
            return False
    return batch["sample_id"] == ref["sample_id"]


@pytest.mark.parametrize("collate", ["cube", "repacked"])
def test_worker_blocks_reused_after_release_and_held_batches_stay_intact(demo_cube: Path, collate: str) -> None:
    """Three epochs through two workers, every other batch kept: each batch is right when it arrives, the kept ones
    are still right at the end, and the dropped ones' blocks were reused (fewer blocks than batches). With a
    collate_fn that repacks the batch (so the pool cannot see when it is released) nothing is reused."""
    ds = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"], crop=132, crop_mode="center")
    fn = ds.collate_fn if collate == "cube" else (lambda s: dict(ds.collate_fn(s)))
    loader = DataLoader(ds, batch_size=4, sampler=ShardSampler(ds, seed=1), num_workers=2, collate_fn=fn,
                        persistent_workers=True, multiprocessing_context=mp.get_context("fork"))
    kept, inodes, n = [], set(), 0
    for _ in range(3):
        for k, batch in enumerate(loader):
            n += 1
            inodes.add(_inode(batch["index"]))
            assert _same(batch, ds.get_batch(batch["index"].tolist()))
            if k % 2 == 0:
                kept.append((batch, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}))
    assert all(_same(b, copy) for b, copy in kept), "a kept batch was overwritten"
    if collate == "cube":
        assert len(inodes) < n  # dropped batches' blocks came back
    else:
        assert len(inodes) == n  # untrackable: every batch had a block of its own
