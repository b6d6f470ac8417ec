"""Finite scalar quantisation (Mentzer et al. 2023) from ``vector-quantize-pytorch``: each latent dimension is
bounded and rounded to one of ``levels[i]`` values; the token is the mixed-radix number of the rounded values."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor
from vector_quantize_pytorch import FSQ

from eo_models.config import QuantizerConfig
from eo_models.tokenizers.quantizers.base import Quantized, Quantizer


class FSQuantizer(Quantizer):
    """FSQ over ``dim``-dimensional latents (projected to ``len(levels)`` dimensions and back by the library)."""

    def __init__(self, dim: int, config: QuantizerConfig) -> None:
        super().__init__()
        self.fsq = FSQ(levels=list(config.levels), dim=dim)
        self.codebook_size = int(self.fsq.codebook_size)

    def forward(self, z: Tensor) -> Quantized:
        h = z.shape[-2]
        q, idx = self.fsq(rearrange(z, "b d h w -> b (h w) d"))
        return Quantized(rearrange(q, "b (h w) d -> b d h w", h=h), rearrange(idx, "b (h w) -> b h w", h=h).long(),
                         torch.zeros((), device=z.device))

    def decode_indices(self, indices: Tensor) -> Tensor:
        h = indices.shape[-2]  # flattened: the library treats 3-D indices as images and moves the axes itself
        codes = self.fsq.indices_to_codes(rearrange(indices, "b h w -> b (h w)"))
        return rearrange(codes, "b (h w) d -> b d h w", h=h)
