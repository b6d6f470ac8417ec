"""The ``experiment`` command of ``eo-models``: one subcommand per comparison the seed promises.

    eo-models experiment fusion-vs-late --cube world.zarr --config tiny --seeds 3 --out docs/experiments/fusion

Each subcommand is added by its own ``add_<name>`` function below (``add_commands`` calls them), so another
comparison is one more function and one more line in ``add_commands``.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable

EXAMPLE = "eo-models experiment fusion-vs-late --cube world.zarr --config tiny --seeds 3 --out experiments/fusion"


def _fusion_vs_late(args: argparse.Namespace) -> None:
    from eo_models.experiments.fusion_vs_late import run_fusion_vs_late

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    parts = ["eo-models", "experiment", "fusion-vs-late", "--cube", str(args.cube), "--config", str(args.config),
             "--seeds", str(args.seeds), *(["--split-unit", args.split_unit] if args.split_unit else []),
             "--out", str(args.out)]
    command = " ".join(shlex.quote(p) for p in parts)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    r = run_fusion_vs_late(args.cube, args.out, config=args.config, seeds=args.seeds, split_unit=args.split_unit,
                           command=command, progress=not args.quiet, say=say)
    best = r["scores"]
    line = ", ".join(f"{m} {best[m]['all']['miou']['mean']:.3f}" for m in best if "all" in best[m]
                     and best[m]["all"]["miou"]["mean"] == best[m]["all"]["miou"]["mean"])
    print(f"test mIoU (all modalities): {line}; chance {r['chance']['miou']:.3f}")
    print(f"{args.out}: results.md, results.json, robustness.png ({r['timings_s']['total_s']:.0f} s)")


def add_fusion_vs_late(sub: argparse._SubParsersAction, raw: type[argparse.HelpFormatter]) -> None:
    """``experiment fusion-vs-late``."""
    help = "the fusion model vs MLP late fusion, unimodal models, a U-Net and a pixel probe, on tasks from the cube"
    s = sub.add_parser("fusion-vs-late", help=help, description=help[0].upper() + help[1:] + ".",
                       formatter_class=raw, epilog=f"example:\n  {EXAMPLE}")
    s.add_argument("--cube", required=True, help="an eo-dataset cube with the label modalities of the config's tasks "
                   "(land cover, canopy height)")
    s.add_argument("--config", default="tiny", help="an experiment config YAML, or a bundled one: tiny (CPU) "
                   "(default: tiny)")
    s.add_argument("--seeds", type=int, default=3, metavar="N", help="training seeds 0..N-1; the split is the same "
                   "for all (default: 3)")
    s.add_argument("--split-unit", choices=["cell", "quadrant"], help="keep whole Major TOM cells, or 2 x 2 "
                   "sub-cell quadrants (cubes of fewer than 3 cells), in one split (default: the config's, cell)")
    s.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's own choice)")
    s.add_argument("--out", required=True, help="output folder: runs/, results.json, results.md, robustness.png; an "
                   "existing one must be empty or this experiment's (finished runs are reused)")
    s.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    s.set_defaults(func=_fusion_vs_late)


def add_commands(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Add ``experiment`` and its subcommands (``command(name, help, example)`` makes a subparser)."""
    s = command("experiment", "run a comparison end to end: train what is missing, evaluate, write tables and "
                "figures", EXAMPLE)
    experiment_sub = s.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT",
                                      help="the comparison to run (default: none, name one)")
    add_fusion_vs_late(experiment_sub, argparse.RawDescriptionHelpFormatter)

    from eo_models.cli.experiment_tokenizers import add_tokenizers

    add_tokenizers(experiment_sub, argparse.RawDescriptionHelpFormatter)
