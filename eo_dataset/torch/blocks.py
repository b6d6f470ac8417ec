"""Memory blocks for batches, reused once nobody holds them any more.

A batch of :class:`~eo_dataset.torch.CubeDataset` is carved from one block of memory (in a DataLoader worker: one
shared-memory block, so the batch crosses to the training process as one file descriptor). A fresh block costs
more than filling it: the kernel zeroes every page and each process faults it in. So each process keeps a few
blocks and hands a block out again only when it is certain that nothing uses it:

* in this process, no tensor is left on the block (its storage's use count is the pool's own reference);
* for a shared block whose batch was sent to another process, that process has dropped every tensor of it. The
  batch travels as a :class:`SharedBatch`; unpickling it in the receiving process registers a finalizer on the
  received storage that clears the block's flag in a small shared flags array when the last tensor there dies.

A shared block whose tensors left this process any other way (a custom ``collate_fn`` that repacks them) cannot be
tracked, so it is dropped from the pool, never reused. Without torch's storage use count (a private function) the
pool is off and every batch gets a fresh block.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)

MAX_BLOCKS = 6
"""Blocks a process keeps for reuse: a worker's batch being read, those queued (``prefetch_factor``) and those the
training loop still holds. More batches alive at once get fresh blocks, freed as usual."""


@dataclass(eq=False)
class _Block:
    storage: torch.UntypedStorage
    shared: bool
    slot: int
    sent: bool = False  # pickled through its SharedBatch since it was last handed out


class BlockPool:
    """A process's reusable batch blocks (see the module docstring). Not shared across processes: a forked or
    unpickled copy starts empty."""

    def __init__(self, max_blocks: int = MAX_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self._pid: int | None = None
        self._blocks: list[_Block] = []
        self._flags: torch.Tensor | None = None  # shared int32 (max_blocks,): 1 while a receiver may hold the block
        self.reused = 0  # blocks handed out again (for tests and benchmarks)

    def acquire(self, nbytes: int, shared: bool) -> tuple[torch.UntypedStorage, _Block | None]:
        """A block of at least ``nbytes`` (its contents undefined), and its pool entry (``None``: not pooled)."""
        nbytes = max(nbytes, 1)
        if _use_count is None:
            return _new(nbytes, shared), None
        if self._pid != os.getpid():
            self._pid, self._blocks, self._flags = os.getpid(), [], None
        if shared and self._flags is None:
            self._flags = torch.zeros(self.max_blocks, dtype=torch.int32).share_memory_()
        for block in list(self._blocks):
            if _use_count(block.storage._cdata) != 1:
                continue  # a tensor in this process still uses it
            if block.shared and not block.sent and self._flags is not None and int(self._flags[block.slot]):
                self._blocks.remove(block)  # its tensors left without their SharedBatch: untrackable, let it go
                continue
            if block.shared and int(self._flags[block.slot]):  # type: ignore[index]
                continue  # the receiving process still holds it
            if block.shared == shared and block.storage.nbytes() == nbytes:
                return self._hand_out(block)
        if len(self._blocks) >= self.max_blocks:
            self._evict(nbytes, shared)
        if len(self._blocks) >= self.max_blocks:
            return _new(nbytes, shared), None
        used = {b.slot for b in self._blocks}
        block = _Block(_new(nbytes, shared), shared, next(i for i in range(self.max_blocks) if i not in used))
        self._blocks.append(block)
        return self._hand_out(block, fresh=True)

    def _hand_out(self, block: _Block, fresh: bool = False) -> tuple[torch.UntypedStorage, _Block]:
        self.reused += not fresh
        block.sent = False
        if block.shared:
            self._flags[block.slot] = 1  # type: ignore[index]  # cleared only by the receiver's finalizer
        return block.storage, block

    def _evict(self, nbytes: int, shared: bool) -> None:
        """Forget one idle block of another size or kind (the batch size or process role changed)."""
        for block in self._blocks:
            idle = _use_count(block.storage._cdata) == 1 and not (  # type: ignore[misc]
                block.shared and int(self._flags[block.slot]))  # type: ignore[index]
            if idle and (block.shared != shared or block.storage.nbytes() != nbytes):
                self._blocks.remove(block)
                return

    def lease(self, block: _Block | None) -> _Lease | None:
        """What a :class:`SharedBatch` carries so its receiver can say when it is done with the block."""
        if block is None or not block.shared:
            return None
        return _Lease(block, self._flags)  # type: ignore[arg-type]


def _new(nbytes: int, shared: bool) -> torch.UntypedStorage:
    return torch.UntypedStorage._new_shared(nbytes) if shared else torch.UntypedStorage(nbytes)


class _Lease:
    """Pickled with a batch: marks the block as sent; unpickled, registers the receiver's release finalizer."""

    def __init__(self, block: _Block, flags: torch.Tensor) -> None:
        self.block, self.flags = block, flags

    def __reduce__(self) -> tuple[Any, ...]:
        self.block.sent = True
        return _watch, (self.block.storage, self.flags, self.block.slot)


def _watch(storage: torch.UntypedStorage, flags: torch.Tensor, slot: int) -> None:
    """In the receiving process: clear the block's flag once the last tensor on ``storage`` here is gone."""
    weakref.finalize(storage, _release, flags, slot).atexit = False


def _release(flags: torch.Tensor, slot: int) -> None:
    flags[slot] = 0


class SharedBatch(dict):
    """A batch dict whose tensors live on one pooled shared block. Pickled (sent by a DataLoader worker), it
    arrives as a plain ``dict`` and tells the worker's pool when the receiver has dropped it."""

    lease: _Lease | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return _unwrap, (dict(self), self.lease)


def _unwrap(data: dict[str, Any], lease: None) -> dict[str, Any]:
    return data
