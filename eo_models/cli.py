"""``eo-models``: train, evaluate, compare and apply tokenizers on eo-dataset cubes.

    eo-models train-tokenizer --cube demo.zarr --modality s2l2a --quantizer fsq --decoder gan --config tiny
    eo-models eval-tokenizer --cube demo.zarr --tokenizer tokenizers/s2l2a-fsq-gan
    eo-models compare --cube demo.zarr --modality s2l2a --config tiny --out compare/
    eo-models tokenize --cube demo.zarr --tokenizers tokenizers/s2l2a-fsq-gan tokenizers/lulc-fsq-gan --out tokens.zarr
    eo-models train-text-tokenizer --cube demo.zarr --out tokenizers/caption
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eo_models.errors import EOModelsError


def _train(args: argparse.Namespace) -> None:
    from eo_models.train import train_tokenizer

    out = args.out or Path("tokenizers") / f"{args.modality}-{args.quantizer or 'cfg'}-{args.decoder or 'cfg'}"
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("crop", args.crop)) if v is not None}
    r = train_tokenizer(args.cube, args.modality, out, config=args.config, quantizer=args.quantizer,
                        decoder=args.decoder, steps=args.steps, device=args.device, resume=not args.restart,
                        progress=not args.quiet, **overrides)
    print(f"{r.out}: {r.steps} steps, {r.samples_per_s:.1f} training samples/s; last losses "
          + ", ".join(f"{k} {v:.4f}" for k, v in r.last.items()))
    print(f"metrics: {r.out / 'train' / 'metrics.csv'}; load with Tokenizer.from_pretrained({str(r.out)!r})")


def _eval(args: argparse.Namespace) -> None:
    from eo_models.evaluate import evaluate_tokenizer
    from eo_models.tokenizers.tokenizer import load_tokenizer, model_card

    tok = load_tokenizer(args.tokenizer)
    metrics = evaluate_tokenizer(tok, args.cube, batch_size=args.batch_size, device=args.device, limit=args.limit)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    folder = Path(args.tokenizer)
    if folder.is_dir() and not args.no_card:  # the model card states the metrics, and on which cube
        card = model_card(tok.cfg, {"evaluated_on": str(args.cube), **metrics})
        (folder / "README.md").write_text(card)
    print(text)


def _compare(args: argparse.Namespace) -> None:
    from eo_models.compare import compare_tokenizers

    result = compare_tokenizers(args.cube, args.modality, args.out, config=args.config, steps=args.steps,
                                device=args.device, progress=not args.quiet)
    print(result.table)
    print(f"\ntable: {result.table_path}\nfigure: {result.figure_path}")


def _tokenize(args: argparse.Namespace) -> None:
    from eo_models.tokenize_cube import tokenize_cube

    out = tokenize_cube(args.cube, args.tokenizers, args.out, batch_size=args.batch_size, device=args.device,
                        progress=not args.quiet)
    print(f"tokens written to {out}")


def _text(args: argparse.Namespace) -> None:
    from eo_models.tokenizers.text import train_caption_tokenizer

    tok = train_caption_tokenizer(args.cube, vocab_size=args.vocab_size)
    tok.save_pretrained(args.out)
    print(f"{args.out}: WordPiece tokenizer, {tok.vocab_size} tokens")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eo-models", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--cube", required=True, help="an eo-dataset cube (path or URL)")
        s.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("train-tokenizer", help="train (or resume) one tokenizer on a cube")
    common(s)
    s.add_argument("--modality", required=True)
    s.add_argument("--quantizer", choices=["fsq", "vq"])
    s.add_argument("--decoder", choices=["gan", "diffusion"])
    s.add_argument("--config", default="tiny", help="a config file, or a bundled one: tiny, base (default tiny)")
    s.add_argument("--steps", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--crop", type=int, help="crop side in base pixels")
    s.add_argument("--out", type=Path, help="output folder (default tokenizers/<modality>-<quantizer>-<decoder>)")
    s.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    s.set_defaults(func=_train)

    s = sub.add_parser("eval-tokenizer", help="reconstruction metrics of a tokenizer on a cube")
    common(s)
    s.add_argument("--tokenizer", required=True, help="a tokenizer folder or Hub repo id")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--limit", type=int, help="evaluate at most this many samples")
    s.add_argument("--out", type=Path, help="also write the metrics to this JSON file")
    s.add_argument("--no-card", action="store_true", help="do not write the metrics into the folder's model card")
    s.set_defaults(func=_eval)

    s = sub.add_parser("compare", help="VQ/FSQ x GAN/diffusion on one modality, same budget: table + figure")
    common(s)
    s.add_argument("--modality", required=True)
    s.add_argument("--config", default="tiny")
    s.add_argument("--steps", type=int)
    s.add_argument("--out", type=Path, default=Path("compare"))
    s.set_defaults(func=_compare)

    s = sub.add_parser("tokenize", help="write token ids of a cube's samples to a Zarr store")
    common(s)
    s.add_argument("--tokenizers", nargs="+", required=True, help="tokenizer folders or Hub repo ids")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--batch-size", type=int, default=16)
    s.set_defaults(func=_tokenize)

    s = sub.add_parser("train-text-tokenizer", help="a WordPiece tokenizer for the cube's captions")
    s.add_argument("--cube", required=True)
    s.add_argument("--vocab-size", type=int, default=2000)
    s.add_argument("--out", type=Path, default=Path("tokenizers/caption"))
    s.set_defaults(func=_text)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (EOModelsError, ValueError, OSError) as exc:
        print(f"eo-models: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
