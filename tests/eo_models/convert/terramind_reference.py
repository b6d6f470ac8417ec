"""The reference side of the TerraMind conversion tests; runs with terratorch's source (``bash .ci/terratorch.sh``
unpacks it into ``.terratorch``) on ``PYTHONPATH``.

Builds TerraMind's tokenizer from terratorch's own modules with random weights, saves its state dict as TerraMind ships
it (``torch.save(model.state_dict(), ...)``), and writes what terratorch computes for given inputs (pre-quantisation
latents, token ids, decoder output for a seed) to ``ref.pt``. Usage::

    PYTHONPATH=.terratorch python terramind_reference.py SPEC.json OUT_DIR

SPEC.json: ``{"registered": NAME}`` (only write ``shapes.json``: see :func:`registered_shapes`), or
``channels``, ``levels``, ``mean``, ``std``, ``dim``, ``depth``, ``unet_channels``, ``unet_blocks``, ``steps``,
``seed``, ``file`` (the .pt name) and ``inputs`` (a ``torch.save``'d ``(B, C, H, W)`` tensor of stored values).
Only TerraMind's module files are imported, not terratorch's package ``__init__`` (which imports every
dataset and model family, and torchgeo 0.9, which needs Python 3.12).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch


def terramind_packages() -> None:
    """Make ``terratorch.models.backbones.terramind.tokenizer`` importable without the parents' ``__init__``."""
    spec = importlib.util.find_spec("terratorch")
    root = Path(spec.submodule_search_locations[0])
    for name in ("terratorch", "terratorch.models", "terratorch.models.backbones",
                 "terratorch.models.backbones.terramind", "terratorch.models.backbones.terramind.tokenizer"):
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = module


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (TerraMind's init zeroes some output layers, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # biases around 0, normalisation scales (initialised to 1) around 1
                p.copy_(float(torch.equal(p, torch.ones_like(p))) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def registered_shapes(name: str, out: Path) -> None:
    """The tensor shapes of TerraMind's registered full-size tokenizer ``name`` (``terramind_v1_tokenizer_s2l2a``),
    the architecture its released weights load into with ``strict=True``, as ``shapes.json``."""
    registry = types.ModuleType("terratorch.registry")
    registry.TERRATORCH_FULL_MODEL_REGISTRY = types.SimpleNamespace(register=lambda f: f)
    sys.modules["terratorch.registry"] = registry
    from terratorch.models.backbones.terramind.tokenizer import tokenizer_register

    model = getattr(tokenizer_register, name)(pretrained=False)
    (out / "shapes.json").write_text(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))


def main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir)
    terramind_packages()
    if "registered" in spec:
        registered_shapes(spec["registered"], out)
        return
    from terratorch.models.backbones.terramind.tokenizer.models import vit_models
    from terratorch.models.backbones.terramind.tokenizer.models.unet import unet
    from terratorch.models.backbones.terramind.tokenizer.vqvae import DiVAE

    torch.manual_seed(0)
    c = spec["channels"]
    # terratorch's own classes at a smaller size, registered beside its vit_b_enc / unet_patched factories so that
    # DiVAE builds them itself, with terramind_v1_tokenizer_s2l2a's other arguments; the test runs in seconds
    vit_models.vit_test_enc = lambda **kw: vit_models.ViTEncoder(
        **kw, dim_tokens=spec["dim"], depth=spec["depth"], num_heads=spec["dim"] // 64, mlp_ratio=4, qkv_bias=True)
    unet.unet_patched_test = lambda **kw: unet.PatchedUNetCondCat(
        patch_size=4, model_channels=spec["unet_channels"], num_res_blocks=spec["unet_blocks"],
        attention_resolutions=[4, 8], channel_mult=(1, 2, 2, 2), **kw)
    model = DiVAE(image_size=256, n_channels=c, enc_type="vit_test_enc", dec_type="unet_patched_test", patch_size=16,
                  quant_type="fsq", codebook_size="-".join(map(str, spec["levels"])), latent_dim=5, post_mlp=True,
                  prediction_type="sample", clip_sample=True, thresholding=True, zero_terminal_snr=True)
    randomise(model, spec["seed"])
    model.eval()
    torch.save(model.state_dict(), out / spec["file"])

    x = torch.load(spec["inputs"], weights_only=True)
    mean = torch.tensor(spec["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec["std"], dtype=torch.float32).view(-1, 1, 1)
    x = (x.float() - mean) / std
    with torch.no_grad():
        latents = model.quant_proj(model.encoder(model.prepare_input(x)))
        quant, _, tokens = model.encode(x)
        decoded = model.decode_tokens(tokens, timesteps=spec["steps"], generator=torch.Generator().manual_seed(
            spec["seed"]), image_size=tuple(x.shape[-2:]), verbose=False)
    torch.save({"latents": latents, "quant": quant, "tokens": tokens.long(), "decoded": decoded}, out / "ref.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
