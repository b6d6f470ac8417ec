"""The fusion commands of ``eo-models``: ``train-fusion``, ``generate``, ``embed``.

    eo-models train-fusion --tokens tokens.zarr --config tiny --out eo-fusion/tiny
    eo-models generate --fusion eo-fusion/tiny --cube demo.zarr --from s2l2a,s1rtc --to lulc,caption --out gen.zarr
    eo-models embed --fusion eo-fusion/tiny --cube demo.zarr --modalities s2l2a,s1rtc --out emb.zarr
    eo-models embed --backbone tm-tiny --cube demo.zarr --modalities s2l2a,s1rtc --out emb.zarr
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

#: Where train-fusion writes by default (a name no Python module can have).
DEFAULT_ROOT = Path("eo-fusion")


def _train(args: argparse.Namespace) -> None:
    from eo_models.fusion.train import train_fusion

    out = args.out or DEFAULT_ROOT / Path(args.config).stem.removeprefix("fusion-")
    overrides = {k: v for k, v in (("batch_size", args.batch_size),) if v is not None}
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    r = train_fusion(out, tokens=args.tokens, cube=args.cube, tokenizers=args.tokenizers or (),
                     modalities=modalities, config=args.config, steps=args.steps, device=args.device,
                     devices=args.devices, num_nodes=args.num_nodes, precision=args.precision,
                     accumulate=args.accumulate, resume=not args.restart, progress=not args.quiet,
                     workers=args.workers, verbose=args.verbose, **overrides)
    if r.global_rank:
        return
    losses = ", ".join(f"{k} {v:.4f}" for k, v in r.last.items() if k.startswith("loss"))
    print(f"{r.out}: {r.parameters / 1e6:.2f} M parameters, {r.steps} steps, {r.samples_per_s:.1f} training "
          f"samples/s; last {losses or 'losses: none logged'}")
    print(f"metrics: {r.out / 'train' / 'fusion-metrics.csv'}; load with FusionModel.from_pretrained({str(r.out)!r})")


def _generate(args: argparse.Namespace) -> None:
    from eo_models.fusion.apply import generate_cube
    from eo_models.fusion.generation import Schedule

    schedule = Schedule(steps=args.steps, order=args.order, tokens=args.schedule, temperature=args.temperature,
                        temperature_schedule=args.temperature_schedule, top_k=args.top_k, top_p=args.top_p)
    out = generate_cube(args.fusion, args.cube, args.out, source=args.source, target=args.target,
                        tokenizers=args.tokenizers, schedule=schedule, batch_size=args.batch_size,
                        device=args.device, seed=args.seed, progress=not args.quiet)
    print(f"generated {args.target} from {args.source}: {out} (eo-dataset info {out})")


def _embed(args: argparse.Namespace) -> None:
    from eo_models.errors import ConfigError

    if (args.fusion is None) == (args.backbone is None):
        found = "neither was given" if args.fusion is None else "both were given"
        raise ConfigError(f"embed takes exactly one of --fusion (a fusion model) and --backbone (a backbone converted "
                          f"with eo-models convert terramind), {found}; pass one folder or Hub repo id")
    if args.backbone is not None:
        from eo_models.backbones.embed import embed_cube_with_backbone

        if args.tokenizers:
            raise ConfigError("--tokenizers is for --fusion; a backbone reads the cube's pixels (drop --tokenizers)")
        out = embed_cube_with_backbone(args.backbone, args.cube, args.out, modalities=args.modalities, crop=args.crop,
                                       batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    else:
        from eo_models.fusion.apply import embed_cube

        if args.crop is not None:
            raise ConfigError("--crop is for --backbone; a fusion model embeds its tokenizers' crops (drop --crop)")
        out = embed_cube(args.fusion, args.cube, args.out, modalities=args.modalities, tokenizers=args.tokenizers,
                         batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    if isinstance(out, str):  # an object-storage URL: its published version
        print(f"embeddings written to {out} (eo_dataset.cube.storage.open_cube_at({out!r}).embedding)")
    else:
        print(f"embeddings written to {out} (xr.open_zarr({str(out)!r}).embedding)")


def add_commands(command: Callable[[str, str, str], argparse.ArgumentParser],
                 workers: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Add the fusion commands (``command(name, help, example)`` makes a subparser)."""
    s = command("train-fusion", "train (or resume) a 4M-style fusion model on tokens of a cube",
                "eo-models train-fusion --tokens tokens.zarr --config tiny --steps 200 --out eo-fusion/tiny")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="a token store written by 'eo-models tokenize': a local folder or its "
                     "s3://, gs://, az:// URL (the fast path; default: none, give --tokens or --cube)")
    src.add_argument("--cube", help="a cube, tokenized on the fly by --tokenizers (no store; default: none, "
                     "give --tokens or --cube)")
    s.add_argument("--tokenizers", nargs="+", metavar="TOKENIZER", help="with --cube: one tokenizer per modality "
                   "(folders or Hub repo ids; default: none)")
    s.add_argument("--modalities", help="comma-separated modalities to train on (default: every one of the store or "
                   "the tokenizers)")
    s.add_argument("--config", default="tiny", help="a fusion config YAML, or a bundled one: tiny (CPU, minutes), "
                   "small or base (GPUs) (default: tiny)")
    s.add_argument("--steps", type=int, metavar="N", help="optimiser steps in all (default: the config's)")
    s.add_argument("--batch-size", type=int, metavar="N", help="samples per step and device (default: the config's)")
    s.add_argument("--out", help=f"output folder (default: {DEFAULT_ROOT}/<config>); an existing one must be empty or "
                   "a folder of train-fusion, which is resumed")
    s.add_argument("--restart", action="store_true", help="start over instead of resuming the run in --out")
    s.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps, auto (default: cpu)")
    s.add_argument("--devices", type=int, metavar="N", help="N devices of --device's kind with DDP (default: 1)")
    s.add_argument("--num-nodes", type=int, default=1, metavar="N", help="machines taking part (default: 1)")
    s.add_argument("--precision", choices=["32", "bf16", "16"], help="float32, bfloat16 mixed or float16 mixed "
                   "(default: the config's)")
    s.add_argument("--accumulate", type=int, metavar="N", help="micro-batches per optimiser step (default: the "
                   "config's)")
    s.add_argument("--verbose", action="store_true", help="also show Lightning's messages (always in "
                   "<out>/train/lightning.log)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    workers(s, "the config's")
    s.set_defaults(func=_train)

    def applied(s: argparse.ArgumentParser, fusion_required: bool = True) -> None:
        s.add_argument("--fusion", required=fusion_required, help="a fusion model folder (train-fusion) or a Hub "
                       "repo id" + ("" if fusion_required else " (default: none; give --fusion or --backbone)"))
        s.add_argument("--cube", required=True, help="the cube (local path or URL)")
        s.add_argument("--tokenizers", nargs="+", metavar="TOKENIZER", help="tokenizers to use instead of those the "
                       "model names (the same weights: the model refuses others; default: the ones the model names)")
        s.add_argument("--out", required=True, help="the Zarr store to write (new, empty, or the same run's: resumed): "
                       "a local folder, or an s3://, gs://, az:// URL (an icechunk repository, published when "
                       "complete; credentials from the AWS_*/GOOGLE_*/AZURE_* environment variables)")
        s.add_argument("--batch-size", type=int, default=8, metavar="N", help="samples per block (default: 8)")
        s.add_argument("--device", default="cpu", help="torch device (default: cpu)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")

    s = command("generate", "generate modalities of every sample from others (any-to-any), as a store aligned with "
                "the cube", "eo-models generate --fusion eo-fusion/tiny --cube demo.zarr --from s2l2a --to lulc "
                "--out gen.zarr")
    applied(s)
    s.add_argument("--from", dest="source", required=True, help="comma-separated conditioning modalities")
    s.add_argument("--to", dest="target", required=True, help="comma-separated modalities to generate, in order "
                   "(each joins the conditioning of the next)")
    s.add_argument("--steps", type=int, default=8, metavar="N", help="decoding steps per image modality (1: all "
                   "tokens at once; default: 8)")
    s.add_argument("--order", choices=["maskgit", "roar"], default="maskgit", help="which tokens are fixed at each "
                   "step: the most confident (maskgit) or random ones (roar) (default: maskgit)")
    s.add_argument("--schedule", choices=["cosine", "linear"], default="cosine", help="fraction of tokens still "
                   "masked after each step (default: cosine)")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, 0: the most likely token "
                   "(default: 1)")
    s.add_argument("--temperature-schedule", choices=["constant", "linear", "cosine"], default="constant",
                   help="decay of the temperature over the steps (default: constant)")
    s.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default: 0, all)")
    s.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass (default: 0, off)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    s.set_defaults(func=_generate)

    s = command("embed", "encoder embeddings of every sample (pooled and per patch) from a fusion model or a "
                "converted backbone, as a store aligned with the cube", "eo-models embed --fusion eo-fusion/tiny "
                "--cube demo.zarr --modalities s2l2a --out emb.zarr")
    applied(s, fusion_required=False)
    s.add_argument("--backbone", metavar="ID_OR_FOLDER", help="instead of --fusion: a converted TerraMind backbone "
                   "folder (eo-models convert terramind) or a Hub repo id; it reads the cube's pixels (default: "
                   "none; give --fusion or --backbone)")
    s.add_argument("--modalities", help="comma-separated modalities that enter the encoder (default: all of the "
                   "model's; a backbone's: its pixel inputs)")
    s.add_argument("--crop", type=int, metavar="PX", help="with --backbone: side of the centre crop in the cube's "
                   "base pixels (default: the backbone's grid times its patch, 224 for TerraMind)")
    s.set_defaults(func=_embed)
