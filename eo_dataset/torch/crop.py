"""Crops that stay aligned across resolutions.

Every modality of a sample shares the sample's origin and nests exactly (264 px @ 10 m = 88 px @ 30 m). A crop is
given in pixels of the grid's base resolution; it is aligned at every resolution when its size and its offset are
whole numbers of pixels of the coarsest modality, i.e. multiples of ``step = lcm(resolution / base)`` base pixels
(3 for 10 m + 30 m). :func:`plan_crop` checks the size once; :func:`crop_offset` draws or centres an offset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from eo_dataset.errors import CubeError

CropMode = Literal["random", "center"]


@dataclass(frozen=True)
class CropPlan:
    """A validated crop: ``size`` base pixels, offsets on a lattice of ``step`` base pixels.

    Attributes:
        size: Crop side in base pixels.
        patch: Sample side in base pixels.
        step: Offsets (and the size) are multiples of this many base pixels.
        mode: ``random`` (uniform over the lattice) or ``center`` (the lattice point nearest the centre).
        base_m: Base pixel size in metres.
    """

    size: int
    patch: int
    step: int
    mode: CropMode
    base_m: float

    @property
    def max_offset(self) -> int:
        """Largest offset in base pixels."""
        return (self.patch - self.size) // self.step * self.step


def plan_crop(size: int, mode: str, patch: int, base_m: float, resolutions: Iterable[float]) -> CropPlan:
    """Validate a crop size against the sample size and the resolutions it must stay aligned at.

    Args:
        size: Crop side in pixels of the base resolution.
        mode: ``"random"`` or ``"center"``.
        patch: Sample side in base pixels (the grid's ``patch_px``).
        base_m: The base resolution in metres (the grid's ``pixel_size_m``).
        resolutions: Resolutions (metres) of the modalities read.

    Raises:
        CubeError: the size is not positive, larger than the sample, or not a whole number of pixels at one of the
            resolutions (the message lists sizes that work).
    """
    if mode not in ("random", "center"):
        raise CubeError(f"crop_mode must be 'random' or 'center', found {mode!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= patch:
        raise CubeError(f"crop must be an int in 1..{patch} (pixels at {base_m:g} m), found {size!r}")
    factors = {r: round(r / base_m) for r in resolutions}
    step = math.lcm(*factors.values()) if factors else 1
    if size % step:
        coarse = ", ".join(f"{r:g} m" for r, f in sorted(factors.items()) if size % f)
        ok = [s for s in range(step, patch + 1, step)]
        near = sorted(ok, key=lambda s: abs(s - size))[:2]
        raise CubeError(f"crop {size} px at {base_m:g} m is {size * base_m:g} m, not a whole number of pixels at "
                        f"{coarse}; use a multiple of {step} px (e.g. {' or '.join(map(str, sorted(near)))}) or "
                        "leave out the coarser modalities")
    return CropPlan(size, patch, step, mode, base_m)  # type: ignore[arg-type]


def crop_offset(plan: CropPlan, generator: torch.Generator | None = None) -> tuple[int, int]:
    """(row, col) offset of a crop in base pixels: random on the lattice, or the lattice point nearest the centre.

    Random offsets use torch's generator (the global one by default), so ``torch.manual_seed`` and the DataLoader's
    per-worker seeding make them reproducible.
    """
    n = plan.max_offset // plan.step
    if plan.mode == "center":
        k = min(round((plan.patch - plan.size) / 2 / plan.step), n)
        return k * plan.step, k * plan.step
    r, c = torch.randint(0, n + 1, (2,), generator=generator).tolist()
    return r * plan.step, c * plan.step
