"""Train a tiny Sentinel-2 tokenizer on the demo cube (CPU, about a minute), evaluate it, reload it from its folder
(as from the Hub), and turn samples into tokens and back.

Run (after ``eo-dataset demo`` has built ``demo.zarr``)::

    python examples/tokenize_demo.py [--cube demo.zarr] [--out eo-tokenizers/s2l2a-fsq-gan] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eo_dataset.torch import CubeDataset
from eo_models.evaluation.evaluate import evaluate_tokenizer
from eo_models.tokenizers import Tokenizer
from eo_models.training.tokenizer import train_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cube", type=Path, default=Path("demo.zarr"))
    p.add_argument("--out", type=Path, default=Path("eo-tokenizers/s2l2a-fsq-gan"))
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()

    result = train_tokenizer(args.cube, "s2l2a", args.out, config="tiny", quantizer="fsq", decoder="gan",
                             steps=args.steps)
    print(f"trained {result.steps} steps at {result.samples_per_s:.1f} samples/s; last loss {result.last['loss']:.4f}")

    metrics = evaluate_tokenizer(args.out, args.cube)
    print("evaluation:", json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict | list)}))

    tok = Tokenizer.from_pretrained(args.out)  # config.json carries bands, normalisation, architecture
    print(tok, "bands:", tok.cfg.modality.bands)
    ds = CubeDataset(args.cube, ["s2l2a"], crop=64, crop_mode="center", normalize=False)
    have = [i for i in range(len(ds)) if ds.availability[i, 0]][:4]
    batch = ds.get_batch(have)
    tokens = tok.tokenize(batch["s2l2a"], batch["s2l2a_valid"])
    recon = tok.reconstruct(batch["s2l2a"], batch["s2l2a_valid"])
    print(f"{len(have)} samples -> tokens {tuple(tokens.shape)} (ids 0..{tok.codebook_size - 1}) -> "
          f"reconstruction {tuple(recon.shape)} in stored units")
    valid = batch["s2l2a_valid"].unsqueeze(1).expand_as(recon)
    err = (recon - batch["s2l2a"].float()).abs()[valid].mean()
    print(f"mean absolute error over valid pixels: {float(err):.1f} (stored units, x 1e-4 = reflectance)")
    torch.save(tokens, args.out / "demo_tokens.pt")


if __name__ == "__main__":
    main()
