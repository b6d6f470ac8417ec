"""Diffusion decoder: a ``diffusers`` UNet denoises the modality (in the head's signal space) conditioned on the
quantised latents (projected and upsampled to full resolution, concatenated to the noisy input). DDPM training
over ``train_timesteps``; DDIM sampling in ``sample_steps`` steps. The UNet predicts the clean sample, which the
head's loss scores directly (cross-entropy for land cover, BCE for OSM, L1 for continuous bands)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from eo_models.config import DecoderConfig
from eo_models.tokenizers.heads import Head


class DiffusionDecoder(nn.Module):
    """Latents ``(B, D, h, w)`` -> head outputs ``(B, C, h * patch, w * patch)`` by iterative denoising."""

    def __init__(self, latent_dim: int, out_channels: int, patch: int, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.out_channels = out_channels
        self.patch = patch
        self.cond = nn.Sequential(nn.Conv2d(latent_dim, config.cond_dim, 1),
                                  nn.Upsample(scale_factor=patch, mode="nearest"))
        n = len(config.unet_dims)
        self.unet = UNet2DModel(in_channels=out_channels + config.cond_dim, out_channels=out_channels,
                                block_out_channels=tuple(config.unet_dims), layers_per_block=config.layers_per_block,
                                down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                                norm_num_groups=min(8, min(config.unet_dims)))
        self.schedule = DDPMScheduler(num_train_timesteps=config.train_timesteps, prediction_type="sample",
                                      clip_sample=False)

    @property
    def multiple(self) -> int:
        """Side lengths (pixels) must be multiples of this (the UNet halves the resolution n - 1 times)."""
        return 2 ** (len(self.config.unet_dims) - 1)

    def generator_loss(self, latents: Tensor, head: Head, target: Tensor, valid: Tensor,
                       step: int) -> tuple[Tensor, dict[str, float], Tensor]:
        """Denoising loss at a random timestep per sample, scored by the head on the predicted clean sample."""
        x0 = head.signal(target, valid)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.config.train_timesteps, (x0.shape[0],), device=x0.device)
        xt = self.schedule.add_noise(x0, noise, t)
        pred = self.unet(torch.cat([xt, self.cond(latents)], dim=1), t).sample
        loss = head.loss(pred, target, valid)
        return loss, {"rec": float(loss.detach())}, pred

    @torch.no_grad()
    def decode(self, latents: Tensor, head: Head, steps: int | None = None, seed: int = 0) -> Tensor:
        """DDIM sampling from seeded noise (the same latents and seed give the same output)."""
        sampler = DDIMScheduler(num_train_timesteps=self.config.train_timesteps, prediction_type="sample",
                                clip_sample=False, set_alpha_to_one=True)
        sampler.set_timesteps(steps or self.config.sample_steps)
        cond = self.cond(latents)
        b, _, h, w = cond.shape
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((b, self.out_channels, h, w), generator=g).to(latents.device, latents.dtype)
        out = x
        for t in sampler.timesteps:
            out = self.unet(torch.cat([x, cond], dim=1), t.to(latents.device)).sample
            x = sampler.step(head.to_signal(out), t, x).prev_sample
        return out
