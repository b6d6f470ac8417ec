"""The interface every quantizer implements (one quantizer per file: :mod:`.fsq`, :mod:`.vq`)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class Quantized(NamedTuple):
    """A quantizer's output: ``latents`` ``(B, D, h, w)`` (straight-through), ``indices`` ``(B, h, w)`` int64,
    ``loss`` (a scalar auxiliary loss: commitment for VQ, 0 for FSQ)."""

    latents: Tensor
    indices: Tensor
    loss: Tensor


class Quantizer(nn.Module):
    """``forward(z) -> Quantized``; ``decode_indices(indices) -> latents``; ``codebook_size`` tokens."""

    codebook_size: int

    def forward(self, z: Tensor) -> Quantized:  # pragma: no cover - interface
        raise NotImplementedError

    def decode_indices(self, indices: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
