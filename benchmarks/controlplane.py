"""The build's control plane measured at 10^3..10^6 samples, with synthetic pixels, and extrapolated to 9M.

For each size N: a sample list of N land samples (a random subset of one list drawn by ``eo_dataset.pipeline.sampling``
for the largest size, seed 0) is written as Parquet,
then ``catalogs/synthetic.yaml`` (8 x 8 px per sample, pixels made from the sample id) is built from it on a
LocalCluster, in a fresh process per size (so the client's peak RSS is its own). Measured per size:

- client peak RSS (the build's process: the client, and the LocalCluster's scheduler that runs inside it, as in a
  default build), and its growth over the same process right before the build (cluster started, workers warm);
- wall time; template creation (``CubeWriter.open``: the sample list, the cube's arrays and coordinates, the
  manifest); finalize (``CubeWriter.finish``), of which the statistics merge; the time before the template
  (source checks, the region's extent);
- per block: the blocks' phase wall x workers, less every block's own work (its align + write as its manifest
  entry records them), over the blocks: what scheduling, shipping the samples, the manifest entry and the
  result cost a block;
- the client's (and scheduler's) CPU per block during the blocks' phase: the serial part that bounds how many
  blocks per second one client can drive, and is not inflated by a busy machine as wall times are;
- objects written (files in the cube).

Then a line through the measured points (least squares, per quantity) gives 9M; the growth exponent between the two
largest sizes says whether it is linear.

Run from the repository root: python benchmarks/controlplane.py [--sizes 1000,10000,100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(listfile: str, out: str, workers: int) -> dict[str, float]:
    """Build the synthetic recipe from a sample list; the measurements of this process."""
    from eo_dataset.cube import lifecycle, manifest, store
    from eo_dataset.pipeline import run
    from eo_dataset.pipeline.sample_list import SampleList
    from eo_dataset.spec.grid import Grid
    from eo_dataset.spec.recipe import load_recipe

    recipe = load_recipe("synthetic")
    samples = SampleList(listfile, Grid(recipe.grid.spec()))
    times: dict[str, float] = {"template_s": 0.0, "finalize_s": 0.0, "merge_s": 0.0}
    marks: dict[str, float] = {}

    def timed(owner: object, name: str, key: str, mark: str | None = None) -> None:
        fn = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            if mark:
                marks.setdefault(mark, t)
                marks.setdefault(mark + "_cpu", time.process_time())
            try:
                return fn(*args, **kwargs)
            finally:
                times[key] += time.perf_counter() - t
                if mark:
                    marks[mark + "_end"] = time.perf_counter()

        setattr(owner, name, wrapper)

    open_fn = lifecycle.CubeWriter.open.__func__

    def open_timed(cls, *args, **kwargs):
        t = time.perf_counter()
        marks["open"] = t
        try:
            return open_fn(cls, *args, **kwargs)
        finally:
            times["template_s"] += time.perf_counter() - t
            marks["open_end_cpu"] = time.process_time()

    lifecycle.CubeWriter.open = classmethod(open_timed)
    timed(lifecycle.CubeWriter, "finish", "finalize_s", "finish")
    timed(store, "merge", "merge_s")
    from dask.distributed import Client, LocalCluster

    # the cluster is started (and its workers import the package) before the clock: a start-up, not per block
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=50)
    with Client(cluster) as client:
        client.run(lambda: __import__("eo_dataset.pipeline.run"))
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    try:
        report = run.build(recipe, samples, out, scheduler=cluster.scheduler_address, overwrite=True)
    finally:
        wall = time.perf_counter() - t0
        cluster.close()
    entries = manifest.block_reports(out)
    own = sum(e["timing"]["align_s"] + e["timing"]["write_s"] for e in entries.values())
    blocks_wall = marks["finish"] - (marks["open"] + times["template_s"])
    n_objects = sum(len(files) for _, _, files in os.walk(out))
    return {"n": len(samples), "blocks": report.n_blocks, "wall_s": wall, "rss_mb": _rss_mb(), "rss0_mb": rss0,
            "before_template_s": marks["open"] - t0, "template_s": times["template_s"],
            "blocks_s": blocks_wall, "own_s_per_block": own / len(entries),
            "overhead_ms_per_block": 1000 * max(blocks_wall * workers - own, 0.0) / len(entries),
            "client_cpu_ms_per_block": 1000 * (marks["finish_cpu"] - marks["open_end_cpu"]) / len(entries),
            "finalize_s": times["finalize_s"], "merge_s": times["merge_s"], "objects": n_objects}


def fit(ns: list[int], ys: list[float], at: int) -> tuple[float, float]:
    """A line through (n, y) by least squares, evaluated at ``at``; and the growth exponent of the two largest."""
    b, a = np.polyfit(np.array(ns, float), np.array(ys, float), 1)
    slope = (np.log(ys[-1]) - np.log(ys[-2])) / (np.log(ns[-1]) - np.log(ns[-2])) if min(ys[-2:]) > 0 else float("nan")
    return float(a + b * at), float(slope)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="sample counts (comma-separated)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--work", default="/tmp/eo-controlplane", help="scratch folder (lists and cubes; removed after)")
    p.add_argument("--target", type=int, default=9_000_000, help="extrapolate to this many samples")
    p.add_argument("--one", nargs=2, metavar=("LIST", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.workers)))
        return
    from eo_dataset.pipeline.sample_list import write_sample_list
    from eo_dataset.pipeline.sampling import draw_samples
    from eo_dataset.spec.recipe import load_recipe

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = load_recipe("synthetic").grid.spec()
    sizes = [int(s) for s in args.sizes.split(",")]
    drawn = draw_samples(max(sizes), 0, spec=spec)  # the largest list; smaller ones are random subsets of it
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        listfile = work / f"samples-{n}.parquet"
        keep = np.sort(rng.choice(len(drawn), size=n, replace=False))
        fields = {f.name: getattr(drawn, f.name) for f in dataclasses.fields(drawn)}
        subset = {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in fields.items()}
        write_sample_list(type(drawn)(**subset), listfile)
        out = work / f"cube-{n}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        res = subprocess.run([sys.executable, __file__, "--one", str(listfile), str(out), "--workers",
                              str(args.workers)], check=True, capture_output=True, text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        shutil.rmtree(out, ignore_errors=True)
        r = rows[-1]
        print(f"{n:>9,} samples {r['blocks']:>6,} blocks: wall {r['wall_s']:8.1f} s, client peak RSS "
              f"{r['rss_mb']:7.0f} MB (+{r['rss_mb'] - r['rss0_mb']:.0f} over start), "
              f"template {r['template_s']:.2f} s, "
              f"finalize {r['finalize_s']:.2f} s (merge {r['merge_s']:.3f} s), own work {r['own_s_per_block']:.3f} "
              f"s/block, overhead {r['overhead_ms_per_block']:.1f} ms/block (client+scheduler CPU "
              f"{r['client_cpu_ms_per_block']:.1f} ms/block), {r['objects']:,} objects", flush=True)
    if len(rows) < 2:
        return
    ns = [r["n"] for r in rows]
    print(f"\nextrapolated to {args.target:,} samples ({-(-args.target // 128):,} blocks of 128), "
          "a line through the measured points; growth exponent between the two largest sizes (1 = linear):")
    for key, what in (("rss_mb", "client peak RSS (MB)"), ("wall_s", "wall time on these workers (s)"),
                      ("template_s", "template creation (s)"), ("finalize_s", "finalize (s)"),
                      ("merge_s", "stats merge (s)"), ("objects", "objects written"),
                      ("overhead_ms_per_block", "overhead per block (ms)"),
                      ("client_cpu_ms_per_block", "client+scheduler CPU per block (ms)")):
        value, slope = fit(ns, [r[key] for r in rows], args.target)
        print(f"  {what:34s} {value:14,.1f}   exponent {slope:5.2f}")


if __name__ == "__main__":
    main()
