"""``eo-models``: train, evaluate, compare and apply tokenizers on eo-dataset cubes.

    eo-models train-tokenizer --cube demo.zarr --modality s2l2a --quantizer fsq --decoder gan --config tiny
    eo-models eval-tokenizer --cube demo.zarr --tokenizer eo-tokenizers/s2l2a-fsq-gan
    eo-models compare --cube demo.zarr --modality s2l2a --config tiny --out compare/
    eo-models tokenize --cube demo.zarr --tokenizers eo-tokenizers/s2l2a-fsq-gan --out tokens.zarr
    eo-models train-text-tokenizer --cube demo.zarr --out eo-tokenizers/caption
    eo-models train-fusion --tokens tokens.zarr --config tiny --out eo-fusion/tiny
    eo-models generate --fusion eo-fusion/tiny --cube demo.zarr --from s2l2a --to lulc --out gen.zarr
    eo-models embed --fusion eo-fusion/tiny --cube demo.zarr --out emb.zarr

Commands write only into a new or empty folder, or into their own output of an earlier run (which they resume or
replace file by file); they refuse any other existing path and leave it untouched. Default output folders
(``eo-tokenizers/...``) have names no Python module can have, so they never shadow a package (a ``tokenizers/``
folder in a project makes linters take the ``tokenizers`` library for the project's own code).

User errors are one line on stderr and exit status 2; ``--version`` prints the version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eo_models.errors import EOModelsError

#: Where train-tokenizer and train-text-tokenizer write by default (a name no Python module can have).
DEFAULT_ROOT = Path("eo-tokenizers")
#: Top-level modules of the ``models`` extra (and the ``torch`` extra it pulls in): missing, they mean the extra is
#: not installed.
EXTRA_MODULES = frozenset({
    "torch", "torchvision", "torchgeo", "zarrs", "fsspec", "aiohttp", "vector_quantize_pytorch", "diffusers",
    "torchmetrics", "tokenizers", "huggingface_hub", "safetensors", "einops", "matplotlib", "lightning", "torchdata",
    "onnx", "onnxruntime", "timm",
})
INSTALL = "pip install -e '.[models]' (in a checkout of 4M4EO) or pip install 'eo-dataset[models]'"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eo-dataset")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def default_out(config: str, modality: str, quantizer: str | None, decoder: str | None) -> Path:
    """``eo-tokenizers/<modality>-<quantizer>-<decoder>``, the types taken from the config when not given."""
    from eo_models.config import load_sections

    sections = load_sections(config, modality, quantizer=quantizer, decoder=decoder)
    q, d = sections["quantizer"].get("type", "fsq"), sections["decoder"].get("type", "gan")
    return DEFAULT_ROOT / f"{modality}-{q}-{d}"


def _train(args: argparse.Namespace) -> None:
    from eo_models.training.tokenizer import train_tokenizer

    out = args.out or default_out(args.config, args.modality, args.quantizer, args.decoder)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("crop", args.crop)) if v is not None}
    r = train_tokenizer(args.cube, args.modality, out, config=args.config, quantizer=args.quantizer,
                        decoder=args.decoder, steps=args.steps, device=args.device, devices=args.devices,
                        num_nodes=args.num_nodes, precision=args.precision, accumulate=args.accumulate,
                        resume=not args.restart, progress=not args.quiet, workers=args.workers,
                        verbose=args.verbose, **overrides)
    if r.global_rank:  # the other DDP processes print nothing
        return
    print(f"{r.out}: {r.steps} steps, {r.samples_per_s:.1f} training samples/s; last losses "
          + ", ".join(f"{k} {v:.4f}" for k, v in r.last.items()))
    print(f"metrics: {r.out / 'train' / 'metrics.csv'}; load with Tokenizer.from_pretrained({str(r.out)!r})")


def _card_folder(tokenizer: str, no_card: bool) -> Path | None:
    """The local tokenizer folder whose model card eval-tokenizer rewrites, or None; checked before evaluating."""
    import os

    from eo_dataset.errors import OutputError
    from eo_models.hub.resolve import local_or_hub
    from eo_models.tokenizers.tokenizer import is_model_card

    where = local_or_hub(tokenizer)
    if no_card or not isinstance(where, Path):
        return None
    card = where / "README.md"
    if card.is_file() and not is_model_card(card.read_text(errors="replace")):
        raise OutputError(f"{card} is not a model card written by eo-models; it is left untouched: pass --no-card to "
                          "evaluate without writing the metrics into the folder")
    if not os.access(where, os.W_OK):
        raise OutputError(f"cannot write the model card into {where} (not writable): pass --no-card to evaluate "
                          "without writing it")
    return where


def _eval(args: argparse.Namespace) -> None:
    from eo_models.cube import check_cube
    from eo_models.evaluation.evaluate import check_metrics_file, evaluate_tokenizer
    from eo_models.tokenizers.tokenizer import load_tokenizer, model_card

    check_cube(args.cube)
    out = check_metrics_file(args.out) if args.out else None
    folder = _card_folder(args.tokenizer, args.no_card)
    tok = load_tokenizer(folder or args.tokenizer)
    metrics = evaluate_tokenizer(tok, args.cube, batch_size=args.batch_size, device=args.device, limit=args.limit,
                                 workers=args.workers)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if out is not None:
        out.write_text(text + "\n")
    if folder is not None:  # the model card states the metrics, and on which cube
        card = model_card(tok.cfg, {"evaluated_on": str(args.cube), **metrics})
        (folder / "README.md").write_text(card)
    print(text)


def _compare(args: argparse.Namespace) -> None:
    from eo_models.evaluation.compare import compare_tokenizers

    result = compare_tokenizers(args.cube, args.modality, args.out, config=args.config, steps=args.steps,
                                device=args.device, progress=not args.quiet, workers=args.workers, seed=args.seed)
    print(result.table)
    print(f"\ntable: {result.table_path}\nfigure: {result.figure_path}")


def _tokenize(args: argparse.Namespace) -> None:
    from eo_models.tokens.dataset import token_specs
    from eo_models.tokens.store import tokenize_cube

    out = tokenize_cube(args.cube, args.tokenizers, args.out, batch_size=args.batch_size, device=args.device,
                        progress=not args.quiet)
    shapes = [f"{m} {' x '.join(map(str, s.grid)) if s.grid else s.length}" for m, s in token_specs(out).items()]
    print(f"tokens written to {out} (tokens per sample: {', '.join(shapes)}); read them with "
          f"eo_models.tokens.dataset.TokenDataset({str(out)!r})")


def _text(args: argparse.Namespace) -> None:
    from eo_models.tokenizers.text import check_save_folder, train_caption_tokenizer

    check_save_folder(args.out)
    tok = train_caption_tokenizer(args.cube, vocab_size=args.vocab_size)
    tok.save_pretrained(args.out)
    print(f"{args.out}: WordPiece tokenizer, {tok.vocab_size} tokens")


def _bundled(section: str, key: str) -> str:
    """``tiny: X, base: Y``: a value of the bundled configs, for help texts."""
    import yaml

    from eo_models.config import CONFIG_DIR

    values = []
    for name in ("tiny", "base"):
        try:
            raw = yaml.safe_load((CONFIG_DIR / f"tokenizer-{name}.yaml").read_text()) or {}
            values.append(f"{name}: {(raw.get(section) or {}).get(key, '?')}")
        except (OSError, yaml.YAMLError):
            values.append(f"{name}: ?")
    return ", ".join(values)


def parser() -> argparse.ArgumentParser:
    """The argument parser (builds without torch: ``--help`` and ``--version`` work without the models extra)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="eo-models", description=__doc__.splitlines()[0].replace("``", ""),
                                formatter_class=raw,
                                epilog="example:\n  eo-models train-tokenizer --cube demo.zarr --modality s2l2a\n\n"
                                       "Every command: eo-models COMMAND --help")
    p.add_argument("--version", action="version", version=f"eo-models {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", formatter_class=raw,
                              epilog=f"example:\n  {example}")

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--cube", required=True, help="an eo-dataset cube: a local path or a URL (build one with "
                       "'eo-dataset demo')")
        s.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps ... (default: cpu)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")

    def workers(s: argparse.ArgumentParser, whose: str) -> None:
        s.add_argument("--workers", type=int, metavar="N",
                       help=f"data loader worker processes, 0 to read in this process (default: {whose} "
                       f"train.num_workers if it sets one, else one per CPU core: {cores} here)")

    s = command("train-tokenizer", "train (or resume) one tokenizer on a cube",
                "eo-models train-tokenizer --cube demo.zarr --modality s2l2a --quantizer fsq --decoder gan "
                "--config tiny --steps 60")
    common(s)
    s.add_argument("--modality", required=True, help="the cube's modality to tokenize, e.g. s2l2a, s1rtc, landsat, "
                   "lulc, osm ('eo-dataset info CUBE' lists them)")
    s.add_argument("--quantizer", choices=["fsq", "vq"], help="fsq: finite scalar quantisation; vq: a learned "
                   f"codebook (default: the config's; {_bundled('quantizer', 'type')})")
    s.add_argument("--decoder", choices=["gan", "diffusion"], help="gan: a CNN with adversarial and feature losses; "
                   f"diffusion: a UNet sampled with DDIM (default: the config's; {_bundled('decoder', 'type')})")
    s.add_argument("--config", default="tiny", help="a config YAML file, or a bundled config: tiny (CPU, minutes) "
                   "or base (GPU) (default: tiny)")
    s.add_argument("--steps", type=int, metavar="N", help="optimiser steps in all; a resumed run goes on up to N "
                   f"(default: the config's; {_bundled('train', 'steps')})")
    s.add_argument("--batch-size", type=int, metavar="N", help="samples per step (default: the config's; "
                   f"{_bundled('train', 'batch_size')})")
    s.add_argument("--crop", type=int, metavar="PX", help="side of the random training crops in base pixels "
                   f"(default: the config's; {_bundled('train', 'crop')}, some modalities have their own)")
    s.add_argument("--out", help=f"output folder (default: {DEFAULT_ROOT}/<modality>-<quantizer>-"
                   "<decoder>); an existing one must be empty or a tokenizer folder of train-tokenizer, which is "
                   "resumed")
    s.add_argument("--restart", action="store_true", help="start over instead of resuming the run in --out (only "
                   "the files training writes there are replaced)")
    s.add_argument("--devices", type=int, metavar="N", help="train on N devices of --device's kind with DDP, one "
                   "process each (e.g. --device cuda --devices 4; default: 1)")
    s.add_argument("--num-nodes", type=int, default=1, metavar="N", help="machines taking part (each started with "
                   "the same command by torchrun or a cluster launcher; default: 1)")
    s.add_argument("--precision", choices=["32", "bf16", "16"], help="float32, bfloat16 mixed or float16 mixed "
                   f"precision (default: the config's; {_bundled('train', 'precision')})")
    s.add_argument("--accumulate", type=int, metavar="N", help="micro-batches of --batch-size per optimiser step "
                   "(gradient accumulation; default: the config's, else 1)")
    s.add_argument("--verbose", action="store_true", help="also show Lightning's own messages (always written to "
                   "<out>/train/lightning.log)")
    workers(s, "the config's")
    s.set_defaults(func=_train)

    s = command("eval-tokenizer", "reconstruction metrics of a tokenizer on a cube",
                f"eo-models eval-tokenizer --cube demo.zarr --tokenizer {DEFAULT_ROOT}/s2l2a-fsq-gan --limit 200 "
                "--out metrics.json")
    common(s)
    s.add_argument("--tokenizer", required=True, help="a tokenizer folder, or a Hub repo id org/name (a path that is "
                   "no folder fails at once)")
    s.add_argument("--batch-size", type=int, default=8, metavar="N", help="samples per batch (default: 8)")
    s.add_argument("--limit", type=int, metavar="N", help="evaluate at most N samples, in cube order (default: every "
                   "sample that has the modality)")
    s.add_argument("--out", metavar="FILE", help="also write the metrics to this JSON file (default: they "
                   "are only printed); an existing file is replaced only if eval-tokenizer wrote it")
    s.add_argument("--no-card", action="store_true", help="do not write the metrics into the tokenizer folder's "
                   "model card (by default its README.md is rewritten when eo-models wrote it)")
    workers(s, "the tokenizer's")
    s.set_defaults(func=_eval)

    s = command("compare", "VQ/FSQ x GAN/diffusion on one modality, same budget: table + figure",
                "eo-models compare --cube demo.zarr --modality s2l2a --config tiny --steps 60 --out compare/")
    common(s)
    s.add_argument("--modality", required=True, help="the cube's modality to compare the four variants on")
    s.add_argument("--config", default="tiny", help="a config YAML file, or a bundled config: tiny or base; every "
                   "variant uses it (default: tiny)")
    s.add_argument("--steps", type=int, metavar="N", help="optimiser steps per variant (default: the config's; "
                   f"{_bundled('train', 'steps')})")
    s.add_argument("--out", default="compare", help="output folder: the four tokenizer folders, "
                   "compare.md, compare.json, compare.png (default: compare); an existing one must be empty or a "
                   "comparison to resume")
    s.add_argument("--seed", type=int, metavar="S", help="training seed of every variant (default: the config's "
                   "train.seed, 0 unless it sets one); a folder trained with another seed is not resumed")
    workers(s, "the config's")
    s.set_defaults(func=_compare)

    s = command("tokenize", "write token ids (and per-token validity) of a cube's samples to a Zarr store",
                f"eo-models tokenize --cube demo.zarr --tokenizers {DEFAULT_ROOT}/s2l2a-fsq-gan "
                f"{DEFAULT_ROOT}/lulc-fsq-gan {DEFAULT_ROOT}/caption --out tokens.zarr")
    common(s)
    s.add_argument("--tokenizers", nargs="+", required=True, metavar="TOKENIZER", help="one tokenizer per modality: "
                   "image tokenizer folders (train-tokenizer), the caption tokenizer folder (train-text-tokenizer), "
                   "or Hub repo ids org/name of either (each is recognised by its config.json)")
    s.add_argument("--out", required=True, help="the token store to write (a Zarr v3 folder, e.g. "
                   "tokens.zarr, or an s3://, gs://, az:// URL: an icechunk repository, published when complete, "
                   "credentials from the AWS_*/GOOGLE_*/AZURE_* environment variables); an existing one must be empty "
                   "or a token store of the same cube and tokenizers, which is resumed")
    s.add_argument("--batch-size", type=int, default=16, metavar="N", help="samples per block: one Zarr chunk and "
                   "one forward pass (default: 16; a resumed store keeps its own)")
    s.set_defaults(func=_tokenize)

    s = command("train-text-tokenizer", "a WordPiece tokenizer for the cube's captions",
                f"eo-models train-text-tokenizer --cube demo.zarr --vocab-size 2000 --out {DEFAULT_ROOT}/caption")
    s.add_argument("--cube", required=True, help="an eo-dataset cube with captions: a local path or a URL")
    s.add_argument("--vocab-size", type=int, default=2000, metavar="N", help="target vocabulary size, special tokens "
                   "included; a small corpus gives fewer (default: 2000)")
    s.add_argument("--out", default=str(DEFAULT_ROOT / "caption"), help=f"output folder (default: "
                   f"{DEFAULT_ROOT / 'caption'}); an existing one must be empty or a caption tokenizer folder, whose "
                   "files are replaced")
    s.set_defaults(func=_text)

    from eo_models.cli.fusion import add_commands

    add_commands(command, workers)

    from eo_models.cli.zoo import add_commands as add_zoo_commands

    add_zoo_commands(command, workers)

    from eo_models.cli.export import add_commands as add_export_commands

    add_export_commands(command)

    from eo_models.cli.convert import add_commands as add_convert_commands

    add_convert_commands(command, workers)

    from eo_models.cli.experiment import add_commands as add_experiment_commands

    add_experiment_commands(command)
    return p


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The missing module's name when it belongs to the models extra."""
    name = (exc.name or "").split(".")[0]
    return name if name in EXTRA_MODULES else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``eo-models``."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except ModuleNotFoundError as exc:
        name = _missing_extra(exc)
        if name is None:
            raise
        print(f"eo-models: error: the Python package {name!r} is missing: eo-models needs the models extra; install "
              f"it with {INSTALL}", file=sys.stderr)
        return 2
    except (EOModelsError, ValueError, OSError) as exc:
        print(f"eo-models: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eo-models: interrupted (training, compare, tokenize, generate and embed resume when run again)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
