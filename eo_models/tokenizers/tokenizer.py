"""A per-modality tokenizer: head -> encoder -> quantizer (tokens) -> decoder -> head.

Saved and loaded with ``huggingface_hub``'s :class:`~huggingface_hub.PyTorchModelHubMixin`: ``save_pretrained``
writes ``model.safetensors``, ``config.json`` (the whole :class:`~eo_models.config.TokenizerConfig`: modality,
bands, normalisation statistics, class table, architecture, training settings) and a model card;
``from_pretrained`` takes a local folder or a Hub repo id ``org/name`` (the Hub cache works offline with
``HF_HUB_OFFLINE=1``; which arguments are folders and which are repo ids: :mod:`eo_models.hub.resolve`);
``push_to_hub`` is the library's.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import Tensor, nn

from eo_models.config import DecoderConfig, QuantizerConfig, TokenizerConfig
from eo_models.errors import CheckpointError
from eo_models.hub.card import CardContent, build_card, render_card
from eo_models.hub.resolve import local_or_hub
from eo_models.tokenizers.encoder import make_encoder
from eo_models.tokenizers.heads import make_head
from eo_models.tokenizers.quantizers.base import Quantized, Quantizer


def make_quantizer(dim: int, config: QuantizerConfig) -> Quantizer:
    """The quantizer of ``config.type`` over ``dim``-dimensional latents."""
    if config.type == "sigmoid_fsq":
        from eo_models.tokenizers.quantizers.sigmoid_fsq import SigmoidFSQuantizer

        return SigmoidFSQuantizer(config.levels)
    if config.type == "fsq":
        from eo_models.tokenizers.quantizers.fsq import FSQuantizer

        return FSQuantizer(dim, config)
    from eo_models.tokenizers.quantizers.vq import VectorQuantizer

    return VectorQuantizer(dim, config)


def make_decoder(latent_dim: int, out_channels: int, patch: int, config: DecoderConfig) -> nn.Module:
    """The decoder of ``config.type``."""
    if config.type == "terramind_diffusion":
        from eo_models.tokenizers.decoders.terramind_diffusion import TerraMindDiffusionDecoder

        return TerraMindDiffusionDecoder(latent_dim, out_channels, patch, config)
    if config.type == "terramind_vit":
        from eo_models.tokenizers.decoders.terramind_vit import TerraMindViTDecoder

        return TerraMindViTDecoder(latent_dim, out_channels, patch, config)
    if config.type == "gan":
        from eo_models.tokenizers.decoders.gan import GANDecoder

        return GANDecoder(latent_dim, out_channels, patch, config)
    from eo_models.tokenizers.decoders.diffusion import DiffusionDecoder

    return DiffusionDecoder(latent_dim, out_channels, patch, config)


class Tokenizer(nn.Module, PyTorchModelHubMixin, library_name="eo-models",
                tags=["earth-observation", "tokenizer", "4m4eo"], docs_url="https://github.com/4m4eo/4m4eo"):
    """Turns an aligned patch of one modality into discrete tokens and back.

    Args:
        config: A :class:`TokenizerConfig` as a dict (``TokenizerConfig.to_dict()``; what ``config.json`` holds).

    Inputs are a modality's stored values ``(B, C, H, W)`` (as ``CubeDataset(..., normalize=False)`` returns them)
    and its valid mask ``(B, H, W)``; the head normalises with the statistics in the config.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = TokenizerConfig.from_dict(config)
        self.head = make_head(self.cfg.modality)
        self.encoder = make_encoder(self.head.in_channels, self.cfg.encoder)
        self.quantizer = make_quantizer(self.cfg.encoder.latent_dim, self.cfg.quantizer)
        self.decoder = make_decoder(self.cfg.encoder.latent_dim, self.head.out_channels, self.cfg.encoder.patch,
                                    self.cfg.decoder)

    # -- description -------------------------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        """The cube modality this tokenizer reads."""
        return self.cfg.modality.name

    @property
    def codebook_size(self) -> int:
        """Number of distinct tokens."""
        return self.quantizer.codebook_size

    @property
    def patch(self) -> int:
        """Pixels (of the modality) per token side."""
        return self.cfg.encoder.patch

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Tokenizer({c.modality.name}: {c.encoder.type} encoder, {c.quantizer.type} "
                f"({self.codebook_size} codes), {c.decoder.type} decoder, {self.patch} px per token)")

    # -- tokens ------------------------------------------------------------------------------------------------
    def encode(self, x: Tensor, valid: Tensor) -> Quantized:
        """Quantised latents, token ids ``(B, H / patch, W / patch)`` and the quantizer's auxiliary loss."""
        return self.quantizer(self.encoder(self.head.inputs(x, valid)))

    @torch.no_grad()
    def tokenize(self, x: Tensor, valid: Tensor) -> Tensor:
        """Token ids ``(B, H / patch, W / patch)`` (int64) of stored values and their valid mask (in eval mode:
        a VQ codebook is never updated by tokenizing)."""
        with self._evaluating():
            return self.encode(x, valid).indices

    @torch.no_grad()
    def detokenize(self, indices: Tensor, **decode_kwargs: Any) -> Tensor:
        """Decoder outputs (normalised values, class logits or layer logits) for token ids."""
        with self._evaluating():
            return self.decoder.decode(self.quantizer.decode_indices(indices), self.head, **decode_kwargs)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, valid: Tensor, **decode_kwargs: Any) -> Tensor:
        """Stored values -> tokens -> predictions in the modality's units (class ids for land cover, 0/1 for OSM)."""
        return self.head.predict(self.detokenize(self.tokenize(x, valid), **decode_kwargs))

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    # -- training ----------------------------------------------------------------------------------------------
    def training_loss(self, x: Tensor, valid: Tensor, step: int) -> tuple[Tensor, dict[str, float], Tensor, Tensor]:
        """Generator-side loss of one batch: ``(loss, logs, decoder output, target)``."""
        target = self.head.target(x, valid)
        q = self.encode(x, valid)
        loss, logs, out = self.decoder.generator_loss(q.latents, self.head, target, valid, step)
        logs["quant"] = float(q.loss.detach())
        return loss + q.loss, logs, out, target

    def generator_parameters(self) -> list[nn.Parameter]:
        """Everything but the GAN discriminator."""
        disc = {id(p) for p in getattr(self.decoder, "discriminator", nn.Module()).parameters()}
        return [p for p in self.parameters() if id(p) not in disc]

    # -- hub ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *args: Any,
                        **kwargs: Any) -> Tokenizer:
        """The library's ``from_pretrained``, after :func:`eo_models.hub.resolve.local_or_hub` has decided between a
        local folder and a Hub repo id: a path that is no folder raises :class:`CheckpointError` at once."""
        where = local_or_hub(pretrained_model_name_or_path)
        return super().from_pretrained(where, *args, **kwargs)

    def generate_model_card(self, *args: Any, metrics: dict[str, Any] | None = None, **kwargs: Any) -> ModelCard:
        """A model card stating modality, bands, normalisation, class table, training cube and metrics."""
        return build_card(card_content(self.cfg, metrics))


CARD_TITLE = "# 4M4EO tokenizer: "  #: the title of every model card :func:`model_card` writes


def is_model_card(text: str) -> bool:
    """True for a model card :func:`model_card` wrote (front matter naming eo-models, then its title), the only
    README.md ``eval-tokenizer`` replaces."""
    head, sep, body = text.removeprefix("---\n").partition("\n---\n")
    return (text.startswith("---\n") and bool(sep) and "library_name: eo-models" in head
            and body.lstrip("\n").startswith(CARD_TITLE))


def card_content(cfg: TokenizerConfig, metrics: dict[str, Any] | None = None) -> CardContent:
    """What a tokenizer's model card says: modality, bands, normalisation, class table, training cube, metrics."""
    m = cfg.modality
    q = cfg.quantizer
    codes = (f"VQ, {q.codebook_size} codes" if q.type == "vq"
             else f"{'FSQ' if q.type == 'fsq' else q.type} levels {list(q.levels)}")
    modality = [f"- kind: {m.kind}", f"- bands: {', '.join(m.bands)}",
                f"- units: {m.units or 'n/a'} (physical = stored x {m.scale:g} + {m.offset:g})"]
    if m.kind == "continuous":
        modality.append(f"- normalisation: (x{' in dB' if m.transform == 'db' else ''} - mean) / std per band, "
                        f"statistics from {m.stats_from or 'the training cube'}")
        modality += ["", "| band | mean | std |", "|---|---:|---:|"]
        modality += [f"| {b} | {mu:.6g} | {sd:.6g} |" for b, mu, sd in zip(m.bands, m.mean, m.std, strict=True)]
    if m.kind == "categorical":
        modality += ["", "| class id | name |", "|---:|---|"]
        modality += [f"| {i} | {n} |" for i, n in zip(m.classes, m.class_names, strict=True)]
    training = [f"- cube: {m.stats_from or 'n/a'}",
                f"- config: {cfg.name}, {cfg.train.steps} steps, batch {cfg.train.batch_size}, "
                f"crop {cfg.train.crop} px"]
    return CardContent(
        title=f"{CARD_TITLE}{m.name}",
        summary=(f"A {cfg.encoder.type} encoder, {codes}, and a {cfg.decoder.type} decoder; one token per "
                 f"{cfg.encoder.patch} x {cfg.encoder.patch} pixels at {m.resolution_m:g} m."),
        tags=("earth-observation", "tokenizer", "4m4eo", m.name, cfg.quantizer.type, cfg.decoder.type),
        sections=(("Modality", tuple(modality)), ("Training", tuple(training))), metrics=metrics,
        recipe_hash=recipe_hash_of(m.stats_from),
        usage=("from eo_models.tokenizers import Tokenizer",
               "tok = Tokenizer.from_pretrained(\"<this repo or folder>\")",
               "tokens = tok.tokenize(x, valid)  # stored values (B, C, H, W), valid mask (B, H, W)",
               "recon = tok.reconstruct(x, valid)"))


def recipe_hash_of(stats_from: str) -> str | None:
    """The training cube's recipe hash in a modality's ``stats_from`` (``"<cube> (<recipe hash>)"``), if any."""
    found = re.fullmatch(r".* \(([^()\s]+)\)", stats_from)
    return found.group(1) if found and found.group(1) != "?" else None


def model_card(cfg: TokenizerConfig, metrics: dict[str, Any] | None = None) -> str:
    """The markdown of a tokenizer's model card (:func:`card_content` rendered by :mod:`eo_models.hub.card`)."""
    return render_card(card_content(cfg, metrics))


def load_tokenizer(tokenizer: Tokenizer | str | os.PathLike[str]) -> Tokenizer:
    """A :class:`Tokenizer` as is, or loaded with ``Tokenizer.from_pretrained`` (a folder or a Hub repo id).

    Raises:
        CheckpointError: it cannot be loaded.
    """
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    where = os.fspath(tokenizer)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local ..."
            return Tokenizer.from_pretrained(tokenizer)
    except CheckpointError:
        raise
    except Exception as exc:  # huggingface_hub and safetensors raise many types
        raise CheckpointError(f"cannot load tokenizer {where!r} ({type(exc).__name__}: {exc}); pass a folder written "
                              "by train-tokenizer (save_pretrained) or a Hub repo id (offline: one in the local Hub "
                              "cache, HF_HUB_OFFLINE=1)") from exc
