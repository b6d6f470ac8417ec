"""Quantizers of a tokenizer's latents: vector quantization (``vq``) and finite scalar quantization (``fsq``)."""
