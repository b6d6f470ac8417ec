"""``eo-dataset sample``: draw the corpus's sample list (Major TOM samples over land, stratified) into Parquet."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from eo_dataset.cli.common import command, console
from eo_dataset.cube.store import open_cube
from eo_dataset.errors import GridError
from eo_dataset.outputs import check_output_file
from eo_dataset.pipeline.sample_list import is_parquet, list_metadata, write_sample_list
from eo_dataset.pipeline.sampling import draw_samples
from eo_dataset.spec.grid import GridSpec
from eo_dataset.spec.recipe import load_recipe


def _region(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise GridError(f"--region {text!r}: expected WEST,SOUTH,EAST,NORTH in degrees, e.g. 5,44,15,50") from None
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
        raise GridError(f"--region {text!r}: expected longitudes in -180..180, latitudes in -90..90 and SOUTH below "
                        "NORTH (WEST > EAST crosses the antimeridian)")
    return (w, s, e, n)


def _excluded(cube: str | None) -> list[str]:
    if cube is None:
        return []
    return [str(i) for i in open_cube(cube)["sample_id"].values]


def _is_list(path: Any) -> bool:
    return is_parquet(path) and list_metadata(path) is not None


def cmd_sample(args: argparse.Namespace) -> int:
    """``eo-dataset sample``: draw, then write the list."""
    if (args.n is None) == (args.per_stratum is None):
        raise GridError("give --n N (samples in all) or --per-stratum N (samples per stratum), e.g. --n 9000000")
    for value, flag in ((args.n, "--n"), (args.per_stratum, "--per-stratum")):
        if value is not None and value <= 0:
            raise GridError(f"{flag} {value}: expected a positive number of samples, e.g. {flag} 9000000")
    out = check_output_file(args.out, what="sample list of eo-dataset sample", is_ours=_is_list)
    if not str(out).lower().endswith(".parquet"):
        raise GridError(f"--out {args.out!r}: expected a .parquet file name")
    spec = load_recipe(args.recipe).grid.spec() if args.recipe else GridSpec()
    region = _region(args.region)
    exclude = _excluded(args.exclude)
    t0 = time.perf_counter()
    bar = Progress(TextColumn("finding land samples"), BarColumn(), TextColumn("{task.completed}/{task.total} rows"),
                   TimeElapsedColumn(), console=console, transient=True)
    task = bar.add_task("rows", total=None)
    with bar:
        drawn = draw_samples(args.n, args.seed, spec=spec, region=region, per_stratum=args.per_stratum,
                             exclude=exclude, progress=lambda d, t: bar.update(task, completed=d, total=t))
    write_sample_list(drawn, out, region=list(region) if region else None, per_stratum=args.per_stratum,
                      excluded_cube=args.exclude, excluded=len(exclude))
    counts = {k: v for k, v in drawn.counts().items() if v}
    console.print(f"wrote {out}: {len(drawn):,} samples over land (seed {args.seed}) in "
                  f"{time.perf_counter() - t0:.1f} s; per stratum: "
                  + ", ".join(f"{k} {v:,}" for k, v in counts.items()), highlight=False, soft_wrap=True)
    return 0


def add_sample_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sample`` command to the CLI's subparsers."""
    s = command(subparsers, "sample", "draw the corpus's sample ids over land, stratified by latitude band and "
                "coast/inland, into a Parquet list for build and plan",
                "eo-dataset sample --n 9000000 --seed 0 --out corpus.parquet")
    s.add_argument("--n", type=int, help="samples in all, split over the strata in proportion to their land")
    s.add_argument("--per-stratum", type=int, help="instead of --n: this many samples from every stratum")
    s.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0): same seed, same ids")
    s.add_argument("--out", required=True, help="the .parquet file to write (new, or a list of this command)")
    s.add_argument("--region", help="only samples whose centre is in WEST,SOUTH,EAST,NORTH (degrees)")
    s.add_argument("--exclude", metavar="CUBE", help="never draw the samples already in this cube")
    s.add_argument("--recipe", help="use this recipe's grid settings (default: TerraMesh's 264 px sub-cells)")
    s.set_defaults(func=cmd_sample)
    return s
