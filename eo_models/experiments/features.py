"""Frozen-encoder features of every sample, with any subset of the input modalities.

- :func:`fusion_features`: the fusion encoder over the tokens of a token store (``eo-models tokenize``) of the chosen
  modalities: the pooled embedding ``(N, D)`` (mean over the tokens) and a per-cell map ``(N, D, G, G)`` on the task
  grid: each modality's per-token outputs on its token grid, resampled bilinearly onto the task grid (a token grid
  covers the tokenizer's centre crop, at most a few pixels smaller than the sample), averaged over the sample's
  available modalities. A sample without any of the modalities gets zeros (``has`` False).
- :func:`pixel_features`: the task-grid inputs themselves (zero-filled where missing, one availability flag per
  modality as a channel), the non-learned reference a probe must beat.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from eo_models.fusion.model import FusionModel
from eo_models.tokens.dataset import TokenDataset


@dataclass
class Features:
    """``pooled (N, D)``, ``grid (N, D, G, G)`` float32, ``has (N,)``: the sample had any of the modalities."""

    pooled: np.ndarray
    grid: np.ndarray
    has: np.ndarray


@torch.no_grad()
def fusion_features(model: FusionModel, store: str | os.PathLike[str] | TokenDataset, modalities: Sequence[str],
                    grid: int, *, batch_size: int = 32) -> Features:
    """The fusion encoder's features of every sample of ``store`` from ``modalities`` (see the module docstring)."""
    ds = store if isinstance(store, TokenDataset) else TokenDataset(store)
    names = [m for m in modalities if m in model.modalities]
    model = model.eval()
    dim = model.cfg.model.dim
    n = len(ds)
    pooled = np.zeros((n, dim), np.float32)
    cells = np.zeros((n, dim, grid, grid), np.float32)
    has = np.zeros(n, bool)
    if not names:
        return Features(pooled, cells, has)
    for lo in range(0, n, batch_size):
        rows = list(range(lo, min(n, lo + batch_size)))
        items = ds.__getitems__(rows)
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        e = model.embed(batch, names)
        total = torch.zeros(len(rows), dim, grid, grid)
        count = torch.zeros(len(rows), 1, 1, 1)
        for m in names:
            spec = model.cfg.modality(m)
            if spec.kind != "image":
                continue
            ty, tx = spec.grid
            tok = e.tokens[m].float().reshape(len(rows), ty, tx, dim).permute(0, 3, 1, 2)
            up = F.interpolate(tok, size=(grid, grid), mode="bilinear", align_corners=False)
            a = e.available[m].float()[:, None, None, None]
            total += up * a
            count += a
        any_ = torch.zeros(len(rows), dtype=torch.bool)
        for m in names:
            any_ |= e.available[m]
        cells[rows] = (total / count.clamp(min=1)).numpy()
        pooled[rows] = torch.where(any_[:, None], e.pooled.float(), 0).numpy()
        has[rows] = any_.numpy()
    return Features(pooled, cells, has)


def pixel_features(inputs: dict[str, np.ndarray], available: dict[str, np.ndarray], modalities: Sequence[str],
                   order: Sequence[str]) -> Features:
    """Task-grid inputs of ``modalities`` (others zeroed) with availability flags, in the fixed channel ``order``."""
    parts, flags = [], []
    for m in order:
        on = available[m] & (m in modalities)
        parts.append(inputs[m] * on[:, None, None, None])
        flags.append(np.broadcast_to(on[:, None, None, None].astype(np.float32), (len(on), 1, *inputs[m].shape[2:])))
    cells = np.concatenate([*parts, *flags], 1).astype(np.float32)
    has = np.zeros(len(cells), bool)
    for m in modalities:
        has |= available[m]
    return Features(cells.mean((2, 3)), cells, has)
