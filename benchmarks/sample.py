"""Drawing the corpus's sample list: ``eo-dataset sample --n 9000000 --seed 0``, timed (target < 5 minutes here).

Times, in one process: loading the offline land mask, finding every land sample of the grid and drawing (one
figure: ``draw_samples``), making the ids and writing the Parquet list; then checks the list (row count, no
duplicate, the strata counts) and reads it back as the lazy ``SampleList`` (length, one block of 128 samples).

Run from the repository root: python benchmarks/sample.py [--n 9000000] [--seed 0] [--out /tmp/corpus.parquet]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=9_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/corpus.parquet")
    args = p.parse_args()
    t0 = time.perf_counter()
    from global_land_mask import globe  # noqa: F401  (the mask loads on import)

    t_mask = time.perf_counter() - t0
    from eo_dataset.pipeline.sample_list import SampleList, write_sample_list
    from eo_dataset.pipeline.sampling import draw_samples
    from eo_dataset.spec.grid import Grid

    t1 = time.perf_counter()
    drawn = draw_samples(args.n, args.seed)
    t_draw = time.perf_counter() - t1
    t2 = time.perf_counter()
    write_sample_list(drawn, args.out, seed=args.seed)
    t_write = time.perf_counter() - t2
    total = time.perf_counter() - t0
    table = pq.read_table(args.out, columns=["sample_id", "stratum"])
    assert table.num_rows == args.n and pc.count_distinct(table.column("sample_id")).as_py() == args.n
    lst = SampleList(args.out, Grid())
    t3 = time.perf_counter()
    block = lst[len(lst) // 2: len(lst) // 2 + 128]
    t_block = time.perf_counter() - t3
    print(f"{args.n:,} samples over land drawn from {sum(drawn.candidates.values()):,} candidates (seed {args.seed}): "
          f"{total:.1f} s in all (target < 300 s): land mask {t_mask:.1f} s, draw {t_draw:.1f} s, ids + Parquet "
          f"{t_write:.1f} s; {Path(args.out).stat().st_size / 1e6:.0f} MB; one block of {len(block)} read back in "
          f"{1000 * t_block:.1f} ms")
    for name, count in drawn.counts().items():
        print(f"  {name:22s} {count:>10,} of {drawn.candidates[name]:>10,}")


if __name__ == "__main__":
    main()
