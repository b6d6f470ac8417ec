"""TerraMind-1.0's finite scalar quantisation: each latent dimension ``z_i`` becomes the integer
``n_i = round(sigmoid(z_i) * (L_i - 1))`` (straight-through), the code is ``n_i / (L_i - 1)`` in [0, 1], and the token
is ``sum(n_i * prod(L_0 .. L_{i-1}))``: the *first* dimension is the least significant digit.

This differs from Mentzer et al.'s tanh-bounded, zero-centred codes (:mod:`.fsq`, vector-quantize-pytorch), so
TerraMind's weights need this formulation for their token ids and decoder inputs to mean what they were trained to.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eo_models.tokenizers.quantizers.base import Quantized, Quantizer


class SigmoidFSQuantizer(Quantizer):
    """FSQ over ``len(levels)``-dimensional latents ``(B, D, h, w)`` (no projection: the encoder's ``quant_proj``
    makes them)."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels_list = tuple(int(v) for v in levels)
        self.register_buffer("levels", torch.tensor(self.levels_list, dtype=torch.long), persistent=False)
        basis = [math.prod(self.levels_list[:i]) for i in range(len(self.levels_list))]
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        self.codebook_size = math.prod(self.levels_list)

    def forward(self, z: Tensor) -> Quantized:
        top = (self.levels - 1).to(z.dtype).view(1, -1, 1, 1)
        scaled = torch.sigmoid(z) * top
        number = scaled + (scaled.round() - scaled).detach()  # round, straight-through gradients
        indices = (number.detach().long() * self.basis.view(1, -1, 1, 1)).sum(1)
        return Quantized(number / top, indices, torch.zeros((), device=z.device))

    def decode_indices(self, indices: Tensor) -> Tensor:
        digits = (indices.unsqueeze(1) // self.basis.view(1, -1, 1, 1)) % self.levels.view(1, -1, 1, 1)
        return digits.float() / (self.levels - 1).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"levels={list(self.levels_list)}, codebook_size={self.codebook_size}"
