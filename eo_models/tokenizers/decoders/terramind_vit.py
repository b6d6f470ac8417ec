"""TerraMind-1.0's ViT decoder (IBM/ESA, Apache-2.0), the decoder of its VQ-VAE tokenizers (LULC): a 1 x 1
``post_quant_proj`` from the quantised latents to the token width, a fixed 2-D sine-cosine position grid (stored with
the weights, resized bicubically to the token grid), pre-norm transformer blocks, a tanh post-MLP (ViT-VQGAN style)
and a linear ``out_proj`` of every token to ``patch`` x ``patch`` pixels of ``out_channels`` (class logits for LULC).
Deterministic: no sampling.

Module and parameter names follow TerraMind's state dicts (``post_quant_proj.*``, ``decoder.*``), so its ``.pt`` files
load with no renaming; the transformer blocks are timm's (same layout and names as TerraMind's). Verified against
terratorch's modules by ``tests/eo_models/convert/test_terramind_lulc.py``.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from eo_models.config import DecoderConfig
from eo_models.errors import ConfigError
from eo_models.tokenizers.heads import Head
from eo_models.tokenizers.terramind_encoder import HEAD_DIM, TRAIN_SIZE, TerraMindTrunk


class TerraMindViTBody(TerraMindTrunk):
    """The decoder's ViT: token features ``(B, dim, h, w)`` -> pixels ``(B, out_channels, h * patch, w * patch)``
    (one logit per class for LULC) through a linear ``out_proj`` of every token; the rest as
    :class:`~eo_models.tokenizers.terramind_encoder.TerraMindTrunk`."""

    def __init__(self, out_channels: int, dim: int, depth: int, heads: int, patch: int, grid: int,
                 mlp_ratio: float = 4.0, post_mlp: bool = True) -> None:
        super().__init__(dim, depth, heads, grid, mlp_ratio, post_mlp)
        self.out_channels, self.patch = out_channels, patch
        self.out_proj = nn.Linear(dim, out_channels * patch * patch)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return rearrange(self.out_proj(self.tokens(x)), "b (h w) (c p q) -> b c (h p) (w q)", h=h, w=w,
                         p=self.patch, q=self.patch, c=self.out_channels)


class TerraMindViTDecoder(nn.Module):
    """Quantised latents ``(B, latent_dim, h, w)`` -> head outputs ``(B, out_channels, h * patch, w * patch)``.

    Args:
        latent_dim: Quantised latent channels (5 in TerraMind-1.0).
        out_channels: The head's output channels (LULC: one logit per class).
        token_patch: Pixels per token side (the encoder's patch; 16 in TerraMind).
        config: ``dim``: the token width (TerraMind's ViT-B: 768); ``layers_per_block``: the transformer blocks
            (ViT-B: 12). Heads are ``dim / 64``, the position grid that of 256 px images, as in TerraMind.
    """

    def __init__(self, latent_dim: int, out_channels: int, token_patch: int, config: DecoderConfig) -> None:
        super().__init__()
        if config.dim % HEAD_DIM:
            raise ConfigError(f"decoder.dim must be a multiple of {HEAD_DIM} for a terramind_vit decoder (TerraMind's "
                              f"ViT-B: 768), found {config.dim}")
        self.token_patch = token_patch
        self.post_quant_proj = nn.Conv2d(latent_dim, config.dim, 1)
        self.decoder = TerraMindViTBody(out_channels, config.dim, config.layers_per_block, config.dim // HEAD_DIM,
                                        token_patch, TRAIN_SIZE // token_patch)

    @property
    def multiple(self) -> int:
        """Side lengths (pixels) must be multiples of this."""
        return self.token_patch

    def forward(self, latents: Tensor) -> Tensor:
        return self.decoder(self.post_quant_proj(latents))

    def decode(self, latents: Tensor, head: Head, **_: object) -> Tensor:
        """Head outputs (class logits for LULC) for quantised latents (deterministic)."""
        return self(latents)

    def generator_loss(self, latents: Tensor, head: Head, target: Tensor, valid: Tensor,
                       step: int) -> tuple[Tensor, dict[str, float], Tensor]:
        """Fine-tuning loss: the head's loss (cross-entropy for LULC, as TerraMind trained it)."""
        out = self(latents)
        loss = head.loss(out, target, valid)
        return loss, {"rec": float(loss.detach())}, out
