"""TerraMind-1.0's tokenizer encoder (IBM/ESA, Apache-2.0): a ViT over ``patch`` x ``patch`` patches with a fixed 2-D
sine-cosine position grid (stored with the weights, resized bicubically to the input's patch grid), pre-norm blocks,
a tanh post-MLP (ViT-VQGAN style) and a 1 x 1 projection to the quantizer's few dimensions.

Module and parameter names follow TerraMind's state dicts (``encoder.*``, ``quant_proj.*``), so its ``.pt`` files load
with ``load_state_dict`` and no renaming; the transformer blocks are timm's (same layout and names as TerraMind's).
Verified against terratorch's modules by ``tests/eo_models/convert/``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from eo_models.config import EncoderConfig

TRAIN_SIZE = 256  #: pixels a side of TerraMind's training images (its position grid is TRAIN_SIZE / patch a side)
HEAD_DIM = 64  #: channels per attention head in every TerraMind ViT


class TerraMindTrunk(nn.Module):
    """What TerraMind's ViT encoders and decoders share: a token grid ``(B, dim, h, w)`` plus the stored position
    grid (resized bicubically), pre-norm transformer blocks, then the tanh post-MLP -> tokens ``(B, h * w, dim)``.

    Args:
        dim: Token width (768 for TerraMind's ViT-B tokenizers).
        depth: Transformer blocks.
        heads: Attention heads.
        grid: Side of the stored position grid, in tokens (TerraMind: 256 px / 16 = 16).
        mlp_ratio: MLP width over ``dim``.
        post_mlp: Whether a tanh MLP (with its own LayerNorm) follows the blocks, as in every TerraMind tokenizer.
    """

    def __init__(self, dim: int, depth: int, heads: int, grid: int, mlp_ratio: float = 4.0,
                 post_mlp: bool = True) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.pos_emb = nn.Parameter(torch.zeros(1, dim, grid, grid), requires_grad=False)  # loaded with the weights
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                      for _ in range(depth)])
        if post_mlp:
            self.norm_mlp = norm(dim)
            self.post_mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.Tanh)

    def tokens(self, x: Tensor) -> Tensor:
        pos = F.interpolate(self.pos_emb, size=x.shape[-2:], mode="bicubic", align_corners=False)
        t = self.blocks(rearrange(x + pos, "b d h w -> b (h w) d"))
        if hasattr(self, "post_mlp"):
            t = t.float() + self.post_mlp(self.norm_mlp(t.float()))
        return t


class TerraMindViT(TerraMindTrunk):
    """The encoder's ViT: image ``(B, C, H, W)`` -> features ``(B, dim, H / patch, W / patch)``; ``in_channels``
    (bands, or classes of a one-hot input) in ``patch`` x ``patch`` pixel patches, the rest as
    :class:`TerraMindTrunk`."""

    def __init__(self, in_channels: int, dim: int, depth: int, heads: int, patch: int, grid: int,
                 mlp_ratio: float = 4.0, post_mlp: bool = True) -> None:
        super().__init__(dim, depth, heads, grid, mlp_ratio, post_mlp)
        self.in_channels = in_channels
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        grid = self.proj(x)
        return rearrange(self.tokens(grid), "b (h w) d -> b d h w", h=grid.shape[-2])


class TerraMindEncoder(nn.Module):
    """:class:`TerraMindViT` then the 1 x 1 ``quant_proj`` to ``config.latent_dim`` (5 in TerraMind-1.0): image ->
    pre-quantisation latents ``(B, latent_dim, H / patch, W / patch)``. The stored position grid is that of
    TerraMind's 256 px training images (``256 / patch`` tokens a side); any multiple of ``patch`` is accepted.
    """

    def __init__(self, in_channels: int, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = TerraMindViT(in_channels, config.dim, config.depth, config.heads, config.patch,
                                    TRAIN_SIZE // config.patch)
        self.quant_proj = nn.Conv2d(config.dim, config.latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.quant_proj(self.encoder(x))
