"""Samplers: modality guarantees, shard-aware order, distributed splits, balanced batches, workers."""

from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch.utils.data import DataLoader

from eo_dataset import CubeError
from eo_dataset.torch import BalancedBatchSampler, CubeDataset, ShardSampler, indices_with
from tests.servers import free_port


@pytest.fixture(scope="module")
def ds(demo_cube: Path) -> CubeDataset:
    return CubeDataset(demo_cube, crop=30, crop_mode="center")


def test_indices_with(ds: CubeDataset) -> None:
    avail = ds.availability
    s1, lulc = ds.modalities.index("s1rtc"), ds.modalities.index("lulc")
    got = indices_with(ds, require=["s1rtc", "lulc"])
    assert got.tolist() == np.flatnonzero(avail[:, s1] & avail[:, lulc]).tolist() and 0 < len(got) < 32
    everything = indices_with(ds, at_least=len(ds.modalities))
    assert everything.tolist() == np.flatnonzero(avail.all(axis=1)).tolist()
    cols = [ds.modalities.index(m) for m in ("s1rtc", "landsat", "dem")]
    two_of = indices_with(ds, at_least=2, of=["s1rtc", "landsat", "dem"])
    assert (avail[two_of][:, cols].sum(axis=1) >= 2).all() and len(two_of) < 32
    assert len(indices_with(ds)) == 32
    with pytest.raises(CubeError, match=r"require: unknown modalities \['sar'\]; the dataset loads"):
        indices_with(ds, require=["sar"])
    with pytest.raises(CubeError, match="at_least=4 but the set has 3"):
        indices_with(ds, at_least=4, of=["s1rtc", "landsat", "dem"])


def test_required_modality_never_missing(ds: CubeDataset) -> None:
    sampler = ShardSampler(ds, require=["s1rtc", "landsat"], seed=3)
    loader = DataLoader(ds, batch_size=5, sampler=sampler, collate_fn=ds.collate_fn)
    seen = []
    for batch in loader:
        assert batch["s1rtc_available"].all() and batch["landsat_available"].all()
        assert batch["s1rtc_valid"].any(dim=(1, 2)).all()  # real data, not filler
        seen += batch["index"].tolist()
    assert sorted(seen) == indices_with(ds, require=["s1rtc", "landsat"]).tolist()


def test_shard_aware_order(ds: CubeDataset) -> None:
    sampler = ShardSampler(ds, seed=1)
    assert ds.shard_samples == 8 and sampler.shard_samples == 8
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(32))
        shards = [i // 8 for i in order]
        runs = [s for k, s in enumerate(shards) if k == 0 or s != shards[k - 1]]
        assert len(runs) == 4 and len(set(runs)) == 4  # each shard is read in one run
        assert order != sorted(order)  # ... shuffled within
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    sampler.set_epoch(1)
    assert list(sampler) == orders[1]  # the epoch's order depends on (seed, epoch) only
    assert list(ShardSampler(ds, shuffle=False)) == list(range(32))


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_disjoint_and_covering(ds: CubeDataset, world_size: int) -> None:
    parts = [list(ShardSampler(ds, seed=5, rank=r, world_size=world_size)) for r in range(world_size)]
    assert all(len(p) == 32 // world_size for p in parts)
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == 32 and sorted(flat) == list(range(32))


def test_ranks_with_a_remainder(ds: CubeDataset) -> None:
    sel = indices_with(ds, require=["s2l2a"])
    assert len(sel) % 3  # 31 samples over 3 ranks
    padded = [list(ShardSampler(ds, require=["s2l2a"], rank=r, world_size=3)) for r in range(3)]
    assert {len(p) for p in padded} == {11}
    flat = [i for p in padded for i in p]
    assert set(flat) == set(sel.tolist()) and len(flat) - len(set(flat)) == 33 - 31  # only the padding repeats
    dropped = [list(ShardSampler(ds, require=["s2l2a"], rank=r, world_size=3, drop_last=True)) for r in range(3)]
    flat = [i for p in dropped for i in p]
    assert {len(p) for p in dropped} == {10} and len(set(flat)) == 30 and set(flat) <= set(sel.tolist())
    with pytest.raises(ValueError, match="rank must be in"):
        ShardSampler(ds, rank=3, world_size=3)


def _rank_main(rank: int, world: int, port: int, cube: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds = CubeDataset(cube, ["dem"])
        sampler = ShardSampler(ds, seed=7)  # rank and world size from torch.distributed
        loader = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=ds.collate_fn)
        mine = [i for batch in loader for i in batch["index"].tolist()]
        gathered: list[list[int]] = [[] for _ in range(world)]
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            Path(out).write_text(repr(gathered))
    finally:
        dist.destroy_process_group()


def test_torch_distributed_ranks(demo_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "ranks.txt"
    tmp.start_processes(_rank_main, args=(2, free_port(), str(demo_cube), str(out)), nprocs=2, join=True,
                        start_method="fork")
    parts = ast.literal_eval(out.read_text())
    assert len(parts) == 2 and len(parts[0]) == len(parts[1]) == 16
    assert set(parts[0]).isdisjoint(parts[1]) and sorted(parts[0] + parts[1]) == list(range(32))


def test_workers_read_everything_once(ds: CubeDataset) -> None:
    ds[0]  # the parent has an open handle; workers must open their own
    assert ds.handle._pid == os.getpid()
    loader = DataLoader(ds, batch_size=4, sampler=ShardSampler(ds, seed=2), num_workers=2,
                        collate_fn=ds.collate_fn, multiprocessing_context="fork")
    got = {}
    for batch in loader:
        for j, i in enumerate(batch["index"].tolist()):
            got[i] = batch["s2l2a"][j].clone()
    assert sorted(got) == list(range(32))
    ref = ds.get_batch(range(32))
    for i, x in got.items():
        assert torch.equal(x, ref["s2l2a"][i]), i


def test_balanced_batches_mixed(ds: CubeDataset) -> None:
    sampler = BalancedBatchSampler(ds, batch_size=12, modalities=["s1rtc", "landsat", "lulc"], seed=0,
                                   num_batches=20)
    cols = [ds.modalities.index(m) for m in ("s1rtc", "landsat", "lulc")]
    combos = {i: tuple(ds.availability[i, cols]) for i in range(32)}
    n_combo = len(sampler.combinations)
    assert 2 < n_combo <= 8 and n_combo == len(set(combos.values()))
    totals: Counter = Counter()
    for batch in sampler:
        assert len(batch) == 12
        counts = Counter(combos[i] for i in batch)
        assert len(counts) == n_combo and max(counts.values()) - min(counts.values()) <= 1
        totals.update(counts)
    sizes = Counter(combos.values())
    rare, common = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    assert sizes[rare] < sizes[common] and abs(totals[rare] - totals[common]) <= 20  # drawn alike, sized unlike


def test_balanced_batches_homogeneous_and_distributed(ds: CubeDataset) -> None:
    kw = {"batch_size": 4, "modalities": ["s1rtc", "landsat"], "homogeneous": True, "seed": 4, "num_batches": 8}
    single = list(BalancedBatchSampler(ds, world_size=1, rank=0, **{**kw, "num_batches": 16}))
    cols = [ds.modalities.index(m) for m in ("s1rtc", "landsat")]
    combos = {i: tuple(ds.availability[i, cols]) for i in range(32)}
    for batch in single:
        assert len({combos[i] for i in batch}) == 1
    per_combo = Counter(combos[b[0]] for b in single)
    assert max(per_combo.values()) - min(per_combo.values()) <= 1
    r0 = list(BalancedBatchSampler(ds, world_size=2, rank=0, **kw))
    r1 = list(BalancedBatchSampler(ds, world_size=2, rank=1, **kw))
    assert single == [b for pair in zip(r0, r1, strict=True) for b in pair]  # ranks take alternate batches
    required = list(BalancedBatchSampler(ds, batch_size=6, require=["canopy"], num_batches=5))
    k = ds.modalities.index("canopy")
    assert all(ds.availability[i, k] for b in required for i in b)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BalancedBatchSampler(ds, batch_size=0)
