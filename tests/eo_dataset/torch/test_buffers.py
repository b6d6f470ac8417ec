"""Batch buffers are reused, and never while anybody (this process or the training process) still holds a tensor.

Evidence of reuse is the pool's own: its ``reused`` counter and the identity of its buffer objects (held through
weak references, which the pool cannot see), or, across processes, the inode of the ``memfd`` a received tensor
is mapped from. Never a data pointer: a freed mapping's address is handed out again, so an equal pointer does not
mean a buffer was reused, nor a different one that it was not.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
import time
import weakref
from functools import partial
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from eo_dataset.torch import CubeDataset, ShardSampler
from eo_dataset.torch.buffers import SHARED_MEMORY, BufferPool, SharedBatch

LAYOUT = {"x": ((4, 100), torch.float32), "mask": ((4, 100), torch.bool), "n": ((4,), torch.int64)}
needs_shared = pytest.mark.skipif(not SHARED_MEMORY, reason="shared buffers need memfd and fd passing (Linux)")


def _buffer(batch: dict) -> Any:
    return batch.lease.buffer  # type: ignore[attr-defined]


def test_private_buffer_reused_only_when_released() -> None:
    pool = BufferPool(max_buffers=2)
    a = pool.allocate(LAYOUT, shared=False)
    b = pool.allocate(LAYOUT, shared=False)
    first = weakref.ref(_buffer(a))
    assert _buffer(b) is not first() and pool.reused == 0  # a is still in use here
    del a
    c = pool.allocate(LAYOUT, shared=False)
    assert _buffer(c) is first() and pool.reused == 1
    assert c["x"].shape == (4, 100) and c["mask"].dtype == torch.bool and c["n"].dtype == torch.int64


def test_pool_is_bounded_and_evicts_other_sizes() -> None:
    pool = BufferPool(max_buffers=2)
    held = [pool.allocate(LAYOUT, shared=False) for _ in range(3)]  # the third: a fresh buffer, not kept
    assert len(pool._buffers) == 2 and _buffer(held[2]) not in pool._buffers
    held.clear()
    pool.allocate({"x": ((8, 100), torch.float32)}, shared=False)  # another batch size: an idle buffer makes room
    assert sorted(b.nbytes for b in pool._buffers) == [2080, 3200]


def test_no_reuse_with_max_buffers_zero() -> None:
    pool = BufferPool(max_buffers=0)
    a = pool.allocate(LAYOUT, shared=False)
    first = weakref.ref(_buffer(a))
    del a
    assert first() is None  # freed with its batch
    pool.allocate(LAYOUT, shared=False)
    assert pool.reused == 0 and pool._buffers == []


KEEP = {  # a way to keep part of a batch, and how to read its first value back
    "view": (lambda b: b["x"][1:, 3:], lambda h: float(h[0, 0])),
    "reshape": (lambda b: b["x"].view(-1), lambda h: float(h[0])),
    "numpy": (lambda b: b["x"].numpy(), lambda h: float(h.flat[0])),
    "storage": (lambda b: b["x"].untyped_storage(), lambda h: float(torch.empty(0).set_(h, 0, (1,))[0])),
    "element": (lambda b: b["x"][2, 5], float),
}


@pytest.mark.parametrize("keep", list(KEEP))
def test_anything_left_of_a_batch_keeps_its_buffer(keep: str) -> None:
    pool = BufferPool()
    batch = pool.allocate(LAYOUT, shared=False)
    batch["x"].fill_(7)
    take, read = KEEP[keep]
    held = take(batch)
    buffer = weakref.ref(_buffer(batch))
    del batch
    again = pool.allocate(LAYOUT, shared=False)
    assert _buffer(again) is not buffer() and pool.reused == 0
    again["x"].fill_(1)
    assert read(held) == 7.0
    del held, again
    assert _buffer(pool.allocate(LAYOUT, shared=False)) is buffer() and pool.reused == 1


@pytest.mark.parametrize("shared", [False, True])
def test_tensor_pickled_by_torch_leaves_the_buffer(shared: bool) -> None:
    """torch's own reducer (what a repacked batch, a single sample or a passed-on batch goes through) moves the
    memory to its own shared memory first: the tensor leaves the buffer, which may then be filled again."""
    pool = BufferPool()
    batch = pool.allocate(LAYOUT, shared=shared)
    buffer = weakref.ref(_buffer(batch))
    batch["x"].fill_(3)
    x = batch["x"][:2]
    del batch
    message = ForkingPickler.dumps(x)
    again = pool.allocate(LAYOUT, shared=shared)
    assert _buffer(again) is buffer() and pool.reused == 1
    again["x"].fill_(-1)
    assert bool((x == 3).all()) and bool((ForkingPickler.loads(message) == 3).all())


def test_plain_pickle_copies() -> None:
    pool = BufferPool()
    batch = pool.allocate(LAYOUT, shared=True)
    batch["x"].fill_(2)
    copy = pickle.loads(pickle.dumps(batch))
    assert type(copy) is dict and bool((copy["x"] == 2).all())
    assert _buffer(batch).sends == 0


@needs_shared
def test_shared_buffer_released_by_its_receiver_is_reused() -> None:
    """Sent once as a SharedBatch (received here, as a DataLoader's training process would): reused only once the
    receiver has dropped every tensor of it, views included."""
    pool = BufferPool()
    batch = pool.allocate(LAYOUT, shared=True)
    batch["x"].fill_(5)
    batch["extra"] = "text"
    received = ForkingPickler.loads(ForkingPickler.dumps(batch))
    buffer = weakref.ref(_buffer(batch))
    del batch
    assert type(received) is dict and received["extra"] == "text" and bool((received["x"] == 5).all())
    view = received["x"][0]
    assert _buffer(pool.allocate(LAYOUT, shared=True)) is not buffer()  # the receiver holds it
    del received
    assert _buffer(pool.allocate(LAYOUT, shared=True)) is not buffer()  # a view of it still does
    del view
    assert _buffer(pool.allocate(LAYOUT, shared=True)) is buffer()


@needs_shared
def test_shared_buffer_sent_twice_is_never_reused() -> None:
    pool = BufferPool()
    batch = pool.allocate(LAYOUT, shared=True)
    one, two = ForkingPickler.loads(ForkingPickler.dumps(batch)), ForkingPickler.loads(ForkingPickler.dumps(batch))
    buffer = weakref.ref(_buffer(batch))
    del batch, one, two
    fresh = pool.allocate(LAYOUT, shared=True)
    assert _buffer(fresh) is not buffer() and pool.reused == 0 and buffer() not in pool._buffers


@needs_shared
def test_replaced_or_moved_tensors_are_sent_as_tensors() -> None:
    """Only the untouched tensors made for a key travel as places on the buffer; the rest is pickled as usual."""
    pool = BufferPool()
    batch = pool.allocate(LAYOUT, shared=True)
    batch["x"].fill_(1)
    batch["n"] = torch.full((4,), 4.0)
    received = ForkingPickler.loads(ForkingPickler.dumps(batch))
    assert bool((received["x"] == 1).all()) and bool((received["n"] == 4).all())
    assert _memfd_inode(received["x"]) is not None and _memfd_inode(received["n"]) is None
    moved = pool.allocate(LAYOUT, shared=True)
    moved["x"].fill_(2)
    moved["mask"].share_memory_()  # moves the whole buffer's tensors to torch's shared memory (one storage)
    received = ForkingPickler.loads(ForkingPickler.dumps(moved))
    assert bool((received["x"] == 2).all()) and _memfd_inode(received["x"]) is None
    assert _buffer(moved).sends == 0  # nothing of the batch was on it: not sent


def test_threads_never_share_a_live_buffer() -> None:
    """Two batches alive at once never get the same buffer object."""
    pool = BufferPool(max_buffers=2)
    clashes, live, lock = [], set(), threading.Lock()

    def work() -> None:
        for _ in range(300):
            batch = pool.allocate(LAYOUT, shared=False)
            buffer = _buffer(batch)
            with lock:
                clashes.append(id(buffer) in live)
                live.add(id(buffer))
            time.sleep(0)
            with lock:
                live.discard(id(buffer))
            del batch, buffer

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(clashes) == 900 and not any(clashes) and pool.reused > 0


def _same(batch: dict, ref: dict) -> bool:
    for k, v in ref.items():
        if isinstance(v, torch.Tensor) and not torch.equal(batch[k], v) and not torch.allclose(
                batch[k], v, equal_nan=True):
            return False
    return batch["sample_id"] == ref["sample_id"]


def _snapshot(batch: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def test_reused_buffer_keeps_nothing_of_the_previous_batch(demo_cube: Path) -> None:
    """A buffer that held a full batch, reused for samples that lack modalities: zeros and False where they lack."""
    ds = CubeDataset(demo_cube)
    full = [int(i) for i in (ds.availability.all(axis=1)).nonzero()[0][:4]]
    gaps = [int(i) for i in (~ds.availability.all(axis=1)).nonzero()[0][:4]]
    assert len(full) == 4 and len(gaps) == 4
    first = ds.get_batch(full)
    buffer = weakref.ref(_buffer(first))
    del first
    before = ds._pool.reused
    reused = ds.get_batch(gaps)
    assert _buffer(reused) is buffer() and ds._pool.reused == before + 1
    fresh = CubeDataset(demo_cube)
    fresh._pool = BufferPool(max_buffers=0)
    assert _same(reused, fresh.get_batch(gaps))


def _memfd_inode(t: torch.Tensor) -> int | None:
    """The inode of the pool's ``memfd`` a tensor is mapped from (``None``: not on a pool buffer): the identity
    of a worker's buffer seen from here (tmpfs numbers new files upwards, so a fresh buffer never repeats one)."""
    ptr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            if lo <= ptr < hi:
                return int(fields[4]) if len(fields) > 5 and "eo-dataset-batch" in fields[5] else None
    return None


def _loader(ds: CubeDataset, workers: int, **kwargs) -> DataLoader:
    kwargs.setdefault("collate_fn", ds.collate_fn)
    kwargs.setdefault("batch_size", 4)
    return DataLoader(ds, sampler=ShardSampler(ds, seed=1), num_workers=workers, persistent_workers=workers > 0,
                      multiprocessing_context=mp.get_context("fork") if workers else None, **kwargs)


@needs_shared
@pytest.mark.parametrize("collate", ["cube", "repacked"])
def test_worker_buffers_reused_after_release_and_held_batches_stay_intact(demo_cube: Path, collate: str) -> None:
    """Three epochs through two workers, every other batch kept: each batch is right when it arrives, the kept ones
    are still right at the end, and the dropped ones' buffers were reused (fewer buffers than batches). With a
    collate_fn that repacks the batch, torch shares each batch itself (a copy in its own shared memory)."""
    ds = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"], crop=132, crop_mode="center")
    fn = ds.collate_fn if collate == "cube" else (lambda s: dict(ds.collate_fn(s)))
    loader = _loader(ds, 2, collate_fn=fn)
    kept, inodes, n = [], set(), 0
    for _ in range(3):
        for k, batch in enumerate(loader):
            n += 1
            inodes.add(_memfd_inode(batch["index"]))
            assert _same(batch, ds.get_batch(batch["index"].tolist()))
            if k % 2 == 0:
                kept.append((batch, _snapshot(batch)))
    assert all(_same(b, copy) for b, copy in kept), "a kept batch was overwritten"
    if collate == "cube":
        assert None not in inodes and len(inodes) < n  # dropped batches' buffers came back
    else:
        assert inodes == {None}  # in torch's shared memory, not on a pool buffer


def test_samples_sent_one_by_one_stay_intact(demo_cube: Path) -> None:
    """batch_size=None: each sample crosses on its own, through torch's sharing; every one kept stays as it was."""
    ds = CubeDataset(demo_cube, ["s2l2a", "lulc"], crop=132, crop_mode="center")
    kept = [(s, _snapshot(s)) for _ in range(2) for s in _loader(ds, 2, batch_size=None, collate_fn=None)]
    assert len(kept) == 64 and all(_same(s, copy) for s, copy in kept)


def _hold(queue: Any, done: Any) -> None:
    """A third process: keeps what it is sent, then reports how many items changed after they arrived."""
    torch.set_num_threads(1)  # forked from a process that used torch's thread pool (as DataLoader workers do)
    held = []
    while (item := queue.get()) is not None:
        held.append((item, _snapshot(item)))
    time.sleep(0.3)  # time for the loader to have refilled any buffer it wrongly thought free
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


def _check_later(batch: dict, copy: dict, done: Any) -> None:
    torch.set_num_threads(1)  # forked from a process that used torch's thread pool
    time.sleep(0.5)  # meanwhile the parent drops its batch and loads more
    done.put(_same(batch, copy))


@needs_shared
def test_batch_held_by_a_forked_child_stays_intact(demo_cube: Path) -> None:
    """A child forked while the training process holds a batch sees the same shared memory: never reused."""
    ctx = mp.get_context("fork")
    ds = CubeDataset(demo_cube, ["s2l2a"], crop=132, crop_mode="center")
    loader = _loader(ds, 1, batch_size=2, prefetch_factor=1)
    it = iter(loader)
    batch = next(it)
    done = ctx.Queue()
    child = ctx.Process(target=_check_later, args=(batch, _snapshot(batch), done))
    child.start()
    del batch
    for batch in it:
        batch["s2l2a"].add_(1)  # scribble on every later batch, so a refilled buffer cannot look unchanged
    assert done.get(timeout=60) is True
    child.join(timeout=30)


def _carry_previous(samples: list, collate: Any, previous: dict) -> dict:
    """A worker-side collate that sends a view of the previous batch along with this one."""
    batch = collate(samples)
    batch["previous"] = previous.get("view", torch.zeros(0))
    previous["view"] = batch["s2l2a"][:1]
    return batch


def test_view_of_an_earlier_batch_sent_again_stays_intact(demo_cube: Path) -> None:
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


def test_shared_batch_is_a_dict() -> None:
    batch = BufferPool().allocate(LAYOUT, shared=False)
    assert isinstance(batch, SharedBatch) and isinstance(batch, dict) and set(batch) == set(LAYOUT)
