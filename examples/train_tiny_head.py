"""Train a tiny land-cover segmentation head on the demo cube, on the CPU, in well under a minute.

Inputs: Sentinel-2 (12 bands) and Sentinel-1 (2 bands, zero-filled where a sample has none, plus its availability
as an extra channel), normalised with the cube's own statistics. Target: the land-cover classes (``lulc``), with
pixels that are not valid ignored by the loss. Sampling: only samples that have both Sentinel-2 and land cover
(``require``), batches balanced between samples with and without Sentinel-1 (``BalancedBatchSampler``), random
96 px crops, two worker processes.

Run (after ``eo-dataset demo`` has built ``demo.zarr``)::

    python examples/train_tiny_head.py [--cube demo.zarr] [--steps 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from eo_dataset.torch import BalancedBatchSampler, CubeDataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cube", type=Path, default=Path("demo.zarr"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if not (args.cube / "zarr.json").is_file():
        sys.exit(f"{args.cube} not found: build the demo cube first with 'eo-dataset demo' (about a minute)")
    torch.manual_seed(0)
    t0 = time.perf_counter()

    ds = CubeDataset(args.cube, ["s2l2a", "s1rtc", "lulc"], crop=96)
    classes = sorted(ds.meta.modalities["lulc"].class_table)  # class id -> output index
    lookup = torch.full((max(classes) + 1,), -100, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    sampler = BalancedBatchSampler(ds, args.batch_size, require=["s2l2a", "lulc"], modalities=["s1rtc"],
                                   num_batches=args.steps)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=args.workers, collate_fn=ds.collate_fn,
                        persistent_workers=False)
    print(f"{sum(len(g) for g in sampler.groups)} training samples, "
          f"S1 combinations {sampler.combinations}, {len(classes)} classes")

    head = nn.Sequential(nn.Conv2d(12 + 2 + 1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, len(classes), 1))
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    losses = []
    for step, batch in enumerate(loader):
        s1_flag = batch["s1rtc_available"].float()[:, None, None, None].expand(-1, 1, 96, 96)
        x = torch.cat([batch["s2l2a"], batch["s1rtc"], s1_flag], dim=1)
        target = lookup[batch["lulc"][:, 0].clamp(0, len(lookup) - 1)]
        target[~batch["lulc_valid"]] = -100  # no label where the land cover is not valid
        loss = loss_fn(head(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.3f}  (S1 present in {int(batch['s1rtc_available'].sum())}"
                  f"/{len(batch['s1rtc_available'])} samples)")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"mean loss of the first 5 steps {first:.3f}, of the last 5 {last:.3f}; "
          f"{time.perf_counter() - t0:.1f} s in all")


if __name__ == "__main__":
    main()
