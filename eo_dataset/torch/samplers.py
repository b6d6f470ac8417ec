"""Samplers that know which modalities a sample has, where it is stored, and which rank is asking.

- :func:`indices_with`: the samples that have every required modality and at least ``k`` of a set.
- :class:`ShardSampler`: shard-aware shuffling. Shards are visited in random order and the samples of a shard are
  shuffled among themselves, so consecutive reads hit the same shard (one object, one cache line of the store)
  instead of jumping across the whole cube. Under ``torch.distributed`` each rank gets a contiguous, disjoint part
  of the epoch's order (whole shards where possible).
- :class:`BalancedBatchSampler`: batches balanced over modality combinations (rare combinations are drawn as often
  as common ones), mixed within a batch or one combination per batch.

Rank and world size default to ``torch.distributed``'s when a process group is initialised (else 0 and 1). Every
rank must use the same ``seed`` and call ``set_epoch`` with the same epoch, as with torch's ``DistributedSampler``.
With ``num_workers > 0`` the sampler runs in the main process and the DataLoader hands its indices to the workers;
each worker opens its own Zarr handle (see :class:`~eo_dataset.torch.handle.CubeHandle`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Sampler

from eo_dataset.errors import CubeError


class _HasAvailability(Protocol):
    modalities: list[str]
    availability: np.ndarray  # (n_samples, n_modalities) bool
    shard_samples: int

    def __len__(self) -> int: ...


def _columns(dataset: _HasAvailability, names: Iterable[str], what: str) -> list[int]:
    names = list(names)
    unknown = [m for m in names if m not in dataset.modalities]
    if unknown:
        raise CubeError(f"{what}: unknown modalities {unknown}; the dataset loads {dataset.modalities}")
    return [dataset.modalities.index(m) for m in names]


def indices_with(dataset: _HasAvailability, require: Iterable[str] = (), at_least: int = 0,
                 of: Iterable[str] | None = None) -> np.ndarray:
    """Indices of the samples that have every modality in ``require`` and at least ``at_least`` of ``of``.

    Args:
        dataset: A :class:`~eo_dataset.torch.CubeDataset` (anything with ``modalities`` and ``availability``).
        require: Modalities a sample must have.
        at_least: How many modalities of ``of`` a sample must have.
        of: The set ``at_least`` counts in (default: the dataset's modalities).

    Returns:
        Sorted int64 indices.

    Raises:
        CubeError: a name is not one of the dataset's modalities, or ``at_least`` exceeds the size of ``of``.
    """
    avail = np.asarray(dataset.availability, dtype=bool)
    keep = np.ones(len(avail), dtype=bool)
    req = _columns(dataset, require, "require")
    if req:
        keep &= avail[:, req].all(axis=1)
    cols = _columns(dataset, dataset.modalities if of is None else of, "of")
    if not 0 <= at_least <= len(cols):
        raise CubeError(f"at_least={at_least} but the set has {len(cols)} modalities; expected 0..{len(cols)}")
    if at_least:
        keep &= avail[:, cols].sum(axis=1) >= at_least
    return np.flatnonzero(keep).astype(np.int64)


def distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the given ones, else torch.distributed's, else ``(0, 1)``."""
    if world_size is None:
        dist = torch.distributed
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1 and world_size >= 1; found rank={rank}, "
                         f"world_size={world_size}")
    return rank, world_size


def _candidates(dataset: _HasAvailability, indices: Sequence[int] | None, require: Iterable[str], at_least: int,
                of: Iterable[str] | None) -> np.ndarray:
    sel = indices_with(dataset, require, at_least, of)
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
            raise IndexError(f"indices must lie in 0..{len(dataset) - 1}")
        sel = np.intersect1d(sel, idx)
    if sel.size == 0:
        raise CubeError(f"no sample of the {len(dataset)} matches require={list(require)}, at_least={at_least}"
                        + ("" if indices is None else " within the given indices"))
    return sel


class ShardSampler(Sampler[int]):
    """Shard-aware shuffling of (a selection of) a cube's samples, split across distributed ranks.

    Each epoch: the shards holding candidate samples are permuted, the samples inside each shard are permuted,
    and the concatenation is cut into ``world_size`` contiguous, equal parts; rank ``r`` gets part ``r``. Ranks
    therefore see disjoint samples that together cover the selection. When the count does not divide,
    ``drop_last=False`` pads the order by repeating its start (like ``DistributedSampler``), ``drop_last=True``
    drops its end.

    Args:
        dataset: A :class:`~eo_dataset.torch.CubeDataset`.
        indices: Restrict to these sample indices (default: all).
        require, at_least, of: Modality filter (see :func:`indices_with`).
        shuffle: Permute shards and samples (False: cube order).
        seed: Base seed; the epoch's order depends on ``(seed, epoch)`` only.
        rank, world_size: Distributed position (default: from ``torch.distributed``).
        drop_last: Drop instead of pad when the selection does not divide by ``world_size``.
        shard_samples: Samples per shard (default: the cube's).
    """

    def __init__(self, dataset: _HasAvailability, indices: Sequence[int] | None = None, *,
                 require: Iterable[str] = (), at_least: int = 0, of: Iterable[str] | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False, shard_samples: int | None = None) -> None:
        self.indices = _candidates(dataset, indices, require, at_least, of)
        self.shard_samples = int(shard_samples or dataset.shard_samples)
        if self.shard_samples < 1:
            raise ValueError(f"shard_samples must be >= 1, found {self.shard_samples}")
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self.epoch = 0
        n = len(self.indices)
        self.num_samples = n // self.world_size if drop_last else math.ceil(n / self.world_size)
        if self.num_samples == 0:
            raise CubeError(f"{n} samples cannot be split over {self.world_size} ranks with drop_last=True")

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (same on every rank) so each epoch has its own order."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The whole epoch's order, before the split across ranks."""
        idx = self.indices
        if not self.shuffle:
            return idx
        rng = np.random.default_rng((self.seed, self.epoch))
        shard = idx // self.shard_samples
        shards = np.unique(shard)
        parts = [rng.permutation(idx[shard == s]) for s in rng.permutation(shards)]
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        total = self.num_samples * self.world_size
        if total > len(order):  # pad by repeating the start (possibly several times for tiny selections)
            order = np.resize(order, total)
        part = order[self.rank * self.num_samples:(self.rank + 1) * self.num_samples]
        return iter(part.tolist())

    def __len__(self) -> int:
        return self.num_samples


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches balanced over the combinations of available modalities.

    The candidate samples are grouped by which of ``modalities`` they have (their combination). Each combination
    is drawn equally often, whatever its size: a rare combination is cycled through (reshuffled each pass) while
    a common one is subsampled. ``homogeneous=False`` mixes combinations inside each batch (their counts differ by
    at most one when the batch is at least as large as the number of combinations); ``homogeneous=True`` makes
    every batch a single combination (no zero-filled modalities at all), combinations taking turns.

    Under ``torch.distributed`` all ranks build the same sequence of batches and rank ``r`` takes batches
    ``r, r + world_size, ...``, so ranks never share a batch.

    Args:
        dataset: A :class:`~eo_dataset.torch.CubeDataset`.
        batch_size: Samples per batch.
        indices, require, at_least, of: Candidate selection (see :class:`ShardSampler`).
        modalities: Modalities whose availability defines a combination (default: the dataset's).
        homogeneous: One combination per batch instead of a mix.
        num_batches: Batches per epoch for this rank (default: ``ceil(candidates / batch_size / world_size)``).
        seed, rank, world_size: As for :class:`ShardSampler`.
    """

    def __init__(self, dataset: _HasAvailability, batch_size: int, indices: Sequence[int] | None = None, *,
                 require: Iterable[str] = (), at_least: int = 0, of: Iterable[str] | None = None,
                 modalities: Iterable[str] | None = None, homogeneous: bool = False, num_batches: int | None = None,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {batch_size}")
        self.batch_size, self.homogeneous, self.seed = batch_size, homogeneous, seed
        self.rank, self.world_size = distributed_rank(rank, world_size)
        idx = _candidates(dataset, indices, require, at_least, of)
        cols = _columns(dataset, dataset.modalities if modalities is None else modalities, "modalities")
        self.combination_modalities = [dataset.modalities[c] for c in cols]
        keys = np.asarray(dataset.availability, dtype=bool)[idx][:, cols]
        combos, inverse = np.unique(keys, axis=0, return_inverse=True)
        self.combinations: list[tuple[str, ...]] = [
            tuple(m for m, on in zip(self.combination_modalities, row, strict=True) if on) for row in combos]
        self.groups: list[np.ndarray] = [idx[inverse.ravel() == k] for k in range(len(combos))]
        self.num_batches = num_batches or math.ceil(len(idx) / batch_size / self.world_size)
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, found {self.num_batches}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (same on every rank)."""
        self.epoch = epoch

    def _batches(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        pools = [rng.permutation(g) for g in self.groups]
        pos = [0] * len(pools)

        def draw(k: int) -> int:
            if pos[k] == len(pools[k]):
                pools[k], pos[k] = rng.permutation(self.groups[k]), 0
            pos[k] += 1
            return int(pools[k][pos[k] - 1])

        n_combo = len(pools)
        turn = rng.permutation(n_combo)
        b = 0
        while True:
            if self.homogeneous:
                k = int(turn[b % n_combo])
                if b % n_combo == n_combo - 1:
                    turn = rng.permutation(n_combo)
                yield [draw(k) for _ in range(self.batch_size)]
            else:
                order = rng.permutation(n_combo)
                yield [draw(int(order[j % n_combo])) for j in range(self.batch_size)]
            b += 1

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        for _ in range(self.num_batches):
            mine = None
            for r in range(self.world_size):
                batch = next(batches)
                if r == self.rank:
                    mine = batch
            assert mine is not None
            yield mine

    def __len__(self) -> int:
        return self.num_batches
