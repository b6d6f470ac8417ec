"""Decoders from token latents to pixels: a GAN decoder (``gan``) and a diffusion decoder (``diffusion``)."""
