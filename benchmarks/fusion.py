"""Fusion model benchmarks on token batches shaped like the corpus's, every figure measured in this one run.

(a) training throughput of a config (default ``tiny`` on the CPU; ``small``/``base`` on a GPU in bf16): samples/s,
    input+target tokens/s, peak GPU memory and an MFU estimate (6 x parameters of the blocks x tokens through them,
    plus attention, against the card's dense bf16 peak given with --peak-tflops);
(b) generation samples/s of one image modality from the others with MaskGIT and ROAR at 1 and 8 steps.

The token batches are random ids on the token grids of the 264 px corpus (seven image modalities: five at 33 x 33,
two at 11 x 11, vocabularies of 1,000 and a 64-token caption of 2,000): throughput does not depend on the values.

Run: python benchmarks/fusion.py [--config tiny] [--device cpu] [--precision 32] [--batch-size 8] [--steps 20]
     python benchmarks/fusion.py --params        # the bundled configs' parameter counts only
"""

from __future__ import annotations

import argparse
import time

import torch

from eo_models.fusion.config import TokenModality, load_fusion_config
from eo_models.fusion.generation import Schedule, generate
from eo_models.fusion.masking import sample_masks
from eo_models.fusion.model import FusionModel

GRIDS = {"s2l2a": (33, 33), "s1rtc": (33, 33), "landsat": (11, 11), "dem": (11, 11), "lulc": (33, 33),
         "canopy": (33, 33), "osm": (33, 33)}


def modalities() -> list[TokenModality]:
    mods = [TokenModality(name=m, kind="image", vocab_size=1000, grid=g) for m, g in GRIDS.items()]
    return [*mods, TokenModality(name="caption", kind="sequence", vocab_size=2000, length=64)]


def token_batch(mods: list[TokenModality], n: int, device: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    batch: dict[str, torch.Tensor] = {}
    for m in mods:
        ids = torch.randint(0, m.vocab_size, (n, m.tokens), generator=gen)
        if m.kind == "sequence":
            ids[:, 40:] = -1
        batch[m.name] = ids.to(device)
        batch[f"{m.name}_available"] = (torch.rand(n, generator=gen) < 0.85).to(device)
        batch[f"{m.name}_valid"] = torch.ones(n, m.tokens, device=device)
    return batch


def block_flops_per_token(model: FusionModel) -> float:
    """Forward FLOPs per token of one encoder block and one decoder block (matmuls only), averaged."""
    a = model.cfg.model
    enc = 2 * (4 * a.dim * a.dim + 3 * a.dim * a.hidden)
    dec = 2 * (8 * a.dim * a.dim + 3 * a.dim * a.hidden)
    return enc, dec


def train_throughput(args: argparse.Namespace, mods: list[TokenModality]) -> None:
    cfg = load_fusion_config(args.config, mods)
    device = args.device
    torch.manual_seed(0)
    model = FusionModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    batches = [token_batch(mods, args.batch_size, device, gen) for _ in range(4)]
    masks = []
    for b in batches:
        cpu = {k: v.cpu() for k, v in b.items()}
        m = sample_masks(cpu, cfg.masking, sequences=frozenset({"caption"}), generator=gen)
        masks.append(({k: v.to(device) for k, v in m.input.items()}, {k: v.to(device) for k, v in m.target.items()}))
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step(i: int) -> None:
        b, (inp, tgt) = batches[i % 4], masks[i % 4]
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            out = model(b, inp, tgt)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for i in range(3):  # warm-up
        step(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    k = cfg.masking
    samples = args.steps * args.batch_size
    tokens = samples * (k.input_tokens + k.target_tokens)
    enc, dec = block_flops_per_token(model)
    a = cfg.model
    flops = 3 * samples * (k.input_tokens * enc * a.encoder_depth + k.target_tokens * dec * a.decoder_depth)
    print(f"(a) train {args.config}: {model.num_parameters() / 1e6:.1f} M parameters, batch {args.batch_size}, "
          f"{k.input_tokens}+{k.target_tokens} tokens/sample, precision {args.precision}, device {device}")
    print(f"    {samples / seconds:.1f} samples/s, {tokens / seconds:,.0f} tokens/s, {seconds / args.steps * 1e3:.1f} "
          f"ms/step, {flops / seconds / 1e12:.2f} TFLOP/s (matmuls of the blocks)")
    if device.startswith("cuda"):
        print(f"    peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        if args.peak_tflops:
            print(f"    MFU {flops / seconds / 1e12 / args.peak_tflops:.1%} of {args.peak_tflops:g} TFLOP/s")
    model.eval()
    cond = [m.name for m in mods if m.name not in ("lulc", "caption")]
    for steps in (1, 8):
        for order in ("maskgit", "roar"):
            b = batches[0]
            b = {**b, **{f"{m}_available": torch.ones_like(b[f"{m}_available"]) for m in cond}}
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                generate(model, b, ["lulc"], conditioning=cond, schedule=Schedule(steps=steps, order=order))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                generate(model, b, ["lulc"], conditioning=cond, schedule=Schedule(steps=steps, order=order))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(f"(b) generate lulc (1,089 tokens) from {len(cond)} modalities, {order} {steps} step(s): "
                  f"{args.batch_size / dt:.2f} samples/s")


def parameters() -> None:
    """The bundled configs on the corpus' token layout: parameters (built on the meta device: no memory, no time)."""
    mods = modalities()
    print(f"token layout: {len(mods)} modalities, {sum(m.tokens for m in mods):,} tokens per sample")
    print(f"{'config':8s} {'width':>5s} {'encoder':>7s} {'decoder':>7s} {'heads':>5s} {'SwiGLU':>6s} "
          f"{'budgets in+out':>14s} {'parameters':>12s} {'of them blocks':>14s}")
    for name in ("tiny", "small", "base"):
        cfg = load_fusion_config(name, mods)
        with torch.device("meta"):
            model = FusionModel(cfg)
        a, k = cfg.model, cfg.masking
        blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoder.", "decoder.")))
        print(f"{name:8s} {a.dim:5d} {a.encoder_depth:7d} {a.decoder_depth:7d} {a.heads:5d} {a.hidden:6d} "
              f"{f'{k.input_tokens}+{k.target_tokens}':>14s} {model.num_parameters():12,d} {blocks:14,d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--params", action="store_true", help="only print the bundled configs' parameter counts")
    args = p.parse_args()
    if args.params:
        parameters()
        return
    train_throughput(args, modalities())


if __name__ == "__main__":
    main()
