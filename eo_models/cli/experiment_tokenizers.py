"""``eo-models experiment tokenizers``: the stage-1 comparison over seeds and modalities, with non-learned references
(:mod:`eo_models.experiments.tokenizers`).

    eo-models experiment tokenizers --cube world.zarr --seeds 3 --out experiments/tokenizers
"""

from __future__ import annotations

import argparse
import shlex
import sys

EXAMPLE = ("eo-models experiment tokenizers --cube world.zarr --seeds 3 --modalities s2l2a s1rtc dem lulc "
           "--steps 60 --out experiments/tokenizers")


def _tokenizers(args: argparse.Namespace) -> None:
    from eo_models.experiments.tokenizers import run_tokenizers_experiment

    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("crop", args.crop)) if v is not None}
    command = "eo-models " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    r = run_tokenizers_experiment(args.cube, args.out, seeds=args.seeds, modalities=args.modalities,
                                  config=args.config, steps=args.steps, device=args.device, progress=not args.quiet,
                                  limit=args.limit, workers=args.workers, command=command, **overrides)
    print(r.table_path.read_text())
    print(f"{args.out}: results.md, results.json, {', '.join(p.name for p in r.figures)}")


def add_tokenizers(sub: argparse._SubParsersAction, raw: type[argparse.HelpFormatter]) -> None:
    """``experiment tokenizers``."""
    help = ("VQ/FSQ x GAN/diffusion tokenizers over seeds and modalities, beside block-average + bicubic and "
            "JPEG 2000 at the same bits per sample")
    s = sub.add_parser("tokenizers", help=help, description=help[0].upper() + help[1:] + ".", formatter_class=raw,
                       epilog=f"example:\n  {EXAMPLE}")
    s.add_argument("--cube", required=True, help="an eo-dataset cube: a local path or a URL")
    s.add_argument("--seeds", type=int, default=3, metavar="N", help="training seeds 0..N-1 of every variant "
                   "(default: 3)")
    s.add_argument("--modalities", nargs="+", metavar="M", help="the cube's modalities to run (default: every image "
                   "modality of the cube: continuous, categorical and multilabel ones)")
    s.add_argument("--config", default="tiny", help="a tokenizer config YAML, or a bundled one: tiny or base; every "
                   "variant uses it (default: tiny)")
    s.add_argument("--steps", type=int, metavar="N", help="optimiser steps per variant (default: the config's)")
    s.add_argument("--batch-size", type=int, metavar="N", help="samples per training step (default: the config's)")
    s.add_argument("--crop", type=int, metavar="PX", help="side of the crops in base pixels, for training and "
                   "evaluation (default: the config's)")
    s.add_argument("--limit", type=int, metavar="N", help="evaluate at most N samples per modality (default: every "
                   "sample that has it)")
    s.add_argument("--device", default="cpu", help="torch device: cpu, cuda, mps ... (default: cpu)")
    s.add_argument("--workers", type=int, metavar="N", help="data loader worker processes (default: the config's "
                   "train.num_workers, else one per CPU core)")
    s.add_argument("--out", required=True, help="output folder: <modality>/seed-<s>/, results.json, results.md, "
                   "<modality>.png; an existing one must be empty or this experiment's (finished seeds are reused)")
    s.add_argument("--quiet", action="store_true", help="no progress bars (default: shown)")
    s.set_defaults(func=_tokenizers)
