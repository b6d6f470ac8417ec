"""The ``eo-dataset`` command line: demo, build, info, report, plan, cell, snapshot, sample, show, browse."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from eo_dataset._version import __version__
from eo_dataset.cli.common import add_sample_options, command, console, recipe_from_args, samples_from_args
from eo_dataset.cli.sample import add_sample_parser
from eo_dataset.cli.snapshot import add_snapshot_parser
from eo_dataset.cube.manifest import block_reports, read_manifest
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.cube.storage import FINISHED, is_object_url, locate, versions
from eo_dataset.cube.store import open_cube
from eo_dataset.errors import CubeError, EODatasetError, GridError
from eo_dataset.logfile import setup_logging
from eo_dataset.outputs import check_output_file, is_url
from eo_dataset.pipeline.coverage import check_region, expected_availability, region_bbox
from eo_dataset.pipeline.run import BuildReport, build
from eo_dataset.spec.grid import Grid, Sample
from eo_dataset.spec.recipe import Recipe, catalogs_dir, load_recipe


def _progress_build(recipe: Recipe, samples: list[Sample], out: str, args: argparse.Namespace) -> BuildReport:
    columns = [TextColumn("building [bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("samples"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    t0 = time.perf_counter()
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(out, total=len(samples), rate="", start=False)
    start: dict[str, int | None] = {"n": None}

    def update(done: int, total: int) -> None:
        if start["n"] is None:  # the bar appears once the checks are passed and work begins
            start["n"] = done
            bar.start()
            bar.start_task(task)
        dt = time.perf_counter() - t0
        rate = (done - start["n"]) / dt if dt > 0 and done > start["n"] else 0.0
        bar.update(task, completed=done, rate=f"{rate:.1f}/s" if rate else "")

    try:
        report = build(recipe, samples, out, scheduler=args.scheduler, workers=args.workers,
                       overwrite=args.overwrite, append=getattr(args, "append", False),
                       update=[m for m in (getattr(args, "update", None) or "").split(",") if m], progress=update)
    finally:
        if start["n"] is not None:
            bar.stop()
    skipped = f", {report.skipped_blocks} of {report.n_blocks} blocks already done" if report.skipped_blocks else ""
    console.print(f"built {out}: {report.n_samples} samples in {report.seconds:.1f} s "
                  f"({report.samples_per_second:.1f} samples/s{skipped}); "
                  f"{report.missing} sample/modality pairs without data (see 'eo-dataset info {out}')",
                  highlight=False, soft_wrap=True)
    for w in report.warnings:
        console.print(f"[bold yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    return report


def cmd_build(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    samples = samples_from_args(Grid(recipe.grid.spec()), args)
    report = _progress_build(recipe, samples, args.out, args)
    return _empty_exit(report)


def _empty_exit(report: BuildReport) -> int:
    """Exit code 1, loudly, when the cube holds no data at all (so scripts notice); else 0."""
    if report.empty:
        console.print(f"[bold red]error:[/] {report.path} holds no data: none of its {report.n_samples} samples "
                      "found data in any modality (see the warnings above and 'eo-dataset report "
                      f"{report.path}')", highlight=False, soft_wrap=True)
        return 1
    return 0


def _scaled_world(args: argparse.Namespace) -> Path:
    """``demo --cells N --seed S``: the scaled demo world, generated with a progress bar."""
    from eo_dataset.demo.scaled import check_world_folder, make_scaled_world

    check_world_folder(args.world, args.cells, args.seed)  # refuse another world before drawing a bar
    bar = Progress(TextColumn(f"generating the demo world in {args.world}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("cells"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   console=console, transient=False)
    task = bar.add_task("world", total=args.cells)
    with bar:
        return make_scaled_world(args.world, args.cells, args.seed, workers=args.workers,
                                 progress=lambda done, total: bar.update(task, completed=done))


def cmd_demo(args: argparse.Namespace) -> int:
    from eo_dataset.demo.world import demo_sources, make_world

    if args.cells is None and args.seed is not None:
        raise GridError(f"--seed {args.seed} is given without --cells; the default demo world has no seed: add "
                        "--cells N for a scaled world")
    if args.cells is not None and args.cells < 1:
        raise GridError(f"--cells must be >= 1, got {args.cells}")
    scaled = args.cells is not None
    args.seed = args.seed or 0
    tag = f"-{args.cells}c-seed{args.seed}" if scaled else ""
    args.world = args.world or f"demo-world{tag}"
    args.out = args.out or f"demo{tag}.zarr"
    t0 = time.perf_counter()
    if scaled:
        catalog = _scaled_world(args)
    else:
        with console.status(f"generating the demo world in {args.world} (once; reused afterwards)"):
            catalog = make_world(args.world)
    console.print(f"demo world ready: {catalog} ({time.perf_counter() - t0:.1f} s)")
    recipe = load_recipe(catalogs_dir() / "demo.yaml").with_sources(demo_sources(catalog))
    args.samples, args.region, args.cells = str(Path(args.world) / "samples.csv"), None, None
    samples = samples_from_args(Grid(recipe.grid.spec()), args)
    report = _progress_build(recipe, samples, args.out, args)
    print_info(args.out)
    console.print(f"total {time.perf_counter() - t0:.1f} s. Open it with: python -c \"import xarray as xr; "
                  f"print(xr.open_zarr('{args.out}'))\"")
    return _empty_exit(report)


def _disk_usage(path: Path) -> tuple[int, int]:
    size = files = 0
    for root, _, names in os.walk(path):
        for n in names:
            size += os.path.getsize(os.path.join(root, n))
            files += 1
    return size, files


def print_info(path: str, at: str | None = None) -> None:
    """Print a cube's samples, modalities, availability, size, recipe and version (``at``: a version of a cube on
    object storage)."""
    where = locate(path, at)
    ds = open_cube(where)
    try:
        meta = CubeMeta.from_attrs(ds.attrs, path)
    except CubeError:
        raise CubeError(f"{path} is a Zarr store but not a cube built by eo-dataset (no 'recipe' in its "
                        "attributes)") from None
    if meta.store != "cube" or meta.recipe is None:
        _print_other_store(path, ds, meta)
        return
    n = ds.sizes["sample"]
    out = Console(width=max(Console().width, 100))
    over_http = is_url(path) and not is_object_url(path)  # https:// ...: read-only; a web server lists no folders
    if is_object_url(path):
        found = versions(path)
        shown = at or (found[0].snapshot_id if found else "none")
        stored = (f"version {shown} of {len(found)} (older ones: --at SNAPSHOT; see docs/building.md)" if found
                  else "a plain Zarr store on object storage (no versions)")
    elif over_http:
        stored = "read over HTTP (its size is not listed)"
    else:
        size, files = _disk_usage(Path(path)) if Path(path).exists() else (0, 0)
        stored = f"{size / 1e6:.1f} MB in {files} files"
    out.print(f"[bold]{path}[/]: {n} samples, recipe '{meta.recipe['name']}' ({meta.recipe_hash}), "
              f"built by eo-dataset {meta.version}; {stored}", highlight=False, soft_wrap=True)
    if is_object_url(path) and not at:
        for v in found[:5]:
            out.print(f"  {v.snapshot_id}  {v.written_at}  {v.message.removeprefix(FINISHED).strip()}",
                      highlight=False)
    if over_http:  # the block reports fetched by name
        from eo_dataset.view.quality import block_entries

        entries = block_entries(path)[1]
    else:
        entries = block_reports(where)
    reasons: dict[str, Counter] = {}
    for entry in entries.values():
        for per_mod in entry["missing"].values():
            for m, why in per_mod.items():
                reasons.setdefault(m, Counter())[why] += 1
    table = Table("modality", "collection", "bands", "grid", "dtype", "available")
    for m, mm in meta.modalities.items():
        avail = int(ds[f"{m}_available"].sum())
        var = ds[m]
        table.add_row(m, mm.collection, str(len(mm.bands)), f"{var.shape[-1]} px @ {mm.resolution_m:g} m",
                      str(var.dtype), f"{avail}/{n}")
    out.print(table)
    for m, counts in reasons.items():
        for why, k in counts.most_common(3):
            out.print(f"  {m}: {k} x {why}")
    done = len(entries)
    blocks = -(-n // ds[next(iter(meta.modalities))].encoding.get("shards", (n,))[0])
    if done < blocks and (entries or not is_object_url(path)):  # a plain Zarr copy on object storage: no entries
        out.print(f"[yellow]incomplete build: {done} of {blocks} blocks done; rerun the same build command to "
                  "resume[/]")


def _print_other_store(path: str, ds: Any, meta: CubeMeta) -> None:
    """``info`` on a store derived from a cube (eo-models' tokens, generated modalities, embeddings): say what it is."""
    if meta.store in ("generated", "embeddings"):
        _print_aligned_store(path, ds, meta)
        return
    if meta.store != "tokens":
        raise CubeError(f"{path} is an eo-dataset {meta.store} store; 'info' describes cubes and the stores eo-models "
                        "derives from them (tokens, generated, embeddings)")
    out = Console(width=max(Console().width, 100))
    attrs = meta.extra
    state = "complete" if attrs.get("complete") else "incomplete (rerun the same 'eo-models tokenize' to finish)"
    out.print(f"[bold]{path}[/]: a token store of eo-models, {ds.sizes['sample']} samples of cube "
              f"{attrs.get('cube')} (recipe {meta.recipe_hash}); {state}")
    table = Table("modality", "tokenizer", "vocabulary", "tokens", "available")
    for m, t in (attrs.get("tokenizers") or {}).items():
        avail = int(ds[f"{m}_available"].sum()) if f"{m}_available" in ds else 0
        vocab = t.get("codebook_size") or t.get("vocab_size")  # image codes, or a caption tokenizer's vocabulary
        shape = " x ".join(map(str, t.get("token_grid", []))) or (f"up to {t['max_length']}" if t.get("max_length")
                                                                   else "")
        table.add_row(m, str(t.get("source")), str(vocab), shape, f"{avail}/{ds.sizes['sample']}")
    out.print(table)


def _print_aligned_store(path: str, ds: Any, meta: CubeMeta) -> None:
    """``info`` on a store of generated modalities or embeddings (eo_models.fusion.aligned): its variables, how many
    samples have each, and where generated data came from."""
    out = Console(width=max(Console().width, 100))
    attrs, n = meta.extra, ds.sizes["sample"]
    blocks = -(-n // int(attrs.get("block_samples") or max(n, 1)))
    done = len(block_reports(path, sub=meta.store)) if "://" not in path else blocks
    state = "complete" if attrs.get("complete") else (f"incomplete: {done} of {blocks} blocks written; rerun the "
                                                      "command that wrote it to finish")
    out.print(f"[bold]{path}[/]: {meta.title or meta.store} of eo-models, {n} samples of cube {attrs.get('cube')} "
              f"(recipe {meta.recipe_hash}); {state}", highlight=False, soft_wrap=True)
    table = Table("variable", "per sample", "dtype", "available", "provenance")
    for name, var in ds.data_vars.items():
        if name.endswith(("_available", "_valid", "_time", "_item")):
            continue  # a variable's companions, as in a cube
        m = next((m for m in meta.modalities if name == m or name.startswith(f"{m}_")), None)
        avail = f"{int(ds[f'{m}_available'].sum())}/{n}" if m and f"{m}_available" in ds else "-"
        shape = " x ".join(str(s) for s in var.shape[1:]) or "1"
        src = var.attrs.get("generated_from") or {}
        notes = f"{src.get('model')} from {', '.join(src.get('conditioning', []))}" if src else ""
        if var.attrs.get("crop_px") not in (None, meta.patch_px if meta.grid else None):
            notes += f"; crop {var.attrs['crop_px']} px at {tuple(var.attrs.get('crop_offset_px', ()))}"
        table.add_row(name, shape, "str" if var.dtype.kind in "OTU" else str(var.dtype), avail, notes)
    out.print(table)
    if attrs.get("identity"):
        out.print(f"identity: {json.dumps(attrs['identity'])}", highlight=False, soft_wrap=True)


def cmd_info(args: argparse.Namespace) -> int:
    print_info(args.cube, args.at)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Per sample and modality: why data is missing; per block: where and how long it ran."""
    if args.csv:  # before any work: a file that is not one of these reports is never overwritten
        check_output_file(args.csv, what="missing-data CSV written by eo-dataset report", is_ours=_is_report_csv,
                          option="--csv")
    from eo_dataset.view.quality import block_entries
    from eo_dataset.view.report import check_report_output, write_report

    if args.html:  # the same for the HTML report (ours carry a generator mark); and matplotlib must be there
        check_report_output(args.html)
    where = locate(args.cube, args.at)
    ds = open_cube(where)
    if is_object_url(args.cube):  # a version of a cube on object storage: its manifest is in the store
        manifest, reports = read_manifest(where), block_reports(where)
    else:
        manifest, reports = block_entries(args.cube)  # a local cube or a URL
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
            w.writerow(REPORT_CSV_HEADER)
            w.writerows(sorted(rows))
        out.print(f"every sample/modality without data: {args.csv}")
    if args.html:
        t0 = time.perf_counter()
        write_report(args.cube, args.html, ds=ds, entries=reports, manifest=manifest)
        out.print(f"data-quality report: {args.html} ({time.perf_counter() - t0:.1f} s)", highlight=False)
    return 0


REPORT_CSV_HEADER = ["sample_id", "modality", "reason"]


def _is_report_csv(path: Path) -> bool:
    """A CSV this command wrote: its first line is exactly the report's header."""
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), None) == REPORT_CSV_HEADER
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def cmd_plan(args: argparse.Namespace) -> int:
    """Sample, shard and object counts, bytes per modality and projected CPU time and cost of a build."""
    from eo_dataset.pipeline.plan import human_bytes, measure, plan, stored_total, world_sample_count

    recipe = load_recipe(args.recipe)
    if args.shard_samples:
        build_spec = recipe.build.model_copy(update={"shard_samples": args.shard_samples})
        recipe = recipe.model_copy(update={"build": build_spec})
    grid = Grid(recipe.grid.spec())
    if args.region == "world":
        n = world_sample_count(grid)
        where = "the whole grid"
    else:
        args.cells = None
        index = samples_from_args(grid, args)  # a region's index arrays, or a sample list read lazily
        n = len(index)
        where = f"region {args.region}" if args.region else f"sample list {args.samples}"
    if args.limit:
        n, where = min(n, args.limit), f"{where}, limited to {args.limit:,} samples"
    if not n:
        raise GridError(f"no samples in {where}; a region is WEST,SOUTH,EAST,NORTH in degrees")
    expected: dict[str, float] = {}
    if args.region != "world":  # a region outside every local source is an error; a modality without data, a warning
        for w in check_region(recipe, region_bbox(index[:: max(1, len(index) // 10_000)]), local_only=True):
            console.print(f"[bold yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        expected = expected_availability(recipe, index)
    if args.at and not args.from_cube:
        raise CubeError("--at picks the version of the --from-cube cube on object storage; pass --from-cube URL too")
    measured = measure(args.from_cube, args.at) if args.from_cube else None
    pairs = None
    if measured and expected:  # found by searching the region; the other modalities as in the measured cube
        rest = [m for m in recipe.modalities if m not in expected]
        pairs = sum(expected.values()) + len(rest) * measured.pairs_per_sample / max(measured.n_modalities, 1)
    p = plan(recipe, n, measured, workers=args.workers, pairs_per_sample=pairs)
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
        table.add_row(m, "?" if b["raw_bytes"] is None else human_bytes(b["raw_bytes"]),
                      human_bytes(b["stored_bytes"]) if "stored_bytes" in b else "?")
    total, raw = stored_total(p), [b["raw_bytes"] for b in p.modalities.values()]
    table.add_row("[bold]total", human_bytes(sum(r for r in raw if r is not None)) + (" + ?" if None in raw else ""),
                  human_bytes(total) if total is not None else "?")
    out.print(table)
    if measured:
        hours, wall, price = p.cpu_hours or 0.0, p.wall_hours or 0.0, args.cpu_hour_usd
        m = measured
        out.print(f"CPU measured on {m.cube} ({m.n_samples} samples, {m.n_blocks} blocks on {m.workers} worker "
                  f"process(es), {m.cpu_s_total:.1f} CPU-s in all):")
        out.print(f"  fixed: {m.cpu_s_fixed:.2f} CPU-s per worker process (start-up: imports, catalogs, extracts; "
                  "paid by the first block a process runs)")
        out.print(f"  per sample: {m.cpu_s_per_sample:.3f} CPU-s ({m.cpu_s_per_pair:.4f} per sample/modality pair "
                  f"with data; {m.pairs_per_sample:.1f} of {m.n_modalities} pairs per sample had data there)")
        out.print(f"  [dim]fixed and per-sample told apart by: {m.cpu_method}[/]")
        per_sample = m.cpu_s_per_sample
        if pairs is not None:
            per_sample = m.cpu_s_per_pair * pairs
            found = ", ".join(f"{k} {v:.0%}" for k, v in expected.items())
            out.print(f"  in {where}: {pairs:.1f} pairs per sample expected with data (the recipe's local sources "
                      f"hold items over: {found}) -> {per_sample:.3f} CPU-s per sample")
        out.print(f"projection: {p.workers:,} worker(s) x {m.cpu_s_fixed:.2f} + {n:,} samples x "
                  f"{per_sample:.3f} CPU-s -> {hours:,.{0 if hours >= 100 else 2}f} CPU-hours; on "
                  f"{p.workers:,} worker(s) ~{wall:,.{1 if wall >= 1 else 3}f} h wall; at ${price}/CPU-hour "
                  f"~${hours * price:,.{0 if hours * price >= 100 else 2}f}")
        out.print(f"[dim]{m.read_note()}[/]")
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


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog="eo-dataset", description="Build and inspect aligned multi-modal EO cubes.")
    p.add_argument("--version", action="version", version=f"eo-dataset {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="also show log records (Dask, GDAL, every "
                   "sample/modality that fails) on stderr; they always go to the log file (see docs/index.md)")
    sub = p.add_subparsers(dest="command", required=True)

    def build_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786), or 'sync' to run in this "
                       "process; default: a LocalCluster on this machine (or $DASK_SCHEDULER_ADDRESS)")
        q.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
        q.add_argument("--overwrite", action="store_true", help="replace a cube that eo-dataset built from another "
                       "recipe or sample list (never a folder holding anything else)")

    d = command(sub, "demo", "generate the offline demo world and build a cube from catalogs/demo.yaml",
                "eo-dataset demo --out demo.zarr --workers 2")
    d.add_argument("--out", help="cube path (default: demo.zarr; with --cells: demo-<N>c-seed<S>.zarr)")
    d.add_argument("--world", help="where the demo world goes (default: demo-world; with --cells: "
                   "demo-world-<N>c-seed<S>)")
    d.add_argument("--cells", type=int, help="a scaled world of N Major TOM cells (16 samples each) over several "
                   "UTM zones and latitudes, generated in parallel (--workers); default: the 2-cell demo world")
    d.add_argument("--seed", type=int, help="the scaled world's random seed (default 0; with --cells)")
    build_opts(d)
    d.set_defaults(func=cmd_demo)

    b = command(sub, "build", "build (or resume) a cube from a recipe",
                "eo-dataset build demo --region 11.90,47.80,12.00,47.85 --out small.zarr")
    b.add_argument("recipe", help="recipe YAML (or a bundled recipe name, e.g. demo)")
    b.add_argument("--out", required=True, help="cube path (.zarr): new, an empty folder, or a cube to resume; or "
                   "s3://, gs://, az:// (a versioned cube on object storage; credentials from the environment)")
    add_sample_options(b)
    change = b.add_mutually_exclusive_group()
    change.add_argument("--append", action="store_true", help="add the samples not yet in the cube (same recipe)")
    change.add_argument("--update", metavar="MODALITIES", help="rebuild only these modalities (comma-separated) "
                        "for every sample; the recipe may differ from the cube's only in them")
    build_opts(b)
    b.set_defaults(func=cmd_build)

    i = command(sub, "info", "summarise a cube (or a store eo-models derived from one: tokens, generated, embeddings)",
                "eo-dataset info demo.zarr")
    i.add_argument("cube", help="cube path or URL")
    i.add_argument("--at", metavar="VERSION", help="a cube on object storage: read this version (a snapshot id "
                   "listed by info, a tag or a branch) instead of the latest")
    i.set_defaults(func=cmd_info)

    r = command(sub, "report", "why data is missing, per sample and modality; where blocks ran",
                "eo-dataset report demo.zarr --csv missing.csv")
    r.add_argument("cube", help="cube path or URL")
    r.add_argument("--at", metavar="VERSION", help="a cube on object storage: report on this version (snapshot id, "
                   "tag or branch) instead of the latest")
    r.add_argument("--csv", help="write every sample/modality without data to this CSV")
    r.add_argument("--html", help="write a data-quality report to this .html file (one self-contained page: "
                   "availability, valid pixels, clouds, time gaps, missing reasons, band statistics, build timings; "
                   "needs matplotlib)")
    r.set_defaults(func=cmd_report)

    pl = command(sub, "plan", "samples, shards, objects, bytes and CPU time of a build, before running it",
                 "eo-dataset plan 4m4eo --region world --limit 9000000 --from-cube demo.zarr")
    pl.add_argument("recipe", help="recipe YAML (or a bundled recipe name, e.g. 4m4eo)")
    where = pl.add_mutually_exclusive_group(required=True)
    where.add_argument("--region", help="'world', WEST,SOUTH,EAST,NORTH or a GeoJSON file")
    where.add_argument("--samples", help="a sample list: Parquet (eo-dataset sample, read lazily) or CSV")
    pl.add_argument("--limit", type=int, help="plan for at most this many samples (e.g. 9000000)")
    pl.add_argument("--from-cube", help="a built cube to measure bytes and CPU seconds per sample from")
    pl.add_argument("--at", metavar="VERSION", help="a --from-cube cube on object storage: measure this version "
                    "(snapshot id, tag or branch) instead of the latest")
    pl.add_argument("--shard-samples", type=int, help="what if build.shard_samples were this")
    pl.add_argument("--workers", type=int, default=100, help="workers for the wall-time estimate (default 100)")
    pl.add_argument("--cpu-hour-usd", type=float, default=0.04, help="price of a CPU-hour (default 0.04)")
    pl.set_defaults(func=cmd_plan)

    c = command(sub, "cell", "the sample at a point: id, EPSG, origin, footprint (use -- before negative numbers)",
                "eo-dataset cell -- -48.11 -25.32")
    c.add_argument("lon", type=float, help="longitude in degrees")
    c.add_argument("lat", type=float, help="latitude in degrees")
    c.add_argument("--recipe", help="use this recipe's grid settings")
    c.set_defaults(func=cmd_cell)
    add_snapshot_parser(sub)
    add_sample_parser(sub)

    sh = command(sub, "show", "every modality of one sample in one figure (a PNG)",
                 "eo-dataset show demo.zarr 532U_89R_1_2 --out sample.png")
    sh.add_argument("cube", help="the cube")
    sh.add_argument("sample_id", help="a sample id of the cube (see 'eo-dataset info' or the cube's sample_id)")
    sh.add_argument("--out", required=True, help="the .png to write (new, or a figure of this command to replace)")
    sh.add_argument("--modalities", help="comma-separated modality names (default: all)")
    sh.set_defaults(func=cmd_show)

    br = command(sub, "browse", "a local web page over a cube: map, availability, filters, every sample's "
                 "modalities (or the same pages as a static site)", "eo-dataset browse demo.zarr")
    br.add_argument("cube", help="the cube (a path or a URL; read-only)")
    br.add_argument("--host", help="listen on this address instead of 127.0.0.1 (then anyone who can reach it sees "
                    "the cube: no password)")
    br.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    br.add_argument("--export", metavar="DIR", help="write the pages as a static site to DIR (new, empty, or an "
                    "export of this command) instead of serving")
    br.add_argument("--tokens", help="a token store of 'eo-models tokenize' over this cube: show token maps")
    br.add_argument("--generated", metavar="STORE", help="a store of 'eo-models generate' over this cube: show each "
                    "generated modality beside the truth, and generated captions")
    br.add_argument("--embeddings", help="a Zarr store with 'embedding (sample, dim)' and sample_id: show nearest "
                    "neighbours")
    br.add_argument("--max-points", type=int, default=5000, help="above this many matched samples the map shows "
                    "Major TOM cells (or lon/lat bins), not footprints (default 5000)")
    br.set_defaults(func=cmd_browse)
    return p


def cmd_browse(args: argparse.Namespace) -> int:
    """``eo-dataset browse``: serve the browser (or write it with ``--export``)."""
    from eo_dataset.view.browse.command import browse

    return browse(args.cube, host=args.host, port=args.port, export=args.export, tokens=args.tokens,
                  generated=args.generated, embeddings=args.embeddings, max_points=args.max_points,
                  verbose=args.verbose,
                  say=lambda text: console.print(text, highlight=False, soft_wrap=True, markup=False),
                  warn=lambda text: console.print(f"[bold red]warning:[/] {text}", highlight=False, soft_wrap=True))


def cmd_show(args: argparse.Namespace) -> int:
    """``eo-dataset show``: one sample, every modality, one PNG."""
    try:
        from eo_dataset.view.sample import show
    except ImportError as exc:  # matplotlib is the docs extra
        raise CubeError(f"'eo-dataset show' draws with matplotlib, which is not installed ({exc}); install it with "
                        "pip install 'eo-dataset[docs]'") from None
    mods = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
    out = show(args.cube, args.sample_id, args.out, modalities=mods)
    console.print(f"wrote {out}", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``eo-dataset``."""
    args = parser().parse_args(argv)
    setup_logging("eo-dataset", args.verbose)
    try:
        return args.func(args)
    except EODatasetError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
