"""Region -> sample enumeration, every figure measured in this one run.

(a) ~9M samples: ``Grid.sample_index`` over 0,0,80,80 (8,968,153 samples): the index (what ``plan`` counts), then
    every id (``SampleIndex.ids``); target < 30 s for both together.
(b) 0,40,10,50 (141,048 samples): the index, the ids, every Sample object (``samples_in``), and the command
    ``eo-dataset plan 4m4eo --region 0,40,10,50`` in a fresh process (imports included); target < 5 s.
(c) the baseline in this process: the original one-sample-at-a-time algorithm (kept as the reference in
    tests/eo_dataset/spec/test_grid.py) on a small region, its samples/s against the index's samples/s on (a) and (b).

Run from the repository root: python benchmarks/enumerate.py [--big 0,0,80,80] [--small 0,40,1,41]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference lives in tests/

from eo_dataset import Grid  # noqa: E402
from tests.eo_dataset.spec.test_grid import _reference_samples_in  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bbox(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", default="0,0,80,80", help="a ~9M-sample region")
    p.add_argument("--region", default="0,40,10,50", help="the issue's region")
    p.add_argument("--small", default="0,40,1,41", help="region for the old algorithm's baseline")
    args = p.parse_args()
    grid = Grid()

    index, t_index = timed(lambda: grid.sample_index(bbox(args.big)))
    ids, t_ids = timed(index.ids)
    n_big = len(index)
    rate_big = n_big / t_index
    print(f"(a) {args.big}: {n_big:,} samples; index {t_index:.2f} s ({rate_big:,.0f} samples/s), "
          f"ids {t_ids:.2f} s; together {t_index + t_ids:.2f} s (target < 30 s)")
    del index, ids

    index, t_index = timed(lambda: grid.sample_index(bbox(args.region)))
    _, t_ids = timed(index.ids)
    _, t_obj = timed(lambda: list(index))
    n_region = len(index)
    cmd = [sys.executable, "-m", "eo_dataset.cli", "plan", "4m4eo", "--region", args.region]
    _, t_cli = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
    _, t_import = timed(lambda: subprocess.run([sys.executable, "-c", "import eo_dataset.cli"], check=True))
    print(f"(b) {args.region}: {n_region:,} samples; index {t_index:.2f} s, ids {t_ids:.2f} s, Sample objects "
          f"{t_obj:.2f} s; 'eo-dataset plan 4m4eo --region {args.region}' {t_cli:.2f} s wall in a fresh process "
          f"(of which importing eo_dataset.cli alone: {t_import:.2f} s) (target < 5 s)")

    ref, t_ref = timed(lambda: _reference_samples_in(grid, bbox(args.small)))
    small, t_small = timed(lambda: grid.sample_index(bbox(args.small)))
    assert small.ids() == [r[0] for r in ref], "the index differs from the reference"
    rate_ref = len(ref) / t_ref
    print(f"(c) old algorithm on {args.small}: {len(ref):,} samples in {t_ref:.2f} s ({rate_ref:,.0f} samples/s; "
          f"the same ids from the index in {t_small:.3f} s). Index samples/s vs old: "
          f"{rate_big / rate_ref:,.0f}x on (a), {n_region / t_index / rate_ref:,.0f}x on (b)")


if __name__ == "__main__":
    main()
