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


@torch.inference_mode()
def fusion_features(model: FusionModel, store: str | os.PathLike[str] | TokenDataset, modalities: Sequence[str],
                    grid: int, *, rows: Sequence[int] | np.ndarray | None = None, batch_size: int = 32) -> Features:
    """The fusion encoder's features of the samples ``rows`` of ``store`` (default: all, in store order) from
    ``modalities`` (see the module docstring); row ``i`` of the result is sample ``rows[i]``.

    Samples go through the encoder in batches of ``batch_size``, grouped by their number of tokens (so a batch
    pads little); every sample's features are those it gets alone, to float rounding."""
    ds = store if isinstance(store, TokenDataset) else TokenDataset(store)
    rows = np.arange(len(ds)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    names = [m for m in modalities if m in model.modalities]
    model = model.eval()
    dim = model.cfg.model.dim
    n = len(rows)
    pooled = np.zeros((n, dim), np.float32)
    cells = np.zeros((n, dim, grid, grid), np.float32)
    has = np.zeros(n, bool)
    if not names or not n:
        return Features(pooled, cells, has)
    images = [(m, model.cfg.modality(m).grid) for m in names if model.cfg.modality(m).kind == "image"]
    for at in _batches(ds, rows, names, model, batch_size):
        items = ds.__getitems__(rows[at].tolist())
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        e = model.embed(batch, names)
        b = len(at)
        total = torch.zeros(b, dim, grid, grid)
        count = torch.zeros(b, 1, 1, 1)
        for m, (ty, tx) in images:
            a = e.available[m]
            if not bool(a.any()):
                continue
            tok = e.tokens[m][a].float().reshape(-1, ty, tx, dim).permute(0, 3, 1, 2)
            total[a] += F.interpolate(tok, size=(grid, grid), mode="bilinear", align_corners=False)
            count[a] += 1
        any_ = torch.stack([e.available[m] for m in names]).any(0)
        cells[at] = (total / count.clamp(min=1)).numpy()
        pooled[at] = torch.where(any_[:, None], e.pooled.float(), 0).numpy()
        has[at] = any_.numpy()
    return Features(pooled, cells, has)


def _batches(ds: TokenDataset, rows: np.ndarray, names: Sequence[str], model: FusionModel,
             batch_size: int) -> list[np.ndarray]:
    """Positions into ``rows`` in batches of ``batch_size``, samples of similar token counts together (the encoder
    pads each batch to its longest sample); samples with none of ``names`` are left out (their features are 0)."""
    cols = [ds.modalities.index(m) for m in names if m in ds.modalities]
    tokens = np.asarray([model.cfg.modality(m).tokens for m in names if m in ds.modalities], np.int64)
    counts = ds.availability[rows][:, cols].astype(np.int64) @ tokens if cols else np.zeros(len(rows), np.int64)
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    return [order[lo:lo + batch_size] for lo in range(0, len(order), max(1, batch_size))]


def pixel_features(inputs: dict[str, np.ndarray], available: dict[str, np.ndarray], modalities: Sequence[str],
                   order: Sequence[str], *, rows: Sequence[int] | np.ndarray | None = None) -> Features:
    """Task-grid inputs of ``modalities`` (others zeroed) with availability flags, in the fixed channel ``order``, of
    the samples ``rows`` (default: all)."""
    sel = slice(None) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    parts, flags = [], []
    for m in order:
        on = available[m][sel] & (m in modalities)
        x = inputs[m][sel]
        parts.append(x * on[:, None, None, None])
        flags.append(np.broadcast_to(on[:, None, None, None].astype(np.float32), (len(on), 1, *x.shape[2:])))
    cells = np.concatenate([*parts, *flags], 1).astype(np.float32)
    has = np.zeros(len(cells), bool)
    for m in modalities:
        has |= available[m][sel]
    return Features(cells.mean((2, 3)), cells, has)
