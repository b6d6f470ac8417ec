"""``eo-dataset snapshot``: search as a build would, write the items as stac-geoparquet."""

from __future__ import annotations

import argparse
from typing import Any

from eo_dataset.cli.common import add_sample_options, command, console, recipe_from_args, samples_from_args
from eo_dataset.errors import SourceError
from eo_dataset.pipeline.snapshot import snapshot
from eo_dataset.sources import SOURCES, is_snapshot
from eo_dataset.spec.grid import Grid


def cmd_snapshot(args: argparse.Namespace) -> int:
    """``eo-dataset snapshot``: search as a build would, write the items as stac-geoparquet."""
    recipe = recipe_from_args(args)
    if not str(args.out).lower().endswith((".parquet", ".geoparquet")):
        raise SourceError(f"--out {args.out!r}: expected a .parquet file name (builds recognise snapshots by it)")
    samples = samples_from_args(Grid(recipe.grid.spec()), args)
    mods = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
    with console.status("searching") as status:
        report = snapshot(recipe, samples, args.out, modalities=mods,
                          progress=lambda d, t: status.update(f"searching: {d}/{t} searches"))
    per = ", ".join(f"{c}: {n}" for c, n in report.per_collection.items())
    console.print(f"wrote {report.path}: {report.n_items} items ({per}) from {report.n_searches} searches over "
                  f"{len(samples)} samples in {report.seconds:.1f} s")
    for where, why in report.failed.items():
        console.print(f"[yellow]search failed[/] ({where}): {why}")
    names = [n for n, s in recipe.sources.items() if SOURCES[s.type].reads_snapshots and not is_snapshot(s)]
    hint = " ".join(f"--source {n}={report.path}" for n in names)
    console.print(f"build from it with: eo-dataset build {args.recipe} {hint} --out CUBE.zarr "
                  "(same --samples/--region/--cells)")
    return 1 if report.failed else 0


def add_snapshot_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``snapshot`` command to the CLI's subparsers."""
    s = command(subparsers, "snapshot", "freeze a recipe's item searches into a stac-geoparquet file",
                "eo-dataset snapshot 4m4eo --region 11.9,47.8,12.0,47.9 --out items.parquet")
    s.add_argument("recipe", help="recipe YAML (or a bundled recipe name, e.g. 4m4eo)")
    s.add_argument("--out", required=True, help="the .parquet file to write (new, or a snapshot to replace)")

    add_sample_options(s)
    s.add_argument("--modalities", help="comma-separated modality names (default: all)")
    s.set_defaults(func=cmd_snapshot)
    return s
