"""Stage-1 tokenizer training throughput on random batches shaped like 12-band Sentinel-2 crops.

For each quantizer x decoder (VQ/FSQ x GAN/diffusion) of a bundled or given tokenizer config: one training step
as ``train-tokenizer`` does it (:class:`eo_models.training.tokenizer.TokenizerModule`), without the data loader:
the tokenizer's loss (head -> encoder -> quantizer -> decoder -> head loss + quantizer loss), backward, an AdamW
step of everything but the discriminator, and for GAN decoders the discriminator's hinge loss, backward and its
own AdamW step (the discriminator is on from the first step here: ``decoder.disc_start`` is set to 0, so a GAN step
is the full post-warm-up step). Prints samples/s, ms/step, parameters and, on a GPU, peak memory.

The batches are random stored values (``B x 12 x crop x crop``, reflectance x 10,000) with every pixel valid:
throughput does not depend on the values. The config's ``train.crop`` and ``train.batch_size`` are the defaults.

Run: python benchmarks/tokenizer.py [--config tiny] [--device cpu] [--precision 32] [--steps 3]
     python benchmarks/tokenizer.py --config base --device cuda --precision bf16 --steps 20
     (--quantizer fsq --decoder gan to run one variant; --batch-size / --crop to override the config's)
"""

from __future__ import annotations

import argparse
import time

import torch

from eo_models.config import ModalityConfig, TokenizerConfig, load_sections, make_config
from eo_models.tokenizers.tokenizer import Tokenizer

MODALITY = "s2l2a"  # the modality whose per-modality overrides of the config file apply
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def s2_modality() -> ModalityConfig:
    """A 12-band continuous modality at 10 m with plausible reflectance statistics (values do not matter here)."""
    return ModalityConfig(name=MODALITY, kind="continuous", bands=BANDS, mean=(1500.0,) * len(BANDS),
                          std=(1000.0,) * len(BANDS), units="reflectance", scale=1e-4, resolution_m=10.0)


def config(args: argparse.Namespace, quantizer: str, decoder: str) -> TokenizerConfig:
    sections = load_sections(args.config, MODALITY, quantizer=quantizer, decoder=decoder, batch_size=args.batch_size,
                             crop=args.crop)
    sections["decoder"]["disc_start"] = 0  # the discriminator's step in every timed step (GAN)
    return make_config(sections, s2_modality())


def millions(params: list[torch.nn.Parameter]) -> float:
    return sum(p.numel() for p in params) / 1e6


def train_throughput(args: argparse.Namespace, quantizer: str, decoder: str) -> None:
    cfg = config(args, quantizer, decoder)
    device, t = args.device, cfg.train
    torch.manual_seed(0)
    tok = Tokenizer(cfg.to_dict()).to(device).train()
    gen_params = tok.generator_parameters()
    disc = getattr(tok.decoder, "discriminator", None)
    opt = torch.optim.AdamW(gen_params, lr=t.lr, weight_decay=t.weight_decay)
    dopt = torch.optim.AdamW(disc.parameters(), lr=t.disc_lr) if disc is not None else None
    gen = torch.Generator().manual_seed(0)
    shape = (t.batch_size, len(BANDS), t.crop, t.crop)
    x = (torch.rand(shape, generator=gen) * 10000).to(device)
    valid = torch.ones(t.batch_size, t.crop, t.crop, dtype=torch.bool, device=device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    kind = device.split(":")[0]
    cuda = kind == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def step(i: int) -> None:
        with torch.autocast(device_type=kind, dtype=dtype, enabled=dtype is not None):
            if disc is not None:  # gradients reach only the generator (Lightning's toggled_optimizer)
                disc.requires_grad_(False)
            loss, _, out, target = tok.training_loss(x, valid, i)
            loss.backward()
            if disc is not None:
                disc.requires_grad_(True)
                tok.decoder.discriminator_loss(out, tok.head, target, valid).backward()
        for o in (opt, dopt):
            if o is not None:
                o.step()
                o.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    samples = args.steps * t.batch_size
    extra = f" + {millions(list(disc.parameters())):.2f} M discriminator" if disc is not None else ""
    print(f"{cfg.name} {quantizer}/{decoder}: {millions(gen_params):.1f} M parameters{extra}, {cfg.encoder.type} "
          f"encoder, batch {t.batch_size} x {len(BANDS)} x {t.crop} x {t.crop}, precision {args.precision}, "
          f"device {device}")
    line = f"    {samples / seconds:.2f} samples/s, {seconds / args.steps * 1e3:.1f} ms/step ({args.steps} steps)"
    if cuda:
        line += f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", help="a bundled tokenizer config (tiny, base) or a YAML file")
    p.add_argument("--quantizer", choices=["fsq", "vq"], nargs="+", default=["vq", "fsq"])
    p.add_argument("--decoder", choices=["gan", "diffusion"], nargs="+", default=["gan", "diffusion"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    p.add_argument("--crop", type=int, default=None, help="pixels per side; default: the config's train.crop")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    args = p.parse_args()
    for decoder in args.decoder:
        for quantizer in args.quantizer:
            train_throughput(args, quantizer, decoder)


if __name__ == "__main__":
    main()
