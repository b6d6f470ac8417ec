"""Vector quantisation with an EMA codebook from ``vector-quantize-pytorch``: nearest code (Euclidean, or cosine
with ``cosine``), optional low-dimensional codes (``codebook_dim``), dead codes restarted from the batch."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor
from vector_quantize_pytorch import VectorQuantize

from eo_models.config import QuantizerConfig
from eo_models.tokenizers.quantizers.base import Quantized, Quantizer


class VectorQuantizer(Quantizer):
    """VQ-VAE-style quantizer (EMA updates, commitment loss)."""

    def __init__(self, dim: int, config: QuantizerConfig) -> None:
        super().__init__()
        self.vq = VectorQuantize(dim=dim, codebook_size=config.codebook_size, codebook_dim=config.codebook_dim,
                                 use_cosine_sim=config.cosine, decay=config.decay,
                                 threshold_ema_dead_code=config.dead_code_threshold,
                                 commitment_weight=config.commitment_weight, kmeans_init=False)
        self.codebook_size = config.codebook_size

    def forward(self, z: Tensor) -> Quantized:
        h = z.shape[-2]
        q, idx, loss = self.vq(rearrange(z, "b d h w -> b (h w) d"))
        return Quantized(rearrange(q, "b (h w) d -> b d h w", h=h), rearrange(idx, "b (h w) -> b h w", h=h).long(),
                         loss.sum())

    def decode_indices(self, indices: Tensor) -> Tensor:
        h = indices.shape[-2]
        q = self.vq.get_output_from_indices(rearrange(indices, "b h w -> b (h w)"))
        return rearrange(q, "b (h w) d -> b d h w", h=h)
