"""Batch buffers: the memory a :class:`~eo_dataset.torch.CubeDataset` batch is carved from, reused once nobody can
see it any more, with public, documented API only.

All tensors of a batch are carved from one buffer; in a DataLoader worker it is shared memory (a ``memfd``), so the
batch crosses to the training process as one file descriptor instead of one per tensor. A fresh buffer costs more
than filling it (the kernel zeroes every page, and each process faults it in), so each process keeps a few buffers
(a :class:`BufferPool`) and fills one again only when it knows that nobody can see it:

* **In this process.** A batch's tensors are made with :func:`torch.frombuffer` over a fresh ``memoryview`` of the
  buffer. torch keeps that object alive as long as any tensor on the memory lives (documented: "such memory will
  not be deallocated before the returned tensor goes out of scope"), so a :func:`weakref.finalize` on it fires
  when the last tensor, view, slice or reshape of the batch is gone.
* **In the training process.** A worker's batch is a :class:`SharedBatch`; the :class:`ForkingPickler` that
  DataLoader's queues use pickles it (a reducer registered for this class only) as the buffer's file descriptor
  (:func:`multiprocessing.reduction.DupFd`, as torch sends its own shared storages) and the tensors' layout. The
  receiver maps the buffer and builds its tensors the same way, over a memoryview with a finalizer, which writes
  "released" into the buffer's first page (its header). The worker reads the header before filling it again.

Anything the pool cannot follow makes it leave the buffer alone, never guess:

* a batch pickled as a SharedBatch twice (sent to two processes, or twice to one): never reused;
* a tensor on a buffer pickled by torch's own reducer (a ``collate_fn`` that repacks the batch, ``batch_size=None``,
  a received batch passed on to another process): torch first moves that memory to new shared memory (it copies
  it and swaps the tensors' storage, as ``share_memory_()`` does), so nothing there is on the buffer any more;
* a process forking while it holds a shared buffer's tensors (the child would see the same memory): the buffer is
  never reused. Private buffers (``shared=False``) are private mappings: a forked child gets a copy.

Without ``memfd`` or file-descriptor passing (not Linux), shared buffers are private ones and torch shares each
batch itself (one copy per batch).
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from multiprocessing import reduction
from typing import Any

import torch

MAX_BUFFERS = 6
"""Buffers a process keeps for reuse: a worker's batch being read, those queued (``prefetch_factor``) and those the
training loop still holds. More batches alive at once get fresh buffers, freed as usual."""

HEADER = mmap.ALLOCATIONGRANULARITY  # the header page in front of a buffer's data: byte 0 is its state
RELEASED, HELD, LOST = 0, 1, 2  # a shared buffer's state: the receiver let go, it still holds it, it passed it on

SHARED_MEMORY = hasattr(os, "memfd_create") and reduction.HAVE_SEND_HANDLE
"""Whether shared buffers exist here (Linux); elsewhere ``shared=True`` gives private ones."""

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def _offsets(layout: Layout) -> tuple[dict[str, int], int]:
    """Byte offset of each tensor of ``layout`` in one buffer (64-byte aligned), and the bytes needed."""
    offsets, total = {}, 0
    for k, (shape, dtype) in layout.items():
        total = -(-total // 64) * 64
        offsets[k] = total
        total += math.prod(shape) * dtype.itemsize
    return offsets, max(total, 1)


_shared_here: weakref.WeakSet[_Buffer] = weakref.WeakSet()  # this process's shared buffers (for fork)


class _Buffer:
    """One buffer: a header page then ``nbytes`` of data; a ``memfd`` mapped shared, or a private anonymous map."""

    def __init__(self, nbytes: int, shared: bool) -> None:
        self.nbytes, self.shared = nbytes, shared
        self.fd = -1
        if shared:
            self.fd = os.memfd_create("eo-dataset-batch", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, HEADER + nbytes)
            self.mm = mmap.mmap(self.fd, HEADER + nbytes)
            _shared_here.add(self)
        else:
            self.mm = mmap.mmap(-1, HEADER + nbytes, flags=mmap.MAP_PRIVATE)
        self.in_use = False  # a tensor of this process is on it (cleared by the finalizer of its hand-out)
        self.sends = 0  # times pickled as a SharedBatch since it was last handed out
        self.lost = False  # may be seen where the pool cannot follow: never reuse

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def state(self) -> str:
        """``"busy"``, ``"free"`` (safe to fill again) or ``"lost"`` (never reuse)."""
        if self.in_use:
            return "busy"
        if not self.shared or self.sends == 0:  # never left this process as a SharedBatch
            return "lost" if self.lost else "free"
        if self.lost or self.sends > 1:
            return "lost"
        return {RELEASED: "free", HELD: "busy"}.get(self.mm[0], "lost")


def _unused(buffer: _Buffer) -> None:
    buffer.in_use = False


class BufferPool:
    """A process's reusable batch buffers (see the module docstring). Thread-safe. Not shared across processes: a
    forked or unpickled copy starts empty.

    Args:
        max_buffers: Buffers kept for reuse (0: a fresh buffer for every batch, freed when the batch is).
    """

    def __init__(self, max_buffers: int = MAX_BUFFERS) -> None:
        self.max_buffers = max_buffers
        self._pid: int | None = None
        self._buffers: list[_Buffer] = []
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out again (for tests and benchmarks)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_buffers": self.max_buffers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_buffers"])  # type: ignore[misc]

    def allocate(self, layout: Layout, shared: bool) -> SharedBatch:
        """Uninitialised tensors ``{key: (shape, dtype)}`` of a batch, all on one buffer of this pool.

        ``shared`` (in a DataLoader worker): a shared-memory buffer, sent to the training process as one file
        descriptor. The buffer is filled again only once no tensor of the batch is left anywhere; a tensor kept
        beyond its step keeps the whole buffer from being reused (the pool takes another meanwhile).
        """
        offsets, nbytes = _offsets(layout)
        shared = shared and SHARED_MEMORY
        with self._lock:
            buffer = self._take(nbytes, shared)
            view = memoryview(buffer.mm)[HEADER:HEADER + nbytes]
            flat = torch.frombuffer(view, dtype=torch.uint8)
            buffer.in_use = True  # before the lock is let go; cleared when the last tensor on ``view`` dies
            weakref.finalize(view, _unused, buffer).atexit = False
            del view
        storage = flat.untyped_storage()
        batch = SharedBatch({k: torch.empty(0, dtype=dtype).set_(storage, offsets[k] // dtype.itemsize, shape)
                             for k, (shape, dtype) in layout.items()})
        batch.lease = _Lease(buffer, flat.data_ptr(), offsets, batch)
        return batch

    def _take(self, nbytes: int, shared: bool) -> _Buffer:
        if self._pid != os.getpid():
            self._pid, self._buffers = os.getpid(), []
        idle = []
        for buffer in list(self._buffers):
            state = buffer.state()
            if state == "lost":
                self._buffers.remove(buffer)
            elif state == "free":
                if buffer.shared == shared and buffer.nbytes == nbytes:
                    self.reused += 1
                    return self._hand_out(buffer)
                idle.append(buffer)
        if len(self._buffers) >= self.max_buffers and idle:
            self._buffers.remove(idle[0])  # the batch size or the process's role changed: make room
        buffer = _Buffer(nbytes, shared)
        if len(self._buffers) < self.max_buffers:
            self._buffers.append(buffer)
        return self._hand_out(buffer)

    @staticmethod
    def _hand_out(buffer: _Buffer) -> _Buffer:
        buffer.sends = 0
        if buffer.shared:
            buffer.mm[0] = HELD  # until a receiver writes RELEASED
        return buffer


class _Lease:
    """Which tensors of a :class:`SharedBatch` are on its buffer, where (checked again when it is pickled)."""

    def __init__(self, buffer: _Buffer, base: int, offsets: dict[str, int], batch: dict[str, torch.Tensor]) -> None:
        self.buffer, self.base = buffer, base
        self.made = {k: (weakref.ref(t), offsets[k], t.dtype, tuple(t.shape)) for k, t in batch.items()}

    def spec(self, key: str, value: Any) -> tuple[int, torch.dtype, tuple[int, ...]] | None:
        """``(offset, dtype, shape)`` of ``value`` when it is still the untouched tensor made for ``key``."""
        made = self.made.get(key)
        if made is None or made[0]() is not value:
            return None
        _, offset, dtype, shape = made
        if value.data_ptr() != self.base + offset or tuple(value.shape) != shape or not value.is_contiguous():
            return None  # moved (e.g. to torch's shared memory) or restrided in place: pickled as any tensor
        return offset, dtype, shape


class SharedBatch(dict):
    """A batch dict whose tensors live on one buffer of a :class:`BufferPool`. Pickled for another process by
    :class:`ForkingPickler` (a DataLoader worker's queue) it sends the buffer, and arrives as a plain ``dict`` whose
    receiver tells the worker's pool when it has dropped every tensor; pickled otherwise, it is a plain dict."""

    lease: _Lease | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)


def _reduce_for_process(batch: SharedBatch) -> tuple[Any, ...]:
    lease = batch.lease
    if lease is None or not lease.buffer.shared or lease.buffer.fd < 0:
        return dict, (dict(batch),)  # torch shares the tensors itself
    items = []
    for key, value in batch.items():
        spec = lease.spec(key, value) if isinstance(value, torch.Tensor) else None
        items.append((key, spec, None if spec else value))
    if all(spec is None for _, spec, _ in items):
        return dict, (dict(batch),)  # nothing of it is on the buffer any more
    lease.buffer.sends += 1
    return _rebuild, (reduction.DupFd(lease.buffer.fd), lease.buffer.nbytes, items)


reduction.ForkingPickler.register(SharedBatch, _reduce_for_process)


class _Received:
    """A buffer from another process's pool, mapped here while any tensor on it lives."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm, self.pid, self.lost = mm, os.getpid(), False


_received: set[_Received] = set()


def _rebuild(fd: Any, nbytes: int, items: list[tuple[str, Any, Any]]) -> dict[str, Any]:
    """In the receiving process: map the buffer, rebuild the batch on it, report it released once it is dropped."""
    fd = fd.detach()
    try:
        mm = mmap.mmap(fd, HEADER + nbytes)
    finally:
        os.close(fd)
    received = _Received(mm)
    _received.add(received)
    view = memoryview(mm)[HEADER:HEADER + nbytes]
    storage = torch.frombuffer(view, dtype=torch.uint8).untyped_storage()
    weakref.finalize(view, _release, received).atexit = False
    del view
    out = {}
    for key, spec, value in items:
        if spec is None:
            out[key] = value
        else:
            offset, dtype, shape = spec
            out[key] = torch.empty(0, dtype=dtype).set_(storage, offset // dtype.itemsize, shape)
    return out


def _release(received: _Received) -> None:
    _received.discard(received)
    if received.pid == os.getpid() and not received.lost:  # a forked copy never speaks for its parent
        received.mm[0] = RELEASED


def _before_fork() -> None:
    """A child forked now sees the shared buffers mapped here: those with live tensors are never reused."""
    for received in list(_received):
        received.lost = True
        received.mm[0] = LOST
    for buffer in list(_shared_here):
        if buffer.in_use:
            buffer.lost = True


def _after_fork_in_child() -> None:
    _received.clear()
    _shared_here.clear()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
