"""GAN decoder (VQGAN style): a CNN decoder trained with the modality head's loss, plus, after ``disc_start``
steps, a patch discriminator's hinge loss and a feature-matching loss on its intermediate features (a
perceptual-style loss that, unlike an ImageNet VGG, works for any number of bands and needs no download)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eo_models.config import DecoderConfig
from eo_models.tokenizers.heads import Head
from eo_models.tokenizers.layers import ResBlock, norm


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided convs, one real/fake logit per patch; returns the logits and the features on the way."""

    def __init__(self, channels: int, dim: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin = channels
        for k in range(layers):
            cout = dim * 2**k
            blocks.append(nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1),
                                        norm(cout) if k else nn.Identity(), nn.LeakyReLU(0.2)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.logits = nn.Conv2d(cin, 1, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.logits(x), features


class GANDecoder(nn.Module):
    """Latents ``(B, D, h, w)`` -> head outputs ``(B, C, h * patch, w * patch)``."""

    def __init__(self, latent_dim: int, out_channels: int, patch: int, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, d, 3, padding=1), ResBlock(d, d)]
        for _ in range(int(math.log2(patch))):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(d, d, 3, padding=1), ResBlock(d, d)]
        layers += [norm(d), nn.SiLU(), nn.Conv2d(d, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.discriminator = PatchDiscriminator(out_channels, config.disc_dim, config.disc_layers)

    def forward(self, latents: Tensor) -> Tensor:
        return self.net(latents)

    def decode(self, latents: Tensor, head: Head, **_: object) -> Tensor:
        """Head outputs for quantised latents (deterministic)."""
        return self(latents)

    def generator_loss(self, latents: Tensor, head: Head, target: Tensor, valid: Tensor,
                       step: int) -> tuple[Tensor, dict[str, float], Tensor]:
        """Reconstruction loss, plus adversarial and feature-matching losses once the discriminator is on."""
        out = self(latents)
        rec = head.loss(out, target, valid)
        logs = {"rec": float(rec.detach())}
        if step < self.config.disc_start:
            return rec, logs, out
        mask = valid.unsqueeze(1).to(out.dtype)
        fake_logits, fake_feats = self.discriminator(head.to_signal(out) * mask)
        with torch.no_grad():
            _, real_feats = self.discriminator(head.signal(target, valid) * mask)
        feat = sum(F.l1_loss(f, r) for f, r in zip(fake_feats, real_feats, strict=True)) / len(fake_feats)
        adv = -fake_logits.mean()
        logs.update(feat=float(feat.detach()), adv=float(adv.detach()))
        return rec + self.config.feature_weight * feat + self.config.disc_weight * adv, logs, out

    def discriminator_loss(self, out: Tensor, head: Head, target: Tensor, valid: Tensor) -> Tensor:
        """Hinge loss of the discriminator on real (target) and fake (decoded) patches."""
        mask = valid.unsqueeze(1).to(out.dtype)
        real_logits, _ = self.discriminator(head.signal(target, valid) * mask)
        fake_logits, _ = self.discriminator(head.to_signal(out.detach()) * mask)
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
