"""Modality heads: stored values -> encoder input and training target; decoder output -> loss and predictions.

One :class:`Head` per modality kind, all driven by the tokenizer's :class:`~eo_models.config.ModalityConfig`:

- ``continuous`` (S2, Landsat, S1 in dB, DEM, canopy height): ``(transform(x) - mean) / std`` per band in, the same
  out; masked L1 loss over valid pixels.
- ``categorical`` (land cover): stored class ids -> an embedding in; one logit per class out; cross-entropy over
  valid pixels (never a regression on class ids).
- ``multilabel`` (OSM layers): 0/1 per band in; one logit per band out; masked binary cross-entropy.

Every head also maps targets and outputs to a common "signal" space in about [-1, 1] (normalised values, one-hot
or 0/1 scaled to +-1) where the discriminator and the diffusion decoder work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from eo_models.config import ModalityConfig
from eo_models.modality import to_db

IGNORE = -100


def _masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``(B, H, W)`` values over valid pixels (0 when none is valid, still differentiable)."""
    w = valid.to(per_pixel.dtype)
    return (per_pixel * w).sum() / w.sum().clamp(min=1.0)


class Head(nn.Module):
    """Base: see the module docstring. ``in_channels`` feed the encoder; ``out_channels`` leave the decoder."""

    in_channels: int
    out_channels: int

    def __init__(self, modality: ModalityConfig) -> None:
        super().__init__()
        self.modality = modality

    def inputs(self, x: Tensor, valid: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def target(self, x: Tensor, valid: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, out: Tensor, target: Tensor, valid: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def signal(self, target: Tensor, valid: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_signal(self, out: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, out: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ContinuousHead(Head):
    """Normalised bands in and out; masked L1."""

    def __init__(self, modality: ModalityConfig) -> None:
        super().__init__(modality)
        self.in_channels = self.out_channels = len(modality.bands)
        self.register_buffer("mean", torch.tensor(modality.mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(modality.std, dtype=torch.float32).view(-1, 1, 1))

    def _units(self, x: Tensor) -> Tensor:
        return to_db(x) if self.modality.transform == "db" else x.float()

    def target(self, x: Tensor, valid: Tensor) -> Tensor:
        """Normalised values, 0 where not valid (NaN fill values included)."""
        z = (self._units(x) - self.mean) / self.std
        return torch.where(valid.unsqueeze(1), z, torch.zeros((), device=z.device))

    def inputs(self, x: Tensor, valid: Tensor) -> Tensor:
        return self.target(x, valid)

    def loss(self, out: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return _masked_mean((out.float() - target).abs().mean(1), valid)

    def signal(self, target: Tensor, valid: Tensor) -> Tensor:
        return target

    def to_signal(self, out: Tensor) -> Tensor:
        return out

    def predict(self, out: Tensor) -> Tensor:
        """Back to the modality's units (stored units, or dB for ``transform: db``)."""
        return out.float() * self.std + self.mean


class CategoricalHead(Head):
    """Class ids -> embedding in (``embed_dim`` wide: ``modality.embed_dim`` unless given); logits out;
    cross-entropy."""

    def __init__(self, modality: ModalityConfig, embed_dim: int | None = None) -> None:
        super().__init__(modality)
        embed_dim = embed_dim or modality.embed_dim
        k = len(modality.classes)
        self.in_channels, self.out_channels = embed_dim, k
        lut = torch.full((max(modality.classes) + 2,), k, dtype=torch.long)  # unknown ids -> "no data" (k)
        lut[torch.tensor(modality.classes)] = torch.arange(k)
        self.register_buffer("lut", lut)
        self.register_buffer("ids", torch.tensor(modality.classes, dtype=torch.long))
        self.embed = nn.Embedding(k + 1, embed_dim)

    def target(self, x: Tensor, valid: Tensor) -> Tensor:
        """Class indices ``(B, H, W)`` (0..K-1), ``IGNORE`` where not valid or not a known class."""
        ids = x[:, 0].long().clamp(0, len(self.lut) - 1)
        idx = self.lut[ids]
        return torch.where(valid & (idx < self.out_channels), idx, torch.full_like(idx, IGNORE))

    def inputs(self, x: Tensor, valid: Tensor) -> Tensor:
        t = self.target(x, valid)
        t = torch.where(t == IGNORE, torch.full_like(t, self.out_channels), t)
        return rearrange(self.embed(t), "b h w c -> b c h w")

    def loss(self, out: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        if bool((target != IGNORE).any()):
            return F.cross_entropy(out.float(), target, ignore_index=IGNORE)
        return out.sum() * 0.0

    def signal(self, target: Tensor, valid: Tensor) -> Tensor:
        onehot = F.one_hot(target.clamp(min=0), self.out_channels).float()
        onehot = rearrange(onehot, "b h w c -> b c h w") * 2 - 1
        return onehot * (target != IGNORE).unsqueeze(1)

    def to_signal(self, out: Tensor) -> Tensor:
        return out.float().softmax(1) * 2 - 1

    def predict(self, out: Tensor) -> Tensor:
        """Stored class ids ``(B, 1, H, W)``."""
        return self.ids[out.argmax(1)].unsqueeze(1)


class MultilabelHead(Head):
    """0/1 layers in; one logit per layer out; masked binary cross-entropy."""

    def __init__(self, modality: ModalityConfig) -> None:
        super().__init__(modality)
        self.in_channels = self.out_channels = len(modality.bands)

    def target(self, x: Tensor, valid: Tensor) -> Tensor:
        return (x > 0).float() * valid.unsqueeze(1)

    def inputs(self, x: Tensor, valid: Tensor) -> Tensor:
        return self.target(x, valid) * 2 - 1

    def loss(self, out: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(out.float(), target, reduction="none").mean(1)
        return _masked_mean(bce, valid)

    def signal(self, target: Tensor, valid: Tensor) -> Tensor:
        return (target * 2 - 1) * valid.unsqueeze(1)

    def to_signal(self, out: Tensor) -> Tensor:
        return out.float().sigmoid() * 2 - 1

    def predict(self, out: Tensor) -> Tensor:
        """0/1 per layer (uint8)."""
        return (out > 0).to(torch.uint8)


def make_head(modality: ModalityConfig) -> Head:
    """The head for a modality's kind."""
    return {"continuous": ContinuousHead, "categorical": CategoricalHead,
            "multilabel": MultilabelHead}[modality.kind](modality)
