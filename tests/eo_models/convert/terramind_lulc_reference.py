"""The reference side of the TerraMind LULC conversion test; runs with terratorch's source (``bash .ci/terratorch.sh``
unpacks it into ``.terratorch``) on ``PYTHONPATH``.

Builds terratorch's registered ``terramind_v1_tokenizer_lulc`` (ViT-B encoder and decoder, FSQ 7-5-5-5-5, a one-hot
of 10 classes in; ``pretrained=False``: nothing is downloaded) with random weights, saves its state dict as TerraMind
ships it, and writes what terratorch computes for a one-hot input (pre-quantisation latents, quantised latents, token
ids, the decoder's class logits for those ids) to ``ref.pt``. Usage::

    PYTHONPATH=.terratorch python terramind_lulc_reference.py SPEC.json OUT_DIR

SPEC.json: ``seed``, ``file`` (the .pt name) and ``inputs`` (a ``torch.save``'d ``(B, H, W)`` tensor of TerraMind's
class ids 0..9, one-hot encoded here as terratorch's ViTEncoder does it).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from terramind_reference import randomise, terramind_packages  # noqa: E402


def main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir)
    terramind_packages()
    registry = types.ModuleType("terratorch.registry")
    registry.TERRATORCH_FULL_MODEL_REGISTRY = types.SimpleNamespace(register=lambda f: f)
    sys.modules["terratorch.registry"] = registry
    from terratorch.models.backbones.terramind.tokenizer import tokenizer_register

    torch.manual_seed(0)
    model = tokenizer_register.terramind_v1_tokenizer_lulc(pretrained=False)
    randomise(model, spec["seed"])
    model.eval()
    torch.save(model.state_dict(), out / spec["file"])

    ids = torch.load(spec["inputs"], weights_only=True)
    onehot = F.one_hot(ids.long(), num_classes=model.n_channels).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        latents = model.quant_proj(model.encoder(model.prepare_input(onehot)))
        quant, _, tokens = model.encode(onehot)
        logits = model.decode_tokens(tokens)
    torch.save({"onehot": onehot, "latents": latents, "quant": quant, "tokens": tokens.long(), "logits": logits,
                "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}, out / "ref.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
