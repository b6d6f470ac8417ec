"""The reference side of the TerraMind backbone conversion test; runs with terratorch's source (``bash
.ci/terratorch.sh`` unpacks it into ``.terratorch``) on ``PYTHONPATH``.

Builds terratorch's ``TerraMind`` (the encoder-decoder the released ``TerraMind_v1_<size>.pt`` files hold) with
``terramind_v1_tiny``'s architecture arguments and random weights, saves its state dict as TerraMind ships it
(``torch.save(model.state_dict(), ...)``), loads it into terratorch's ``TerraMindViT`` (the backbone) the way
``build_terrammind_vit`` loads pretrained weights (the tensors the backbone has), and writes every block's output
for given inputs to ``ref.pt``. Usage::

    PYTHONPATH=.terratorch python terramind_backbone_reference.py SPEC.json OUT_DIR

SPEC.json: ``dim``, ``depth``, ``heads``, ``decoder_depth``, ``encoder`` and ``decoder`` (TerraMind's modality names),
``seed``, ``file`` (the .pt name), ``runs``: ``{name: inputs}`` with ``inputs`` a ``torch.save``'d dict (in sequence
order) of TerraMind modality name -> stored pixel values ``(B, C, H, W)`` or token ids ``(B, h, w)``; ``stats``:
``{name: {"mean", "std", "db"}}`` of each pixel input (TerraMind's normalisation, after ``10 log10`` with ``db``).
"""

from __future__ import annotations

import json
import math
import sys
import types
from functools import partial
from pathlib import Path

import torch
from torch import nn


def terramind_packages() -> None:
    """Make ``terratorch.models.backbones.terramind.model`` importable without the parents' ``__init__``."""
    import importlib.util

    root = Path(importlib.util.find_spec("terratorch").submodule_search_locations[0])
    for name in ("terratorch", "terratorch.models", "terratorch.models.backbones",
                 "terratorch.models.backbones.terramind", "terratorch.models.backbones.terramind.model"):
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = module


def randomise(model: nn.Module, seed: int) -> None:
    """Random weights everywhere (TerraMind's init zeroes biases and sets norms to 1, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(float(torch.equal(p, torch.ones_like(p))) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir)
    terramind_packages()
    from terratorch.models.backbones.terramind.model.modality_info import MODALITY_INFO
    from terratorch.models.backbones.terramind.model.terramind import (
        TerraMind,
        build_modality_embeddings,
        build_output_modality_embeddings,
    )
    from terratorch.models.backbones.terramind.model.terramind_vit import TerraMindViT
    from terratorch.models.backbones.terramind.model.tm_utils import LayerNorm

    torch.manual_seed(0)
    # terramind_v1_tiny's arguments (terramind_register.py), at the spec's size
    arch = {"dim": spec["dim"], "encoder_depth": spec["depth"], "num_heads": spec["heads"], "mlp_ratio": 4,
            "qkv_bias": True, "proj_bias": True, "mlp_bias": True, "num_register_tokens": 0,
            "norm_layer": partial(LayerNorm, eps=1e-6, bias=False), "act_layer": nn.GELU, "gated_mlp": False}
    enc, _ = build_modality_embeddings(MODALITY_INFO, spec["encoder"], img_size=224, dim=spec["dim"], patch_size=16)
    dec, _ = build_output_modality_embeddings(MODALITY_INFO, spec["decoder"], img_size=224, dim=spec["dim"],
                                              patch_size=16)
    full = TerraMind(encoder_embeddings=enc, decoder_embeddings=dec, modality_info=MODALITY_INFO,
                     decoder_depth=spec["decoder_depth"], **arch)
    randomise(full, spec["seed"])
    torch.save(full.state_dict(), out / spec["file"])

    # what build_terrammind_vit(pretrained=True) does: torch.load, keep the tensors the backbone has, strict load
    backbone = TerraMindViT(modalities=spec["encoder"], merge_method=None, img_size=224, patch_size=16,
                            tokenizer_dict=None, **arch)
    sd = torch.load(out / spec["file"], map_location="cpu", weights_only=True)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(sd))
    assert not missing, f"the backbone's tensors missing in TerraMind's state dict: {missing[:5]}"
    backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)
    backbone.eval()
    results = {}
    with torch.no_grad():
        for name, path in spec["runs"].items():
            inputs = {}
            for key, x in torch.load(path, weights_only=True).items():
                if key in spec["stats"]:  # stored values, normalised as TerraMind's pretraining did
                    stats = spec["stats"][key]
                    x = 10 * torch.log10(x) if stats["db"] else x
                    x = (x - torch.tensor(stats["mean"]).view(-1, 1, 1)) / torch.tensor(stats["std"]).view(-1, 1, 1)
                inputs[key] = x
            results[name] = torch.stack(backbone(inputs))  # (layers, B, N, D), the last one normed
    torch.save(results, out / "ref.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
