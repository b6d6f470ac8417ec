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
- per block: the blocks' own work (their align + write as their manifest entries record them: wall, and the CPU
  of the process that ran them); and the blocks' phase wall x workers, less every block's own work, over the
  blocks: what scheduling, shipping the samples, the manifest entry and the result cost a block;
- the client's (and scheduler's) CPU per block during the blocks' phase: the serial part that bounds how many
  blocks per second one client can drive, and is not inflated by a busy machine as wall times are;
- objects written (files in the cube).

Then a line through the measured points (least squares, per quantity) gives 9M; the growth exponent between the two
largest sizes says whether it is linear.

Each size's row goes to ``<work>/controlplane.json`` as soon as it is measured (with the date, the machine's load
average and the command), and is printed as a row of the table in docs/planet.md. A size already in that file is
not run again (``--fresh`` runs it again), so a long run (10^6 samples: 12 min on an idle 2-core machine,
2026-11-28) can be stopped and continued; a size interrupted mid-build resumes its cube, and its row then measures
the blocks of the last run only (``resumed_blocks`` says how many were done before). The build reports its progress
on stderr.

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
    """Build (or resume) the synthetic recipe from a sample list; the measurements of this process."""
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
    found = manifest.read_manifest(out) if Path(out, store.CUBE_MARKER).is_file() else None
    same = found is not None and found["recipe_hash"] == recipe.hash and not found.get("updating") and \
        found["samples_hash"] == manifest.hash_ids(store.sample_ids(samples))
    before = manifest.done_blocks(out) if same else set()  # a size interrupted before: its cube is resumed
    load0 = os.getloadavg()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter() - t0
        if now - last[0] >= 60 or done == total:
            last[0] = now
            print(f"  {done:,}/{total:,} samples, {now / 60:.1f} min", file=sys.stderr, flush=True)

    try:
        report = run.build(recipe, samples, out, scheduler=cluster.scheduler_address, overwrite=not same,
                           progress=progress)
    finally:
        wall = time.perf_counter() - t0
        cluster.close()
    entries = {i: e for i, e in manifest.iter_block_reports(out) if i not in before}
    own = sum(e["timing"]["align_s"] + e["timing"]["write_s"] for e in entries.values())
    own_cpu = sum(e["timing"]["cpu_s"] for e in entries.values())
    n_run = max(len(entries), 1)  # blocks built by this run
    blocks_wall = marks["finish"] - (marks["open"] + times["template_s"])
    n_objects = sum(len(files) for _, _, files in os.walk(out))
    return {"n": len(samples), "blocks": report.n_blocks, "resumed_blocks": len(before), "wall_s": wall,
            "rss_mb": _rss_mb(), "rss0_mb": rss0, "load_avg_start": load0, "load_avg_end": os.getloadavg(),
            "before_template_s": marks["open"] - t0, "template_s": times["template_s"],
            "blocks_s": blocks_wall, "own_s_per_block": own / n_run, "own_cpu_s_per_block": own_cpu / n_run,
            "overhead_ms_per_block": 1000 * max(blocks_wall * workers - own, 0.0) / n_run,
            "client_cpu_ms_per_block": 1000 * (marks["finish_cpu"] - marks["open_end_cpu"]) / n_run,
            "finalize_s": times["finalize_s"], "merge_s": times["merge_s"], "objects": n_objects}


def open_only(listfile: str, out: str) -> dict[str, float]:
    """Create the synthetic recipe's cube from a sample list (``CubeWriter.open``: ids, template, manifest) and
    nothing else; the measurements of this process."""
    from eo_dataset.cube.lifecycle import CubeWriter
    from eo_dataset.pipeline.sample_list import SampleList
    from eo_dataset.spec.grid import Grid
    from eo_dataset.spec.recipe import load_recipe

    recipe = load_recipe("synthetic")
    samples = SampleList(listfile, Grid(recipe.grid.spec()))
    rss0 = _rss_mb()
    t, c = time.perf_counter(), time.process_time()
    CubeWriter.open(Path(out), recipe, samples, overwrite=True)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"n": len(samples), "template_s": wall, "template_cpu_s": cpu, "rss_mb": _rss_mb(), "rss0_mb": rss0,
            "objects": sum(len(files) for _, _, files in os.walk(out))}


def first_rows(source: Path, n: int, path: Path) -> Path:
    """The first ``n`` samples of a sample list, as a list of their own (kept in ``path`` for the next run)."""
    if path.is_file():
        return path
    import pyarrow.parquet as pq

    f = pq.ParquetFile(source)
    tmp = path.with_name(f".{path.name}.writing")
    with pq.ParquetWriter(tmp, f.schema_arrow, compression="zstd") as w:
        left = n
        for g in range(f.metadata.num_row_groups):
            if left <= 0:
                break
            table = f.read_row_group(g)[:left]
            w.write_table(table, row_group_size=table.num_rows)
            left -= table.num_rows
    if left > 0:
        tmp.unlink()
        raise SystemExit(f"{source} has fewer than {n:,} samples")
    tmp.replace(path)
    return path


def template_only(sizes: list[int], source: Path, work: Path, saved: dict, results: Path) -> None:
    """The template step alone (``--template-sizes``) on the first N samples of a large list (``--list``)."""
    for n in sizes:
        key = f"template/{n}"
        if key not in saved:
            listfile = first_rows(source, n, work / f"first-{n}.parquet")
            out = work / f"template-{n}.zarr"
            res = subprocess.run([sys.executable, __file__, "--open", str(listfile), str(out)], check=True,
                                 stdout=subprocess.PIPE, text=True)
            shutil.rmtree(out, ignore_errors=True)
            saved[key] = json.loads(res.stdout.strip().splitlines()[-1]) | {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg_end": os.getloadavg(),
                "list": str(source), "command": " ".join(["python", "benchmarks/controlplane.py", *sys.argv[1:]])}
            _save(saved, key, results)
        r = saved[key]
        print(f"| {n:,} | {r['template_s']:.1f} s ({r['template_cpu_s']:.1f} s) | "
              f"+{r['rss_mb'] - r['rss0_mb']:,.0f} MB | {r['objects']:,} |", flush=True)


def _save(saved: dict, key: str, results: Path) -> None:
    """Add one row to the results file, as it is on disk now (another run may have added rows since this one read
    it), and to ``saved``."""
    on_disk = json.loads(results.read_text()) if results.is_file() else {}
    on_disk[key] = saved[key]
    tmp = results.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(on_disk, indent=1))
    tmp.replace(results)


def block_parts(listfile: str, out: str, repeat: int = 5) -> dict[str, float]:
    """One block's own work in this process, part by part (CPU and wall ms per 128-sample block, the mean of
    ``repeat`` blocks): align, statistics, the write as the build does it, the write as it was done before
    2026-11-28 (every array through xarray's ``to_zarr``, zarr-python's codec pipeline one chunk at a time), the
    manifest entry."""
    import xarray as xr

    from eo_dataset.cube import manifest, store
    from eo_dataset.cube.lifecycle import CubeWriter
    from eo_dataset.cube.stats import block_stats
    from eo_dataset.engine.align import align_block
    from eo_dataset.pipeline.sample_list import SampleList
    from eo_dataset.spec.grid import Grid
    from eo_dataset.spec.recipe import load_recipe

    recipe = load_recipe("synthetic")
    samples = SampleList(listfile, Grid(recipe.grid.spec()))
    cube, samples = CubeWriter.open(Path(out), recipe, samples, overwrite=True)
    slices = cube.blocks(len(samples))[: repeat + 1]

    def write_before(region: slice, block) -> None:
        data_vars = {}
        for name, m in recipe.modalities.items():
            dims = store.modality_dims(name, m)
            data_vars[name] = (dims, block.arrays[name])
            data_vars[f"{name}_valid"] = (("sample", dims[2], dims[3]), block.arrays[f"{name}_valid"])
            for suffix in ("available", "time", "item"):
                data_vars[f"{name}_{suffix}"] = ("sample", block.arrays[f"{name}_{suffix}"])
        data_vars["anchor_time"] = ("sample", block.arrays["anchor_time"])
        xr.Dataset(data_vars).to_zarr(out, region={"sample": region}, zarr_format=3, consolidated=False)

    parts: dict[str, list[float]] = {}

    def clock(name: str, fn, *args):
        t, c = time.perf_counter(), time.process_time()
        result = fn(*args)
        parts.setdefault(name + "_cpu_ms", []).append(1000 * (time.process_time() - c))
        parts.setdefault(name + "_wall_ms", []).append(1000 * (time.perf_counter() - t))
        return result

    for k, region in enumerate(slices):
        block = clock("align", align_block, recipe, samples[region])
        entry = clock("stats", block_stats, recipe, block.arrays)
        clock("write_before", write_before, region, block)
        clock("write", store.write_block, out, recipe, region, block)
        clock("manifest_entry", manifest.mark_done, out, k, {"stats": entry})
        if k == 0:  # the first block warms caches and imports
            parts.clear()
    shutil.rmtree(out, ignore_errors=True)
    return {k: float(np.mean(v)) for k, v in parts.items()} | {"blocks": len(slices) - 1}


def fit(ns: list[int], ys: list[float], at: int) -> tuple[float, float]:
    """A line through (n, y) by least squares, evaluated at ``at``; and the growth exponent of the two largest."""
    b, a = np.polyfit(np.array(ns, float), np.array(ys, float), 1)
    slope = (np.log(ys[-1]) - np.log(ys[-2])) / (np.log(ns[-1]) - np.log(ns[-2])) if min(ys[-2:]) > 0 else float("nan")
    return float(a + b * at), float(slope)


def row_markdown(r: dict[str, float]) -> str:
    """One row of the table in docs/planet.md."""
    return (f"| {r['n']:,} | {r['blocks']:,} | {r['wall_s']:,.1f} s | {r['rss_mb']:,.0f} MB "
            f"(+{r['rss_mb'] - r['rss0_mb']:,.0f}) | {r['template_s']:.1f} s | {r['finalize_s']:.2f} s "
            f"({r['merge_s']:.3f} s) | {r['own_s_per_block']:.2f} s ({r['own_cpu_s_per_block']:.2f} s) | "
            f"{r['overhead_ms_per_block']:.0f} ms | "
            f"{r['client_cpu_ms_per_block']:.0f} ms | {r['objects']:,} |")


def lists(sizes: list[int], work: Path) -> dict[int, Path]:
    """The sample list of every size (random subsets of one list of the largest size, seed 0), drawn once: a list
    already in ``work`` is reused (drawing 10^6 samples takes minutes)."""
    top = max(sizes)
    paths = {n: work / f"samples-{n}-of-{top}.parquet" for n in sizes}
    if all(p.is_file() for p in paths.values()):
        return paths
    from eo_dataset.pipeline.sample_list import write_sample_list
    from eo_dataset.pipeline.sampling import draw_samples
    from eo_dataset.spec.recipe import load_recipe

    drawn = draw_samples(top, 0, spec=load_recipe("synthetic").grid.spec())  # smaller lists: subsets of it
    rng = np.random.default_rng(0)
    fields = {f.name: getattr(drawn, f.name) for f in dataclasses.fields(drawn)}
    for n in sizes:
        keep = np.sort(rng.choice(len(drawn), size=n, replace=False))
        subset = {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in fields.items()}
        write_sample_list(type(drawn)(**subset), paths[n])
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="sample counts (comma-separated)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--work", default="/tmp/eo-controlplane",
                   help="scratch folder (lists, cubes: removed once measured, and controlplane.json: the rows)")
    p.add_argument("--fresh", action="store_true", help="measure every size again, even those in controlplane.json")
    p.add_argument("--target", type=int, default=9_000_000, help="extrapolate to this many samples")
    p.add_argument("--template-sizes", help="instead: the template step alone, on the first N samples of --list "
                   "(comma-separated sizes); rows: samples | wall (CPU) | client RSS growth | objects")
    p.add_argument("--list", type=Path, help="a large sample list for --template-sizes (e.g. the corpus's 9M)")
    p.add_argument("--block", action="store_true", help="instead: one block's own work, part by part, in this "
                   "process (on the list of the first size)")
    p.add_argument("--one", nargs=2, metavar=("LIST", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--open", nargs=2, metavar=("LIST", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.workers)))
        return
    if args.open:
        print(json.dumps(open_only(args.open[0], args.open[1])))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = work / "controlplane.json"
    saved = {} if args.fresh or not results.is_file() else json.loads(results.read_text())
    if args.template_sizes:
        if args.list is None:
            p.error("--template-sizes needs --list (a sample list at least as long as the largest size)")
        template_only([int(s) for s in args.template_sizes.split(",")], args.list, work, saved, results)
        return
    paths = lists(sizes, work)
    if args.block:
        r = block_parts(str(paths[sizes[0]]), str(work / "block.zarr"))
        print(f"one block's own work (128 samples, mean of {r['blocks']} blocks), ms: CPU (wall); load average "
              f"{os.getloadavg()[0]:.1f}")
        for part in ("align", "stats", "write", "write_before", "manifest_entry"):
            print(f"  {part:15s} {r[part + '_cpu_ms']:8.1f} ({r[part + '_wall_ms']:.1f})")
        return
    rows = []
    for n in sizes:
        key = f"{n}/{args.workers}/of-{max(sizes)}"  # smaller lists are subsets of the largest one
        if key in saved:
            rows.append(saved[key])
            print(f"{n:>9,} samples: measured before ({saved[key]['date']}), in {results}", flush=True)
            continue
        out = work / f"cube-{n}.zarr"
        if args.fresh:
            shutil.rmtree(out, ignore_errors=True)
        print(f"{n:>9,} samples: building {out}", file=sys.stderr, flush=True)
        res = subprocess.run([sys.executable, __file__, "--one", str(paths[n]), str(out), "--workers",
                              str(args.workers)], check=True, stdout=subprocess.PIPE, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 workers=args.workers, command=" ".join(["python", "benchmarks/controlplane.py", *sys.argv[1:]]))
        saved[key] = r
        _save(saved, key, results)
        rows.append(r)
        shutil.rmtree(out, ignore_errors=True)
        print(f"{n:>9,} samples {r['blocks']:>6,} blocks: wall {r['wall_s']:8.1f} s, client peak RSS "
              f"{r['rss_mb']:7.0f} MB (+{r['rss_mb'] - r['rss0_mb']:.0f} over start), "
              f"template {r['template_s']:.2f} s, "
              f"finalize {r['finalize_s']:.2f} s (merge {r['merge_s']:.3f} s), own work {r['own_s_per_block']:.3f} "
              f"s/block (CPU {r['own_cpu_s_per_block']:.3f} s), overhead {r['overhead_ms_per_block']:.1f} ms/block "
              f"(client+scheduler CPU "
              f"{r['client_cpu_ms_per_block']:.1f} ms/block), {r['objects']:,} objects"
              + (f"; resumed after {r['resumed_blocks']:,} blocks" if r.get("resumed_blocks") else "")
              + f"; load average {r['load_avg_start'][0]:.1f} at the start, {r['load_avg_end'][0]:.1f} at the end",
              flush=True)
    print("\nrows of the table in docs/planet.md:")
    for r in rows:
        print(row_markdown(r))
    if len(rows) < 2:
        return
    ns = [r["n"] for r in rows]
    print(f"\nextrapolated to {args.target:,} samples ({-(-args.target // 128):,} blocks of 128), "
          "a line through the measured points; growth exponent between the two largest sizes (1 = linear):")
    for key, what in (("rss_mb", "client peak RSS (MB)"), ("wall_s", "wall time on these workers (s)"),
                      ("template_s", "template creation (s)"), ("finalize_s", "finalize (s)"),
                      ("merge_s", "stats merge (s)"), ("objects", "objects written")):
        value, slope = fit(ns, [r[key] for r in rows], args.target)
        print(f"  {what:34s} {value:14,.1f}   exponent {slope:5.2f}")
    print(f"per block (constant if the control plane scales): at {ns[-1]:,} samples, and the growth exponent")
    for key, what in (("own_s_per_block", "own work per block (s)"),
                      ("own_cpu_s_per_block", "own work's CPU per block (s)"),
                      ("overhead_ms_per_block", "overhead per block (ms)"),
                      ("client_cpu_ms_per_block", "client+scheduler CPU per block (ms)")):
        _, slope = fit(ns, [r[key] for r in rows], args.target)
        print(f"  {what:34s} {rows[-1][key]:14,.3f}   exponent {slope:5.2f}")


if __name__ == "__main__":
    main()
