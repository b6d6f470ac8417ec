"""TerraMind-1.0's diffusion decoder network: a patched UNet (the guided-diffusion UNet of Dhariwal & Nichol, as used
by 4M and TerraMind; https://arxiv.org/abs/2207.04316 for the patching). The noisy image is folded into ``patch`` x
``patch`` pixel blocks (channels x patch^2), the quantised latents are upsampled (nearest) to that grid and
concatenated, the UNet runs there, and the output is unfolded back to pixels. It predicts the clean sample.

Module and parameter names follow TerraMind's state dicts (``decoder.*``), so its ``.pt`` files load with
``load_state_dict`` and no renaming. Ported from terratorch (Apache-2.0; guided-diffusion, MIT) and verified against
it by ``tests/eo_models/convert/``. Only what TerraMind's tokenizers use is kept: 2-D, no class conditioning, no
scale-shift norm, learned up/down-sampling convolutions, one-head legacy-order attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embeddings ``(N, dim)`` of (possibly fractional) timesteps, cosines first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """norm -> SiLU -> conv, plus the timestep embedding, norm -> SiLU -> conv; a 1 x 1 skip when widths differ."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out))
        self.out_layers = nn.Sequential(GroupNorm32(out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).type(x.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Single-head self-attention over all positions (guided-diffusion's legacy QKV order)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, -1)
        q, k, v = self.qkv(self.norm(flat)).split(c, dim=1)
        scale = 1 / math.sqrt(math.sqrt(c))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).float().softmax(dim=-1).type(q.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v)
        return (flat + self.proj_out(a)).reshape(b, c, h, w)


class Upsample(nn.Module):
    """Nearest x2, then a 3 x 3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """A strided 3 x 3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Sequence(nn.Sequential):
    """Layers applied in turn; residual blocks also get the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class PatchedUNet(nn.Module):
    """The decoder network: ``forward(noisy (B, C, H, W), timestep, latents (B, D, h, w)) -> clean (B, C, H, W)``.

    Args:
        channels: Image channels (in and out).
        cond_channels: Latent channels (TerraMind: 5).
        patch: Pixels per side folded into one UNet position (TerraMind: 4).
        model_channels: Base width (TerraMind: 256; a multiple of 32).
        channel_mult: Width multiplier per level (TerraMind: 1, 2, 2, 2).
        num_res_blocks: Residual blocks per level (TerraMind: 3).
        attention_resolutions: Downsampling factors with self-attention (TerraMind: 4, 8).
    """

    def __init__(self, channels: int, cond_channels: int, patch: int = 4, model_channels: int = 256,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 3,
                 attention_resolutions: tuple[int, ...] = (4, 8)) -> None:
        super().__init__()
        self.channels, self.patch, self.model_channels = channels, patch, model_channels
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList([Sequence(nn.Conv2d(channels * patch * patch + cond_channels, ch, 3,
                                                              padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch))
                self.input_blocks.append(Sequence(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Sequence(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = Sequence(ResBlock(ch, emb), AttentionBlock(ch), ResBlock(ch, emb))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Sequence(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(model_channels * channel_mult[0], channels * patch * patch, 3, padding=1))

    def forward(self, sample: Tensor, timestep: Tensor | int, latents: Tensor) -> Tensor:
        p = self.patch
        h, w = sample.shape[-2] // p, sample.shape[-1] // p
        x = rearrange(sample, "b c (nh ph) (nw pw) -> b (c ph pw) nh nw", ph=p, pw=p)
        x = torch.cat([x, F.interpolate(latents, (h, w), mode="nearest")], dim=1)
        t = torch.as_tensor(timestep, device=x.device).reshape(-1)  # one timestep for all, or one per sample
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        hs = []
        for block in self.input_blocks:
            x = block(x, emb)
            hs.append(x)
        x = self.middle_block(x, emb)
        for block in self.output_blocks:
            x = block(torch.cat([x, hs.pop()], dim=1), emb)
        return rearrange(self.out(x), "b (c ph pw) nh nw -> b c (nh ph) (nw pw)", ph=p, pw=p)
