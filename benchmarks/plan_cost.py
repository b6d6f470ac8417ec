"""The planner's CPU model against a measured build of a bigger region, every figure measured in this one run.

`eo-dataset plan --from-cube` projects CPU as ``W * fixed + N * per_sample``: ``fixed`` is the start-up one worker
process pays in its first block (imports, catalogs, the OSM extract), ``per_sample`` the CPU per sample at the
measured cube's data availability (``per_pair`` per sample/modality pair with data). Both come from the demo cube's
build manifest (eo_dataset.pipeline.plan.split_cpu).

For each way of running (``--scheduler sync``: one process; a LocalCluster of 2 worker processes):
1. build the demo's 32 samples in a fresh process: the measurement;
2. build a bigger region of the demo world (default 11.8,47.72,12.25,47.92: 141 samples in 12 cells; the demo
   world's data covers only its middle, so fewer sample/modality pairs have data) in a fresh process;
3. compare that build's measured CPU (the sum of its blocks' CPU seconds) with
   (a) the old model: the demo cube's CPU / its samples, times N;
   (b) the plan as printed: W * fixed + N * per_pair * expected pairs per sample, the availability `plan` expects
       by searching the recipe's local sources over the region (eo_dataset.pipeline.coverage.expected_availability).
       Target: within 25 %;
   (c) the same fixed and per-pair costs with the bigger build's own availability (what (b) would be with a
       perfect availability estimate): W * fixed + per_pair * (its pairs with data).

Run: python benchmarks/plan_cost.py [--world demo-world] [--region W,S,E,N] [--skip-workers]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eo_dataset import Grid, load_recipe
from eo_dataset.demo.world import demo_sources, make_world
from eo_dataset.pipeline.coverage import expected_availability
from eo_dataset.pipeline.plan import measure


def build(world: Path, out: Path, which: list[str], scheduler: list[str]) -> tuple[float, float]:
    """Run ``eo-dataset build demo`` in a fresh process; returns (wall seconds, CPU seconds of the processes)."""
    sources = [a for name, href in demo_sources(world / "catalog.json").items() for a in ("--source", f"{name}={href}")]
    cmd = [sys.executable, "-m", "eo_dataset.cli", "build", "demo", *which, "--out", str(out), "--overwrite",
           *scheduler, *sources]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="demo-world")
    p.add_argument("--region", default="11.8,47.72,12.25,47.92")
    p.add_argument("--skip-workers", action="store_true", help="only the --scheduler sync build of the region")
    args = p.parse_args()
    world = make_world(args.world).parent
    recipe = load_recipe("demo").with_sources(demo_sources(world / "catalog.json"))
    region = [float(v) for v in args.region.split(",")]
    runs = [("sync", ["--scheduler", "sync"], 1)]
    if not args.skip_workers:
        runs.append(("2 workers", ["--workers", "2"], 2))
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, scheduler, workers in runs:
            small, big = Path(tmp) / f"small-{workers}.zarr", Path(tmp) / f"big-{workers}.zarr"
            wall, _ = build(world, small, ["--samples", str(world / "samples.csv")], scheduler)
            m = measure(small)
            print(f"[{name}] measurement: the demo's {m.n_samples} samples, {m.n_blocks} blocks on {m.workers} worker "
                  f"process(es): {m.cpu_s_total:.2f} CPU-s in blocks, {wall:.1f} s wall")
            print(f"  fixed {m.cpu_s_fixed:.2f} CPU-s per worker process; {m.cpu_s_per_pair:.4f} CPU-s per sample/"
                  f"modality pair with data x {m.pairs_per_sample:.2f} pairs per sample = {m.cpu_s_per_sample:.3f} "
                  f"CPU-s per sample ({m.cpu_method}); old model: {m.cpu_s_total / m.n_samples:.3f} CPU-s/sample")
            wall, _ = build(world, big, ["--region", args.region], scheduler)
            b = measure(big)
            w = min(workers, b.n_blocks)
            n, pairs = b.n_samples, b.pairs_per_sample * b.n_samples
            measured = b.cpu_s_total
            print(f"  {args.region}: {n} samples, {b.n_blocks} blocks on {b.workers} worker process(es), "
                  f"{b.pairs_per_sample:.2f} pairs with data per sample; measured {measured:.2f} CPU-s in blocks, "
                  f"{wall:.1f} s wall")
            expected = expected_availability(recipe, Grid(recipe.grid.spec()).sample_index(region))
            plan_pairs = sum(expected.values())
            print(f"  plan expects {plan_pairs:.2f} pairs with data per sample there (the build found "
                  f"{b.pairs_per_sample:.2f}; the demo cube has {m.pairs_per_sample:.2f})")
            worst = max(worst, abs(m.cpu_s(n, w, plan_pairs) / measured - 1))
            for label, value in (("(a) old model: N x cube CPU / cube samples", m.cpu_s_total / m.n_samples * n),
                                 ("(b) plan as printed: W x fixed + N x per_pair x expected",
                                  m.cpu_s(n, w, plan_pairs)),
                                 ("(c) W x fixed + per_pair x pairs with data", m.cpu_s(n, w, b.pairs_per_sample))):
                print(f"  {label:<50} {value:7.2f} CPU-s  {value / measured - 1:+7.1%}")
            print(f"      (c) = {w} x {m.cpu_s_fixed:.2f} + {m.cpu_s_per_pair:.4f} x {pairs:.0f} pairs")
    print(f"(b) within 25 % of every measured build: {'yes' if worst <= 0.25 else 'NO'} (worst {worst:.1%})")

if __name__ == "__main__":
    main()
