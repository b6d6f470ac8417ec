"""Stage 2 on the demo cube, end to end on a CPU (a few minutes): tokenizers for Sentinel-2, land cover and captions,
a token store, a tiny fusion model trained on it, then land cover and captions generated from Sentinel-2 and
embeddings of every sample, each written as a store aligned with the cube.

Run (after ``eo-dataset demo`` has built ``demo.zarr``)::

    python examples/fusion_demo.py [--cube demo.zarr] [--work eo-fusion-demo] [--tokenizer-steps 30] [--steps 200]
                                   [--generation-steps 8]

Everything lands in ``--work`` (rerun the script and each step resumes or returns at once).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

from eo_models.fusion import FusionModel, Schedule, embed_cube, generate_cube, train_fusion
from eo_models.tokenizers.text import train_caption_tokenizer
from eo_models.tokens.store import tokenize_cube
from eo_models.training.tokenizer import train_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cube", type=Path, default=Path("demo.zarr"))
    p.add_argument("--work", type=Path, default=Path("eo-fusion-demo"))
    p.add_argument("--tokenizer-steps", type=int, default=30)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--generation-steps", type=int, default=8, help="MaskGIT steps for land cover (1: all at once)")
    args = p.parse_args()
    work, cube = args.work, args.cube
    work.mkdir(parents=True, exist_ok=True)

    # stage 1: one tokenizer per modality (tiny configs: far too small to be good, enough to show the flow)
    toks = [train_tokenizer(cube, m, work / "tokenizers" / m, config="tiny", steps=args.tokenizer_steps,
                            progress=False).out for m in ("s2l2a", "lulc")]
    caption = work / "tokenizers" / "caption"
    if not (caption / "config.json").exists():
        train_caption_tokenizer(cube, vocab_size=500).save_pretrained(caption)
    tokens = tokenize_cube(cube, [*toks, caption], work / "tokens.zarr", progress=False)
    shapes = {k: v.shape[1:] for k, v in xr.open_zarr(tokens).data_vars.items() if k.endswith("_tokens")}
    print(f"tokens: {tokens} {shapes}")

    # stage 2: the fusion model, trained by masked multimodal token reconstruction
    r = train_fusion(work / "fusion", tokens=tokens, config="tiny", steps=args.steps, progress=False)
    print(f"fusion model: {r.parameters / 1e6:.2f} M parameters, {r.steps} steps at {r.samples_per_s:.1f} samples/s; "
          f"last loss {r.last.get('loss', float('nan')):.3f}")
    model = FusionModel.from_pretrained(r.out)
    print(model)

    # any-to-any: land cover and a caption from Sentinel-2, written beside the cube
    gen = generate_cube(r.out, cube, work / "generated.zarr", source="s2l2a", target=["lulc", "caption"],
                        schedule=Schedule(steps=args.generation_steps), progress=False)
    g, c = xr.open_zarr(gen), xr.open_zarr(cube)
    both = g["lulc_available"].values & c["lulc_available"].values
    inside = g["lulc"].attrs["crop_offset_px"][0]
    crop = slice(inside, inside + g["lulc"].attrs["crop_px"])
    agree = (g["lulc"].values[both][..., crop, crop] == c["lulc"].values[both][..., crop, crop]).mean()
    print(f"generated: {gen}; land cover agrees with the cube on {agree:.0%} of pixels of {both.sum()} samples")
    print(f"a generated caption: {g['caption'].values[np.flatnonzero(both)[0]]!r}")

    # embeddings for downstream use: pooled per sample and per token
    emb = xr.open_zarr(embed_cube(r.out, cube, work / "embeddings.zarr", modalities="s2l2a", progress=False))
    print(f"embeddings: {emb['embedding'].shape} pooled, {emb['s2l2a_patch'].shape} per token")


if __name__ == "__main__":
    main()
