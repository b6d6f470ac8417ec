"""Fixed, seeded, spatially separated train/val/test splits: whole Major TOM cells per split, so neighbouring
sub-cells (which share edges and terrain) never fall on both sides.

A sample id is ``<cell>_<a>_<b>`` (the sub-cell in column ``a`` from the west and row ``b`` from the north, see
:mod:`eo_dataset.spec.grid`). ``unit="cell"`` (the default) keeps each cell whole; ``unit="quadrant"`` keeps each
2 x 2 block of sub-cells whole, for cubes of fewer than three cells (the 32-sample demo cube): quadrants of one cell
touch along their edges, so a quadrant split is weaker, and the results say which unit was used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eo_models.errors import ConfigError

UNITS = ("cell", "quadrant")


def group_of(sample_id: str, unit: str = "cell") -> str:
    """The split group of a sample id: its Major TOM cell, or its cell and 2 x 2 quadrant.

    Raises:
        ConfigError: the id is not ``<cell>_<a>_<b>``, or an unknown unit.
    """
    if unit not in UNITS:
        raise ConfigError(f"split unit {unit!r}: expected one of {list(UNITS)}")
    cell, _, rest = str(sample_id).rpartition("_")
    cell, _, col = cell.rpartition("_")
    if not cell or not col.isdigit() or not rest.isdigit():
        raise ConfigError(f"sample id {sample_id!r} is not <cell>_<a>_<b> (a Major TOM sub-cell id); spatial "
                          "splits need the cube's grid ids")
    return cell if unit == "cell" else f"{cell}_q{int(col) // 2}{int(rest) // 2}"


@dataclass(frozen=True)
class Split:
    """Sample indices of each part, and the groups in each."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    groups: dict[str, list[str]]
    unit: str
    seed: int


def split_samples(sample_ids: Sequence[str], *, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  seed: int = 0, unit: str = "cell") -> Split:
    """Assign whole groups (cells or quadrants) to train/val/test, seeded.

    Groups are shuffled with ``seed`` and dealt in order until each part holds its fraction of the samples; val and
    test get at least one group each.

    Raises:
        ConfigError: fewer than three groups (a cube of one or two cells: use ``unit="quadrant"`` or more cells).
    """
    ids = [str(s) for s in sample_ids]
    groups = np.asarray([group_of(s, unit) for s in ids])
    names = sorted(set(groups.tolist()))
    if len(names) < 3:
        raise ConfigError(f"{len(names)} {unit}(s) in the cube, need >= 3 for spatially separated train/val/test "
                          f"splits; use split unit 'quadrant' (--split-unit quadrant) or a cube of more cells")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    sizes = {g: int((groups == g).sum()) for g in names}
    total = len(ids)
    parts: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    want = {"test": fractions[2] * total, "val": fractions[1] * total}
    queue = list(order)
    for part in ("test", "val"):
        parts[part].append(queue.pop(0))
        while queue and sum(sizes[g] for g in parts[part]) + sizes[queue[0]] / 2 <= want[part] \
                and len(queue) > 1:
            parts[part].append(queue.pop(0))
    parts["train"] = queue
    index = {p: np.flatnonzero(np.isin(groups, gs)) for p, gs in parts.items()}
    return Split(index["train"], index["val"], index["test"], {p: sorted(g) for p, g in parts.items()}, unit, seed)


def label_fraction(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset of ``indices`` holding ``fraction`` of them (at least one), in the original order."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction {fraction}: expected 0 < fraction <= 1")
    k = max(1, int(round(len(indices) * fraction)))
    rng = np.random.default_rng([seed, int(fraction * 1000)])
    return np.sort(rng.choice(indices, size=k, replace=False)) if k < len(indices) else indices
