"""The baseline networks: MLP late fusion (unimodal with one modality) and a small U-Net, each with three heads
(per-cell segmentation logits, per-sample composition logits, per-sample regression), saved and loaded with
``save_pretrained`` / ``from_pretrained`` (``config.json`` + ``model.safetensors``) like every eo_models model.

Inputs are ``{modality: (B, C, G, G)}`` on the task grid and ``{modality: (B,) bool}`` availability; a missing
modality's input is zeroed here whatever it holds, and its flag is 0.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from eo_models.baselines.config import BaselineConfig
from eo_models.errors import CheckpointError, ConfigError


@dataclass
class BaselineOutput:
    """``seg (B, K, G, G)`` logits, ``composition (B, K)`` logits, ``height (B,)`` in target units,
    ``embedding (B, D)`` pooled features."""

    seg: Tensor
    composition: Tensor
    height: Tensor
    embedding: Tensor


def _encoder(kind: str, cin: int, dim: int) -> nn.Module:
    k, p = (3, 1) if kind == "conv" else (1, 0)
    return nn.Sequential(nn.Conv2d(cin, dim, k, padding=p), nn.GELU(), nn.Conv2d(dim, dim, k, padding=p), nn.GELU())


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU())


class BaselineModel(nn.Module, PyTorchModelHubMixin, library_name="eo-models",
                    tags=["earth-observation", "4m4eo", "baseline"]):
    """A supervised baseline (see :mod:`eo_models.baselines.config` for the kinds).

    Args:
        config: A :class:`BaselineConfig` or its dict.
    """

    def __init__(self, config: dict[str, Any] | BaselineConfig) -> None:
        super().__init__()
        self.cfg = BaselineConfig.from_dict(config)
        cfg = self.cfg
        if not cfg.modalities or len(cfg.modalities) != len(cfg.channels):
            raise ConfigError(f"baseline config: modalities {list(cfg.modalities)} and channels {list(cfg.channels)}"
                              " must be given, one channel count per modality")
        m, d, h, k = len(cfg.modalities), cfg.dim, cfg.head_dim, cfg.classes
        if cfg.kind == "late":
            self.encoders = nn.ModuleDict({name: _encoder(cfg.encoder, c, d)
                                           for name, c in zip(cfg.modalities, cfg.channels, strict=True)})
            width = m * d + m
            self.seg_head = nn.Sequential(nn.Conv2d(width, h, 1), nn.GELU(), nn.Conv2d(h, k, 1))
        else:
            cin = sum(cfg.channels) + m
            self.down1, self.down2, self.mid = _block(cin, d), _block(d, 2 * d), _block(2 * d, 4 * d)
            self.up2, self.up1 = _block(6 * d, 2 * d), _block(3 * d, d)
            self.seg_head = nn.Conv2d(d, k, 1)
            width = 4 * d
        self.pool_head = nn.Sequential(nn.Linear(width, h), nn.GELU(), nn.Linear(h, k + 1))
        self.embedding_dim = width

    def flags(self, available: Mapping[str, Tensor], batch: int, device: torch.device) -> Tensor:
        """``(B, M)`` float availability flags in the model's modality order (absent keys: missing)."""
        cols = [available[n].to(device=device, dtype=torch.float32) if n in available
                else torch.zeros(batch, device=device) for n in self.cfg.modalities]
        return torch.stack(cols, 1)

    def forward(self, inputs: Mapping[str, Tensor], available: Mapping[str, Tensor]) -> BaselineOutput:
        """Predictions from ``inputs`` (modalities the model does not know are ignored; missing ones zero-filled)."""
        first = next(iter(inputs.values()))
        b, g = first.shape[0], first.shape[-1]
        flags = self.flags(available, b, first.device)
        xs = []
        for i, name in enumerate(self.cfg.modalities):
            x = inputs.get(name)
            if x is None:
                x = torch.zeros(b, self.cfg.channels[i], g, g, device=first.device)
            xs.append(x.float() * flags[:, i, None, None, None])
        grid_flags = flags[:, :, None, None].expand(-1, -1, g, g)
        if self.cfg.kind == "late":
            feats = [enc(x) * flags[:, i, None, None, None] for i, (enc, x) in enumerate(zip(self.encoders.values(),
                                                                                          xs, strict=True))]
            fused = torch.cat([*feats, grid_flags], 1)
            seg = self.seg_head(fused)
            pooled = fused.mean((2, 3))
        else:
            x = torch.cat([*xs, grid_flags], 1)
            s1 = self.down1(x)
            s2 = self.down2(F.max_pool2d(s1, 2, ceil_mode=True))
            mid = self.mid(F.max_pool2d(s2, 2, ceil_mode=True))
            u2 = self.up2(torch.cat([F.interpolate(mid, size=s2.shape[-2:], mode="nearest"), s2], 1))
            u1 = self.up1(torch.cat([F.interpolate(u2, size=s1.shape[-2:], mode="nearest"), s1], 1))
            seg = self.seg_head(u1)
            pooled = mid.mean((2, 3))
        out = self.pool_head(pooled)
        height = out[:, -1] * self.cfg.height_std + self.cfg.height_mean
        return BaselineOutput(seg=seg, composition=out[:, :-1], height=height, embedding=pooled)


def load_baseline(model: BaselineModel | str | os.PathLike[str]) -> BaselineModel:
    """A baseline object as it is, or loaded from a folder written by ``save_pretrained``.

    Raises:
        CheckpointError: it cannot be loaded.
    """
    if isinstance(model, BaselineModel):
        return model
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local ..."
            return BaselineModel.from_pretrained(os.fspath(model))
    except Exception as exc:  # huggingface_hub, safetensors and torch raise many types
        raise CheckpointError(f"cannot load the baseline model {os.fspath(model)!r} ({type(exc).__name__}); train it "
                              "again (eo-models experiment fusion-vs-late reruns what is missing)") from exc
