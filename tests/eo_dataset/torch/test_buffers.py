"""Batch blocks are reused, and never while anybody (this process or the training process) still holds a tensor.

Evidence of reuse is the pool's own: its ``reused`` counter and the identity of its block objects (held through
weak references, which the pool cannot see). Never a data pointer: the allocator hands freed memory back at the
same address, so an equal pointer does not mean a block was reused, nor a different one that it was not.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import weakref
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from eo_dataset.torch import CubeDataset, ShardSampler, blocks
from eo_dataset.torch.buffers import BlockPool


def test_private_block_reused_only_when_released() -> None:
    pool = BlockPool(max_blocks=2)
    a, block_a = pool.acquire(1000, shared=False)
    b, block_b = pool.acquire(1000, shared=False)
    assert block_b is not block_a and pool.reused == 0  # a is still in use here
    del a
    c, block_c = pool.acquire(1000, shared=False)
    assert block_c is block_a and pool.reused == 1
    assert c.untyped_storage()._cdata == block_a.storage._cdata  # c is on a's block (both alive: no recycling)


def test_pool_is_bounded_and_evicts_other_sizes() -> None:
    pool = BlockPool(max_blocks=2)
    held = [pool.acquire(100, shared=False)[0] for _ in range(3)]
    assert pool.acquire(100, shared=False)[1] is None  # two pooled blocks in use: a fresh, unpooled one
    held.clear()
    pool.acquire(200, shared=False)  # another batch size: an idle 100-byte block makes room
    assert sorted(b.storage.nbytes() for b in pool._blocks) == [100, 200]


def test_holding_the_storage_object_keeps_the_block() -> None:
    pool = BlockPool()
    flat, block = pool.acquire(64, shared=False)
    held = weakref.ref(block)
    storage = flat.untyped_storage()
    del flat, block
    assert pool.acquire(64, shared=False)[1] is not held() and pool.reused == 0
    assert held() is not None  # still pooled, for when the storage object is let go
    del storage
    assert pool.acquire(64, shared=False)[1] is held() and pool.reused == 1


@pytest.mark.parametrize("shared", [False, True])
def test_block_pickled_for_another_process_without_its_batch_is_never_reused(shared: bool) -> None:
    """Pickled by ForkingPickler (what multiprocessing queues use), the block may be mapped elsewhere for good; a
    private block is even moved to shared memory in place by torch."""
    pool = BlockPool()
    flat, block = pool.acquire(4096, shared=shared)
    pickled = weakref.ref(block)
    del block
    message = ForkingPickler.dumps(flat[:16])
    del flat
    again, fresh = pool.acquire(4096, shared=shared)
    assert pool.reused == 0 and fresh is not None and fresh is not pickled()
    assert pickled() is None and pool._blocks == [fresh]  # dropped from the pool for good
    del message


def test_shared_block_that_never_left_is_reused() -> None:
    """Its batch was copied in this process (e.g. by default_collate) and dropped: nobody else can see it."""
    pool = BlockPool()
    flat, block = pool.acquire(4096, shared=True)
    kept = weakref.ref(block)
    del flat, block
    assert pool.acquire(4096, shared=True)[1] is kept() and kept() is not None and pool.reused == 1


def test_threads_never_share_a_live_block() -> None:
    """Two tensors alive at once on the same memory would have the same data pointer: a pointer is removed from
    ``live`` before its tensor dies, so a recycled address never counts as a clash."""
    pool = BlockPool(max_blocks=2)
    clashes, live, lock = [], {}, threading.Lock()

    def work() -> None:
        for _ in range(300):
            flat, _ = pool.acquire(4096, shared=False)
            with lock:
                clashes.append(flat.data_ptr() in live)
                live[flat.data_ptr()] = True
            time.sleep(0)
            with lock:
                del live[flat.data_ptr()]
            del flat

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(clashes) == 900 and not any(clashes) and pool.reused > 0


def test_without_trusted_torch_details_every_batch_gets_a_fresh_block(monkeypatch: pytest.MonkeyPatch,
                                                          demo_cube: Path) -> None:
    monkeypatch.setattr(blocks, "_TRUSTED", False)
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
    block = weakref.ref(_block_of(ds, first))
    del first
    before = ds._pool.reused
    reused = ds.get_batch(gaps)
    assert _block_of(ds, reused) is block() and ds._pool.reused == before + 1
    monkeypatch.setattr(blocks, "_TRUSTED", False)
    assert _same(reused, CubeDataset(demo_cube).get_batch(gaps))


def _block_of(ds: CubeDataset, batch: dict) -> blocks._Block:
    """The pool's block that ``batch`` (alive, so its storage's address cannot have been recycled) is carved from."""
    cdata = batch["s2l2a"].untyped_storage()._cdata
    found = [b for b in ds._pool._blocks if b.storage._cdata == cdata]
    assert len(found) == 1, "the batch is not on a pooled block"
    return found[0]


def _inode(t: torch.Tensor) -> int:
    """The shared-memory file a received tensor lives on: the identity of a worker's block seen from here. Unlike a
    data pointer this does not come back for a fresh block: tmpfs numbers new files upwards (2000 fresh blocks
    in a row got 2000 inodes)."""
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


def _snapshot(batch: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loader(ds: CubeDataset, workers: int, **kwargs) -> DataLoader:
    kwargs.setdefault("collate_fn", ds.collate_fn)
    kwargs.setdefault("batch_size", 4)
    return DataLoader(ds, sampler=ShardSampler(ds, seed=1), num_workers=workers, persistent_workers=workers > 0,
                      multiprocessing_context=mp.get_context("fork") if workers else None, **kwargs)


def test_samples_sent_one_by_one_stay_intact(demo_cube: Path) -> None:
    """batch_size=None: each sample (not a SharedBatch) crosses on its own; every one kept stays as it arrived."""
    ds = CubeDataset(demo_cube, ["s2l2a", "lulc"], crop=132, crop_mode="center")
    kept = [(s, _snapshot(s)) for _ in range(2) for s in _loader(ds, 2, batch_size=None, collate_fn=None)]
    assert len(kept) == 64 and all(_same(s, copy) for s, copy in kept)


def _hold(queue: Any, done: Any) -> None:
    """A third process: keeps what it is sent, then reports how many items changed after they arrived."""
    torch.set_num_threads(1)  # forked from a process that used torch's thread pool (as DataLoader workers do)
    held = []
    while (item := queue.get()) is not None:
        held.append((item, _snapshot(item)))
    time.sleep(0.3)  # time for the loader to have refilled any block it wrongly thought free
    done.put(sum(not _same(item, copy) for item, copy in held))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_passed_on_to_another_process_stay_intact(demo_cube: Path, workers: int) -> None:
    """The training process hands batches to another process (an async logger, say) and drops them itself."""
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("fork")
    queue, done = ctx.Queue(), ctx.Queue()
    holder = ctx.Process(target=_hold, args=(queue, done))
    holder.start()
    ds = CubeDataset(demo_cube, ["s2l2a", "landsat"], crop=132, crop_mode="center")
    for _ in range(2):
        for batch in _loader(ds, workers):
            queue.put({"index": batch["index"], "sample_id": batch["sample_id"], "s2l2a": batch["s2l2a"]})
            time.sleep(0.02)  # let the queue's thread pickle it before the loop drops its reference
    queue.put(None)
    changed = done.get(timeout=60)
    holder.join(timeout=30)
    assert changed == 0


def _carry_previous(samples: list, collate: Any, previous: dict) -> dict:
    """A worker-side collate that sends a view of the previous batch along with this one."""
    batch = collate(samples)
    batch["previous"] = previous.get("view", torch.zeros(0))
    previous["view"] = batch["s2l2a"][:1]
    return batch


def test_view_of_an_earlier_batch_sent_again_stays_intact(demo_cube: Path) -> None:
    from functools import partial

    ds = CubeDataset(demo_cube, ["s2l2a"], crop=132, crop_mode="center")
    loader = _loader(ds, 1, batch_size=2, prefetch_factor=1, collate_fn=partial(_carry_previous, collate=ds.collate_fn,
                                                                                previous={}))
    held = []
    for _ in range(2):
        for batch in loader:
            if batch["previous"].numel():
                held.append((batch["previous"], batch["previous"].clone()))
            del batch
            time.sleep(0.02)
    assert len(held) > 10 and all(torch.equal(v, copy) or torch.allclose(v, copy, equal_nan=True) for v, copy in held)
