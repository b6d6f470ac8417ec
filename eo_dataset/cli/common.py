"""What every ``eo-dataset`` command shares: the console, the sample options and how a subcommand is declared."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eo_dataset.errors import GridError, RecipeError
from eo_dataset.pipeline.sample_list import SampleList, is_parquet
from eo_dataset.spec.grid import Grid, Sample
from eo_dataset.spec.recipe import Recipe, load_recipe

console = Console(stderr=True)


def samples_from_args(grid: Grid, args: argparse.Namespace) -> list[Sample]:
    """The samples named by ``--samples``/``--region``/``--cells``. A region comes back as a
    :class:`~eo_dataset.spec.grid.SampleIndex` (a read-only sequence of samples: its length is free, Sample objects are
    made per block), with a progress bar on stderr when enumerating it takes more than a moment; a Parquet sample list
    (``eo-dataset sample``) as a :class:`~eo_dataset.pipeline.sample_list.SampleList`, read by row group."""
    if args.samples:
        path = Path(args.samples)
        if not path.is_file():
            raise GridError(f"sample list {args.samples!r} not found; expected a Parquet list (eo-dataset sample) or "
                            "a CSV with a 'sample_id' column")
        if is_parquet(path):  # read lazily, block by block: a 9M-sample list holds no Python object per sample
            return SampleList(path, grid)  # type: ignore[return-value]  # a Sequence[Sample]
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "sample_id" not in rows[0]:
            raise GridError(f"{args.samples}: expected a CSV with a header row and a 'sample_id' column")
        return [grid.sample(r["sample_id"].strip()) for r in rows]
    if args.region:
        region = args.region
        if Path(region).is_file():
            where = json.loads(Path(region).read_text())
        else:
            try:
                where = [float(v) for v in region.split(",")]
            except ValueError:
                where = []
            if len(where) != 4:
                raise GridError(f"--region {region!r}: expected WEST,SOUTH,EAST,NORTH in degrees or a GeoJSON file")
            w, s, e, n = where
            if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
                raise GridError(f"--region {region!r}: expected WEST,SOUTH,EAST,NORTH in degrees with longitudes in "
                                "-180..180 and latitudes in -90..90, SOUTH below NORTH (WEST > EAST crosses the "
                                "antimeridian)")
        t0, shown = time.perf_counter(), []

        def progress(done: int, total: int) -> None:  # a bar only once enumerating has taken more than a moment
            if not shown and done < total and time.perf_counter() - t0 > 0.5:
                bar = Progress(TextColumn("enumerating the samples of [bold]{task.description}"), BarColumn(),
                               MofNCompleteColumn(), TextColumn("cells"), TimeElapsedColumn(), console=console,
                               transient=True)
                shown.append((bar, bar.add_task(region, total=total)))
                bar.start()
            if shown:
                shown[0][0].update(shown[0][1], completed=done)

        try:
            index = grid.sample_index(where, progress=progress)
        finally:
            if shown:
                shown[0][0].stop()
        if shown:
            console.print(f"{len(index):,} samples in {region} ({time.perf_counter() - t0:.1f} s)", highlight=False)
        return index  # type: ignore[return-value]  # a Sequence[Sample]: all that build and plan need
    if args.cells:
        return [s for c in args.cells.split(",") for s in grid.samples_of_cell(c.strip())]
    raise GridError("say which samples to build: --samples LIST (.parquet or .csv), --region W,S,E,N | "
                    "FILE.geojson, or --cells IDS")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe named on the command line, with its ``--source NAME=HREF`` (``NAME.href_template=URL``) overrides
    applied."""
    recipe = load_recipe(args.recipe)
    overrides = dict(s.split("=", 1) for s in args.source or [] if "=" in s)
    if len(overrides) != len(args.source or []):
        raise RecipeError("--source expects NAME=PATH_OR_URL, e.g. --source demo=demo-world/catalog.json")
    return recipe.with_sources(overrides)


def add_sample_options(p: argparse.ArgumentParser) -> None:
    """Which samples (``--samples``/``--region``/``--cells``, read by :func:`_samples`) and ``--source``."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--samples", help="sample list: Parquet (eo-dataset sample) or CSV, with a sample_id column")
    which.add_argument("--region", help="WEST,SOUTH,EAST,NORTH in degrees, or a GeoJSON file")
    which.add_argument("--cells", help="comma-separated Major TOM cell ids (all their sub-cells)")
    p.add_argument("--source", action="append", metavar="NAME=HREF", help="override a recipe source's href; "
                   "NAME.href_template=URL overrides a tile index's tile URLs (e.g. a mirror)")


def command(sub: Any, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with an example."""
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
