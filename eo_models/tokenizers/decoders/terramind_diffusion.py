"""TerraMind-1.0's diffusion decoder: :class:`~.terramind_unet.PatchedUNet` denoising in the head's signal space,
conditioned on the quantised latents; it predicts the clean sample. Sampling is DDIM (diffusers' scheduler) with
TerraMind's settings: 1000 training steps, linear betas rescaled to zero terminal SNR, "trailing" timesteps, the
predicted sample clipped to [-1, 1] (dynamic thresholding with a maximum of 1), ``eta = 0``, timesteps
``999, 999 - 1000 // steps, ...`` down to 0 (TerraMind's own scheduler's "trailing" mode). The output is the last
DDIM step's sample, as in TerraMind's pipeline; the starting noise is ``torch.randn`` from a CPU generator seeded with
``seed``, so a seed gives TerraMind's output for the same seed.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch import Tensor, nn

from eo_models.config import DecoderConfig
from eo_models.errors import ConfigError
from eo_models.tokenizers.decoders.terramind_unet import PatchedUNet
from eo_models.tokenizers.heads import Head

TRAIN_TIMESTEPS = 1000
UNET_PATCH = 4  #: pixels a side folded into one UNet position
ATTENTION_AT = (4, 8)  #: UNet downsampling factors with self-attention


def scheduler() -> DDIMScheduler:
    """The DDIM scheduler with TerraMind's settings (see the module docstring)."""
    return DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear", prediction_type="sample",
                         clip_sample=True, thresholding=True, sample_max_value=1.0, rescale_betas_zero_snr=True,
                         timestep_spacing="trailing", set_alpha_to_one=True)


class TerraMindDiffusionDecoder(nn.Module):
    """Latents ``(B, D, h, w)`` -> head signal ``(B, C, h * token_patch, w * token_patch)`` by DDIM sampling.

    Args:
        latent_dim: Quantised latent channels.
        out_channels: Image channels.
        token_patch: Pixels per token side (the encoder's patch; 16 in TerraMind).
        config: ``unet_dims``: the UNet's width per level (TerraMind: 256, 512, 512, 512); ``layers_per_block``:
            residual blocks per level (TerraMind: 3); ``sample_steps``: DDIM steps when ``decode`` is not told.
            The UNet's pixel patch (4) and attention levels (4, 8) are TerraMind's.
    """

    def __init__(self, latent_dim: int, out_channels: int, token_patch: int, config: DecoderConfig) -> None:
        super().__init__()
        self.out_channels, self.token_patch, self.sample_steps = out_channels, token_patch, config.sample_steps
        base = config.unet_dims[0]
        if any(d % base for d in config.unet_dims) or base % 32:
            raise ConfigError(f"decoder.unet_dims must be multiples of their first entry, itself a multiple of 32 "
                              f"(TerraMind: [256, 512, 512, 512]), found {list(config.unet_dims)}")
        self.decoder = PatchedUNet(out_channels, latent_dim, patch=UNET_PATCH, model_channels=base,
                                   channel_mult=tuple(d // base for d in config.unet_dims),
                                   num_res_blocks=config.layers_per_block, attention_resolutions=ATTENTION_AT)

    @property
    def multiple(self) -> int:
        """Side lengths (pixels) must be multiples of this."""
        return self.token_patch

    def generator_loss(self, latents: Tensor, head: Head, target: Tensor, valid: Tensor,
                       step: int) -> tuple[Tensor, dict[str, float], Tensor]:
        """Fine-tuning loss: the head's loss on the clean sample predicted at a random timestep."""
        x0 = head.signal(target, valid)
        sched = scheduler()
        noise = torch.randn_like(x0)
        t = torch.randint(0, TRAIN_TIMESTEPS, (x0.shape[0],), device=x0.device)
        pred = self.decoder(sched.add_noise(x0, noise, t), t, latents)
        loss = head.loss(pred, target, valid)
        return loss, {"rec": float(loss.detach())}, pred

    @torch.no_grad()
    def decode(self, latents: Tensor, head: Head, steps: int | None = None, seed: int = 0) -> Tensor:
        """DDIM sampling from noise seeded with ``seed`` (the same latents and seed give the same output)."""
        sched = scheduler()
        steps = steps or self.sample_steps
        sched.set_timesteps(steps)
        # TerraMind's "trailing" timesteps use an integer stride (4 steps when 3 are asked for, 1000 // 3 apart);
        # diffusers' use a fractional one: the same whenever steps divides 1000 (TerraMind's 50 included)
        sched.timesteps = torch.arange(TRAIN_TIMESTEPS, 0, -(TRAIN_TIMESTEPS // steps)) - 1
        b, _, h, w = latents.shape
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((b, self.out_channels, h * self.token_patch, w * self.token_patch), generator=g)
        x = x.to(latents.device, latents.dtype)
        for t in sched.timesteps:
            out = self.decoder(x, t.to(latents.device), latents)
            x = sched.step(out.float(), t, x).prev_sample
        return x
