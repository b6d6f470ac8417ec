"""Fixed sin-cos positions of the fusion model's tokens.

Image tokens of every modality share one 2-D position space over the sample's footprint: the token at row ``i``,
column ``j`` of a ``(ty, tx)`` grid sits at the centre of its cell, ``((i + 0.5) / ty, (j + 0.5) / tx)`` of the
footprint, scaled by :data:`SCALE`. A token of a 33 x 33 grid (S2 at 10 m, patch 8) and one of an 11 x 11 grid
(Landsat at 30 m) over the same place get the same position. Sequence tokens (the caption) get 1-D positions by
their index.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Footprint side in position units: positions are fractions of the footprint times this (so the finest grids used,
#: up to ~64 tokens a side, are a unit or more apart, as for integer grid positions).
SCALE = 64.0
TEMPERATURE = 10000.0


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """``(N,) -> (N, dim)``: sines of ``dim / 2`` frequencies then cosines (``dim`` even)."""
    omega = 1.0 / TEMPERATURE ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def grid_positions(grid: tuple[int, int], dim: int) -> Tensor:
    """``(ty * tx, dim)`` positions of a token grid over the footprint, row-major; half the dimensions encode the
    row, half the column."""
    ty, tx = grid
    y = (torch.arange(ty, dtype=torch.float64) + 0.5) / ty * SCALE
    x = (torch.arange(tx, dtype=torch.float64) + 0.5) / tx * SCALE
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.cat([sincos_1d(yy.reshape(-1), dim // 2), sincos_1d(xx.reshape(-1), dim // 2)], dim=1)


def sequence_positions(length: int, dim: int) -> Tensor:
    """``(length, dim)`` positions of a token sequence."""
    return sincos_1d(torch.arange(length, dtype=torch.float64), dim)
