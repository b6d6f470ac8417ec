"""The ``eo-dataset`` command line: demo, build, info, cell."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from eo_dataset import __version__
from eo_dataset.build import build
from eo_dataset.errors import EODatasetError, GridError, RecipeError
from eo_dataset.grid import Grid, Sample
from eo_dataset.manifest import block_reports
from eo_dataset.recipe import Recipe, catalogs_dir, load_recipe
from eo_dataset.store import open_cube

console = Console(stderr=True)


def _samples(grid: Grid, args: argparse.Namespace) -> list[Sample]:
    if args.samples:
        path = Path(args.samples)
        if not path.is_file():
            raise GridError(f"sample list {args.samples!r} not found; expected a CSV with a 'sample_id' column")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "sample_id" not in rows[0]:
            raise GridError(f"{args.samples}: expected a CSV with a header row and a 'sample_id' column")
        return [grid.sample(r["sample_id"].strip()) for r in rows]
    if args.region:
        region = args.region
        if Path(region).is_file():
            return grid.samples_in(json.loads(Path(region).read_text()))
        try:
            bbox = [float(v) for v in region.split(",")]
        except ValueError:
            bbox = []
        if len(bbox) != 4:
            raise GridError(f"--region {region!r}: expected WEST,SOUTH,EAST,NORTH in degrees or a GeoJSON file")
        return grid.samples_in(bbox)
    if args.cells:
        return [s for c in args.cells.split(",") for s in grid.samples_of_cell(c.strip())]
    raise GridError("say which samples to build: --samples CSV, --region W,S,E,N | FILE.geojson, or --cells IDS")


def _progress_build(recipe: Recipe, samples: list[Sample], out: str, args: argparse.Namespace) -> None:
    columns = [TextColumn("building [bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("samples"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(out, total=len(samples), rate="")
        start = {"n": None}

        def update(done: int, total: int) -> None:
            if start["n"] is None:
                start["n"] = done
            dt = time.perf_counter() - t0
            rate = (done - start["n"]) / dt if dt > 0 and done > start["n"] else 0.0
            bar.update(task, completed=done, rate=f"{rate:.1f}/s" if rate else "")

        report = build(recipe, samples, out, scheduler=args.scheduler, workers=args.workers,
                       overwrite=args.overwrite, append=getattr(args, "append", False),
                       update=[m for m in (getattr(args, "update", None) or "").split(",") if m], progress=update)
    skipped = f", {report.skipped_blocks} of {report.n_blocks} blocks already done" if report.skipped_blocks else ""
    console.print(f"built {out}: {report.n_samples} samples in {report.seconds:.1f} s "
                  f"({report.samples_per_second:.1f} samples/s{skipped}); "
                  f"{report.missing} sample/modality pairs without data (see 'eo-dataset info {out}')")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe named on the command line, with its ``--source NAME=HREF`` overrides applied."""
    recipe = load_recipe(args.recipe)
    overrides = dict(s.split("=", 1) for s in args.source or [] if "=" in s)
    if len(overrides) != len(args.source or []):
        raise RecipeError("--source expects NAME=PATH_OR_URL, e.g. --source demo=demo-world/catalog.json")
    return recipe.with_sources(overrides)


def cmd_build(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    samples = _samples(Grid(recipe.grid.spec()), args)
    _progress_build(recipe, samples, args.out, args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eo_dataset.demo import demo_sources, make_world

    t0 = time.perf_counter()
    with console.status(f"generating the demo world in {args.world} (once; reused afterwards)"):
        catalog = make_world(args.world)
    console.print(f"demo world ready: {catalog} ({time.perf_counter() - t0:.1f} s)")
    recipe = load_recipe(catalogs_dir() / "demo.yaml").with_sources(demo_sources(catalog))
    args.samples, args.region, args.cells = str(Path(args.world) / "samples.csv"), None, None
    samples = _samples(Grid(recipe.grid.spec()), args)
    _progress_build(recipe, samples, args.out, args)
    print_info(args.out)
    console.print(f"total {time.perf_counter() - t0:.1f} s. Open it with: python -c \"import xarray as xr; "
                  f"print(xr.open_zarr('{args.out}'))\"")
    return 0


def _disk_usage(path: Path) -> tuple[int, int]:
    size = files = 0
    for root, _, names in os.walk(path):
        for n in names:
            size += os.path.getsize(os.path.join(root, n))
            files += 1
    return size, files


def print_info(path: str) -> None:
    """Print a cube's samples, modalities, availability, size, recipe and version."""
    ds = open_cube(path)
    recipe = ds.attrs["recipe"]
    n = ds.sizes["sample"]
    size, files = _disk_usage(Path(path)) if Path(path).exists() else (0, 0)
    out = Console(width=max(Console().width, 100))
    out.print(f"[bold]{path}[/]: {n} samples, recipe '{recipe['name']}' ({ds.attrs['recipe_hash']}), "
              f"built by eo-dataset {ds.attrs['eo_dataset_version']}; {size / 1e6:.1f} MB in {files} files")
    reasons: dict[str, Counter] = {}
    for entry in block_reports(path).values():
        for per_mod in entry["missing"].values():
            for m, why in per_mod.items():
                reasons.setdefault(m, Counter())[why] += 1
    table = Table("modality", "collection", "bands", "grid", "dtype", "available")
    for m, attrs in ds.attrs["modalities"].items():
        avail = int(ds[f"{m}_available"].sum())
        var = ds[m]
        table.add_row(m, attrs["collection"], str(len(attrs["bands"])),
                      f"{var.shape[-1]} px @ {attrs['resolution_m']:g} m", str(var.dtype), f"{avail}/{n}")
    out.print(table)
    for m, counts in reasons.items():
        for why, k in counts.most_common(3):
            out.print(f"  {m}: {k} x {why}")
    done = len(block_reports(path))
    blocks = -(-n // ds[next(iter(ds.attrs["modalities"]))].encoding.get("shards", (n,))[0])
    if done < blocks:
        out.print(f"[yellow]incomplete build: {done} of {blocks} blocks done; rerun the same build command to "
                  "resume[/]")


def cmd_info(args: argparse.Namespace) -> int:
    print_info(args.cube)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Per sample and modality: why data is missing; per block: where and how long it ran."""
    ds = open_cube(args.cube)
    reports = block_reports(args.cube)
    rows = [(sid, m, why) for e in reports.values() for sid, per in e["missing"].items() for m, why in per.items()]
    out = Console(width=max(Console().width, 100))
    n_blocks = -(-ds.sizes["sample"] // next(iter(reports.values()))["samples"][1]) if reports else 0
    timings = [e.get("timing", {}) for e in reports.values()]
    cpu = sum(t.get("cpu_s", 0.0) for t in timings)
    workers = {(t.get("host"), t.get("pid")) for t in timings if t}
    out.print(f"[bold]{args.cube}[/]: {len(reports)} of {max(n_blocks, len(reports))} blocks done, "
              f"{len(rows)} sample/modality pairs without data; {cpu:.1f} CPU-s on {len(workers)} worker process(es)")
    summary = Table("modality", "samples", "reason")
    for (m, why), k in Counter((m, why) for _, m, why in rows).most_common():
        summary.add_row(m, str(k), why)
    out.print(summary)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample_id", "modality", "reason"])
            w.writerows(sorted(rows))
        out.print(f"every sample/modality without data: {args.csv}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Sample, shard and object counts, bytes per modality and projected CPU time and cost of a build."""
    from eo_dataset.plan import human_bytes, measure, plan, stored_total, world_sample_count

    recipe = load_recipe(args.recipe)
    if args.shard_samples:
        build_spec = recipe.build.model_copy(update={"shard_samples": args.shard_samples})
        recipe = recipe.model_copy(update={"build": build_spec})
    grid = Grid(recipe.grid.spec())
    if args.region == "world":
        n = world_sample_count(grid)
        where = "the whole grid"
    else:
        args.samples, args.cells = None, None
        n = len(_samples(grid, args))
        where = f"region {args.region}"
    if args.limit:
        n, where = min(n, args.limit), f"{where}, limited to {args.limit:,} samples"
    measured = measure(args.from_cube) if args.from_cube else None
    p = plan(recipe, n, measured)
    out = Console(width=max(Console().width, 100))
    out.print(f"[bold]plan[/] for recipe '{recipe.name}' over {where}: {n:,} samples, "
              f"{p.shards:,} shards of {p.shard_samples} samples")
    out.print(f"objects per array: {p.max_objects_per_array:,} at most ({len(p.arrays)} arrays, "
              f"{p.max_objects_per_array * len(p.arrays):,} objects in all)")
    if p.max_objects_per_array > 100_000:
        need = -(-n // 100_000)
        out.print(f"[yellow]more than 10^5 objects per array: set build.shard_samples to >= {need} in the recipe "
                  "(blocks of that many samples; memory per worker grows with it)[/]")
    table = Table("modality", "raw (uncompressed)", "on disk (measured)" if measured else "on disk")
    for m, b in p.modalities.items():
        table.add_row(m, human_bytes(b["raw_bytes"]), human_bytes(b["stored_bytes"]) if "stored_bytes" in b else "?")
    total = stored_total(p)
    table.add_row("[bold]total", human_bytes(sum(b["raw_bytes"] for b in p.modalities.values())),
                  human_bytes(total) if total is not None else "?")
    out.print(table)
    if measured:
        hours, price = p.cpu_hours or 0.0, args.cpu_hour_usd
        out.print(f"CPU: {measured.cpu_s_per_sample:.3f} CPU-s per sample (measured on {measured.cube}, "
                  f"{measured.n_samples} samples) -> {hours:,.0f} CPU-hours; on {args.workers} workers "
                  f"~{hours / args.workers:,.1f} h wall; at ${price}/CPU-hour ~${hours * price:,.0f}")
        out.print("[dim]the measurement reads local files; remote reads add network time per sample[/]")
    else:
        out.print("CPU time: pass --from-cube CUBE (a cube built with this engine) for a measured projection")
    return 0


def cmd_cell(args: argparse.Namespace) -> int:
    grid = Grid(load_recipe(args.recipe).grid.spec()) if args.recipe else Grid()
    s = grid.sample_at(args.lon, args.lat)
    fp = s.footprint(densify=1)
    info = {"sample_id": s.id, "cell": s.cell, "epsg": s.epsg, "x0": s.x0, "y0": s.y0, "size_m": s.size_m,
            "bounds": s.bounds, "footprint_lonlat": [list(map(float, c)) for c in fp.exterior.coords],
            "resolutions": {f"{r:g} m": list(s.shape(r)) for r in (10, 20, 30, 60)
                            if abs(s.size_m / r - round(s.size_m / r)) < 1e-9}}
    print(json.dumps(info, indent=1))
    return 0


def add_sample_options(p: argparse.ArgumentParser) -> None:
    """Which samples (``--samples``/``--region``/``--cells``, read by :func:`_samples`) and ``--source``."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--samples", help="CSV with a sample_id column")
    which.add_argument("--region", help="WEST,SOUTH,EAST,NORTH in degrees, or a GeoJSON file")
    which.add_argument("--cells", help="comma-separated Major TOM cell ids (all their sub-cells)")
    p.add_argument("--source", action="append", metavar="NAME=HREF", help="override a recipe source's href")


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog="eo-dataset", description="Build and inspect aligned multi-modal EO cubes.")
    p.add_argument("--version", action="version", version=f"eo-dataset {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log every sample/modality that fails")
    sub = p.add_subparsers(dest="command", required=True)

    def build_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786), or 'sync' to run in this "
                       "process; default: a LocalCluster on this machine (or $DASK_SCHEDULER_ADDRESS)")
        q.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
        q.add_argument("--overwrite", action="store_true", help="replace a cube built from another recipe")

    d = sub.add_parser("demo", help="generate the offline demo world and build a cube from catalogs/demo.yaml")
    d.add_argument("--out", default="demo.zarr", help="cube path (default: demo.zarr)")
    d.add_argument("--world", default="demo-world", help="where the demo world goes (default: demo-world)")
    build_opts(d)
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("build", help="build (or resume) a cube from a recipe")
    b.add_argument("recipe", help="recipe YAML (or a bundled recipe name, e.g. demo)")
    b.add_argument("--out", required=True, help="cube path (.zarr)")
    add_sample_options(b)
    change = b.add_mutually_exclusive_group()
    change.add_argument("--append", action="store_true", help="add the samples not yet in the cube (same recipe)")
    change.add_argument("--update", metavar="MODALITIES", help="rebuild only these modalities (comma-separated) "
                        "for every sample; the recipe may differ from the cube's only in them")
    build_opts(b)
    b.set_defaults(func=cmd_build)

    i = sub.add_parser("info", help="summarise a cube")
    i.add_argument("cube")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("report", help="why data is missing, per sample and modality; where blocks ran")
    r.add_argument("cube")
    r.add_argument("--csv", help="write every sample/modality without data to this CSV")
    r.set_defaults(func=cmd_report)

    pl = sub.add_parser("plan", help="samples, shards, objects, bytes and CPU time of a build, before running it")
    pl.add_argument("recipe")
    pl.add_argument("--region", required=True, help="'world', WEST,SOUTH,EAST,NORTH or a GeoJSON file")
    pl.add_argument("--limit", type=int, help="plan for at most this many samples (e.g. 9000000)")
    pl.add_argument("--from-cube", help="a built cube to measure bytes and CPU seconds per sample from")
    pl.add_argument("--shard-samples", type=int, help="what if build.shard_samples were this")
    pl.add_argument("--workers", type=int, default=100, help="workers for the wall-time estimate (default 100)")
    pl.add_argument("--cpu-hour-usd", type=float, default=0.04, help="price of a CPU-hour (default 0.04)")
    pl.set_defaults(func=cmd_plan)

    c = sub.add_parser("cell", help="the sample at a point: id, EPSG, origin, footprint (use -- before negative "
                       "numbers: eo-dataset cell -- -48.11 -25.32)")
    c.add_argument("lon", type=float)
    c.add_argument("lat", type=float)
    c.add_argument("--recipe", help="use this recipe's grid settings")
    c.set_defaults(func=cmd_cell)
    from eo_dataset.snapshot import add_snapshot_parser  # the snapshot command lives with its code

    add_snapshot_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``eo-dataset``."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except EODatasetError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
