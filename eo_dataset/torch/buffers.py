"""Memory blocks for batches, reused once nobody holds them any more.

A batch of :class:`~eo_dataset.torch.CubeDataset` is carved from one block of memory (in a DataLoader worker: one
shared-memory block, so the batch crosses to the training process as one file descriptor). A fresh block costs
more than filling it: the kernel zeroes every page and each process faults it in. So each process keeps a few
blocks and hands a block out again only when it is certain that nothing can still see it:

* in this process, no tensor is left on the block (its storage's use count is the pool's own reference);
* it never left this process, or it left exactly once, as the :class:`SharedBatch` a DataLoader worker sends, and
  the receiving process has since dropped every tensor of it. Unpickling a SharedBatch registers a finalizer on
  the received storage there, which clears the block's flag in a small shared flags array when the last tensor
  dies; unless the receiver passed the block on (pickled it again for another process, or forked while holding
  it): then the flag says "lost" and the block is never reused.

To see every time a block is pickled for another process, this module wraps torch's reducer of
``torch.UntypedStorage`` in :class:`multiprocessing.reduction.ForkingPickler` (a pass-through that only takes note
of the blocks it knows). A block that left in any way the pool cannot follow (pickled twice, pickled without its
SharedBatch, a private block moved to shared memory by pickling, a block in use when the process forks) is dropped
from the pool, never reused. This leans on details of torch (a storage's use count, its Python object living as
long as any tensor on it, the reducer to wrap); the pool checks them once and stays off (every batch a fresh
block) where they do not hold.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)

MAX_BLOCKS = 6
"""Blocks a process keeps for reuse: a worker's batch being read, those queued (``prefetch_factor``) and those the
training loop still holds. More batches alive at once get fresh blocks, freed as usual."""

FREE, HELD, LOST = 0, 1, 2  # a shared block's flag: released by the receiver, still held there, passed on


@dataclass(eq=False)
class _Block:
    storage: torch.UntypedStorage
    shared: bool
    slot: int
    pickles: int = 0  # times pickled for another process since it was last handed out
    sent: bool = False  # pickled as its SharedBatch since it was last handed out


@dataclass(eq=False)
class _Received:
    flags: torch.Tensor
    slot: int
    pid: int = field(default_factory=os.getpid)
    forwarded: bool = False


_pooled: dict[int, _Block] = {}  # this process's pooled blocks, by storage handle
_received: dict[int, _Received] = {}  # blocks from another process's pool alive here, by storage handle


class BlockPool:
    """A process's reusable batch blocks (see the module docstring). Not shared across processes: a forked or
    unpickled copy starts empty."""

    def __init__(self, max_blocks: int = MAX_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self._pid: int | None = None
        self._blocks: list[_Block] = []
        self._flags: torch.Tensor | None = None  # shared int32 (max_blocks,), one slot per pooled shared block
        self._lock = threading.Lock()
        self.reused = 0  # blocks handed out again (for tests and benchmarks)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_blocks": self.max_blocks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_blocks"])  # type: ignore[misc]

    def acquire(self, nbytes: int, shared: bool) -> tuple[torch.Tensor, _Block | None]:
        """A block of ``nbytes`` (contents undefined) as a flat uint8 tensor, and its pool entry (``None``: not
        pooled). Carve the batch's tensors from the tensor's storage; while any tensor on it lives (the returned one
        included), the block is not handed out again. Thread-safe."""
        nbytes = max(nbytes, 1)
        if not _trusted() or (shared and not _hook()):
            return _flat(_new(nbytes, shared)), None
        with self._lock:
            storage, block = self._acquire(nbytes, shared)
            return _flat(storage), block  # the tensor holds the block before the lock is let go

    def _acquire(self, nbytes: int, shared: bool) -> tuple[torch.UntypedStorage, _Block | None]:
        if self._pid != os.getpid():
            self._pid, self._blocks, self._flags = os.getpid(), [], None
        if shared and self._flags is None:
            self._flags = torch.zeros(self.max_blocks, dtype=torch.int32).share_memory_()
        idle = []
        for block in list(self._blocks):
            state = self._state(block)
            if state == "lost":
                self._forget(block)
            elif state == "free":
                if block.shared == shared and block.storage.nbytes() == nbytes:
                    return self._hand_out(block)
                idle.append(block)
        if len(self._blocks) >= self.max_blocks and idle:
            self._forget(idle[0])  # the batch size or the process's role changed: make room
        if len(self._blocks) >= self.max_blocks:
            return _new(nbytes, shared), None
        used = {b.slot for b in self._blocks}
        block = _Block(_new(nbytes, shared), shared, next(i for i in range(self.max_blocks) if i not in used))
        self._blocks.append(block)
        _pooled[block.storage._cdata] = block
        return self._hand_out(block, fresh=True)

    def _state(self, block: _Block) -> str:
        """``"busy"``, ``"free"`` (safe to fill again) or ``"lost"`` (may be seen elsewhere: never reuse)."""
        if _use_count(block.storage._cdata) != 1 or sys.getrefcount(block.storage) > 2:  # type: ignore[misc]
            return "busy"  # a tensor (or the storage object itself) in this process still uses it
        if not block.shared:
            return "lost" if block.pickles or block.storage.is_shared() else "free"
        if block.pickles == 0:  # never sent to another process, e.g. its batch was copied by default_collate;
            return "lost" if block.sent else "free"  # a SharedBatch pickled some other way: do not guess
        if block.pickles > 1 or not block.sent:
            return "lost"
        flag = int(self._flags[block.slot])  # type: ignore[index]
        return "free" if flag == FREE else "busy" if flag == HELD else "lost"

    def _hand_out(self, block: _Block, fresh: bool = False) -> tuple[torch.UntypedStorage, _Block]:
        self.reused += not fresh
        block.pickles, block.sent = 0, False
        if block.shared:
            self._flags[block.slot] = HELD  # type: ignore[index]  # cleared only by the receiver's finalizer
        return block.storage, block

    def _forget(self, block: _Block) -> None:
        self._blocks.remove(block)
        _pooled.pop(block.storage._cdata, None)

    def lease(self, block: _Block | None) -> _Lease | None:
        """What a :class:`SharedBatch` carries so its receiver can say when it is done with the block."""
        if block is None or not block.shared:
            return None
        return _Lease(block, self._flags)  # type: ignore[arg-type]


def _new(nbytes: int, shared: bool) -> torch.UntypedStorage:
    return torch.UntypedStorage._new_shared(nbytes) if shared else torch.UntypedStorage(nbytes)


def _flat(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))


_TRUSTED: bool | None = None


def _trusted() -> bool:
    """Whether this torch behaves as the pool assumes (checked once): a storage use count is available, and a
    storage's Python object lives exactly as long as any tensor on it (the receiver's finalizer relies on that)."""
    global _TRUSTED
    if _TRUSTED is None:
        fired: list[bool] = []
        ok = _use_count is not None
        if ok:
            tensor = torch.empty(4, dtype=torch.uint8)
            weakref.finalize(tensor.untyped_storage(), fired.append, True)
            ok = not fired and _use_count(tensor.untyped_storage()._cdata) >= 1  # type: ignore[misc]
            del tensor
            ok = ok and fired == [True]
        _TRUSTED = ok
    return _TRUSTED


class _Lease:
    """Pickled with a batch: marks the block as sent; unpickled, registers the receiver's release finalizer."""

    def __init__(self, block: _Block, flags: torch.Tensor) -> None:
        self.block, self.flags = block, flags

    def __reduce__(self) -> tuple[Any, ...]:
        self.block.sent = True
        return _watch, (self.block.storage, self.flags, self.block.slot)


def _watch(storage: torch.UntypedStorage, flags: torch.Tensor, slot: int) -> None:
    """In the receiving process: report the block released (or lost) once the last tensor on it here is gone."""
    key = storage._cdata
    _received[key] = _Received(flags, slot, forwarded=not _hook())
    weakref.finalize(storage, _release, key).atexit = False


def _release(key: int) -> None:
    rec = _received.pop(key, None)
    if rec is not None and rec.pid == os.getpid():  # a forked copy never speaks for its parent
        rec.flags[rec.slot] = LOST if rec.forwarded else FREE


def _pickled(storage: torch.UntypedStorage) -> None:
    """Called for every torch storage pickled for another process (see :func:`_hook`)."""
    key = storage._cdata
    block = _pooled.get(key)
    if block is not None:
        block.pickles += 1
    rec = _received.get(key)
    if rec is not None:
        rec.forwarded = True


def _before_fork() -> None:
    """A child process forked now sees the blocks alive here: blocks received are passed on, blocks in use lost."""
    for rec in _received.values():
        rec.forwarded = True
    for block in _pooled.values():  # (only filled where _use_count exists)
        if _use_count(block.storage._cdata) != 1:  # type: ignore[misc]
            block.pickles += 2


os.register_at_fork(before=_before_fork, after_in_child=_pooled.clear)  # a child's pools start empty

_HOOK_MARK = "_eo_dataset_blocks"


def _hook() -> bool:
    """Wrap torch's ForkingPickler reducer of ``torch.UntypedStorage`` so :func:`_pickled` sees every storage that
    leaves the process; False when it cannot be found (then no block is trusted across processes)."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reducers)

    reducers = getattr(ForkingPickler, "_extra_reducers", None)
    current = reducers.get(torch.UntypedStorage) if isinstance(reducers, dict) else None
    if current is None:
        return False
    if getattr(current, _HOOK_MARK, False):
        return True

    def reduce_storage(storage: torch.UntypedStorage) -> Any:
        _pickled(storage)
        return current(storage)

    setattr(reduce_storage, _HOOK_MARK, True)
    ForkingPickler.register(torch.UntypedStorage, reduce_storage)
    return True


class SharedBatch(dict):
    """A batch dict whose tensors live on one pooled shared block. Pickled (sent by a DataLoader worker), it
    arrives as a plain ``dict`` and tells the worker's pool when the receiver has dropped it."""

    lease: _Lease | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return _unwrap, (dict(self), self.lease)


def _unwrap(data: dict[str, Any], lease: None) -> dict[str, Any]:
    return data
