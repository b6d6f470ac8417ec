"""Encoders: a patch of a modality -> one latent vector per ``patch`` x ``patch`` pixels, ``(B, D, h, w)``."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from eo_models.config import EncoderConfig
from eo_models.tokenizers.layers import ResBlock, norm


class ConvEncoder(nn.Module):
    """A residual CNN halving the resolution ``log2(patch)`` times (tiny configs, CPU)."""

    def __init__(self, in_channels: int, config: EncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, config.dim, 3, padding=1)]
        for _ in range(int(math.log2(config.patch))):
            layers += [ResBlock(config.dim, config.dim), nn.Conv2d(config.dim, config.dim, 4, stride=2, padding=1)]
        layers += [ResBlock(config.dim, config.dim), norm(config.dim), nn.SiLU(),
                   nn.Conv2d(config.dim, config.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def sincos_2d(h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``(h*w, dim)`` (MAE/ViT style), for any grid size."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = [f(c.reshape(-1, 1) * omega) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    pe = torch.cat(parts, dim=1)
    return nn.functional.pad(pe, (0, dim - pe.shape[1]))


class ViTEncoder(nn.Module):
    """A ViT over ``patch`` x ``patch`` patches (the TerraMind tokenizer encoder: ViT-B, 16 x 16 patches)."""

    def __init__(self, in_channels: int, config: EncoderConfig) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, config.dim, config.patch, stride=config.patch)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, 4 * config.dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.out = nn.Linear(config.dim, config.latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x)
        h, w = t.shape[-2:]
        t = rearrange(t, "b d h w -> b (h w) d")
        t = self.blocks(t + sincos_2d(h, w, t.shape[-1], t.device))
        return rearrange(self.out(self.norm(t)), "b (h w) d -> b d h w", h=h)


def make_encoder(in_channels: int, config: EncoderConfig) -> nn.Module:
    """The encoder of ``config.type``."""
    if config.type == "terramind_vit":
        from eo_models.tokenizers.terramind_encoder import TerraMindEncoder

        return TerraMindEncoder(in_channels, config)
    return {"conv": ConvEncoder, "vit": ViTEncoder}[config.type](in_channels, config)
