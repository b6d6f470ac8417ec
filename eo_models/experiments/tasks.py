"""Downstream tasks read from a cube, with their labels never among the inputs.

:func:`load_tasks` reads a cube once into memory at a coarse *task grid* (``grid`` x ``grid`` cells over each
sample's footprint) and returns a :class:`TaskData`:

- **inputs**: every input modality area-averaged onto the task grid over its valid pixels (continuous modalities in
  their model units, dB for ``transform: db``, standardised per band over the available samples; multilabel layers
  as the fraction of the cell covered; categorical inputs as class fractions), zero where a modality is missing, and
  its availability per sample;
- **segmentation**: the label modality's majority class in each cell (``-1`` where less than half the cell is
  valid), as class indices into ``seg_classes``;
- **composition**: multi-label per sample: a class is present when it covers at least ``presence`` of the sample's
  valid label pixels;
- **regression**: the mean of the regression modality's first band over its valid pixels, per sample (``nan``
  where it has none).

Which modality is which label comes from the caller (the experiment config), never from a name in code; the
label modalities are removed from the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from eo_models.cube import cube_meta, open_cube
from eo_models.errors import ConfigError
from eo_models.modality import to_db

IMAGE_KINDS = ("continuous", "categorical", "multilabel")


@dataclass
class TaskData:
    """A cube's samples as in-memory arrays on the task grid (see the module docstring).

    Attributes:
        sample_ids: ``(N,)`` sample ids.
        inputs: ``{modality: (N, C, G, G) float32}``, zero where missing.
        available: ``{modality: (N,) bool}``.
        channels: ``{modality: channel names}``.
        seg: ``(N, G, G) int64`` class index, ``-1`` where unknown (or no label at all).
        seg_classes: Class names of the segmentation label, in index order.
        composition: ``(N, K) float32`` multi-hot; ``has_labels`` tells which samples have them.
        has_labels: ``(N,) bool``: the segmentation label modality is available.
        height: ``(N,) float32`` mean of the regression modality (``nan`` where missing).
        grid: Cells per side of the task grid.
        label: The segmentation/composition label modality; ``target``: the regression one.
    """

    sample_ids: np.ndarray
    inputs: dict[str, np.ndarray]
    available: dict[str, np.ndarray]
    channels: dict[str, list[str]]
    seg: np.ndarray
    seg_classes: list[str]
    composition: np.ndarray
    has_labels: np.ndarray
    height: np.ndarray
    grid: int
    label: str
    target: str
    units: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """The input modalities, in cube order."""
        return list(self.inputs)

    def __len__(self) -> int:
        return len(self.sample_ids)


def _pool(x: np.ndarray, valid: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``x (n, C, H, W)`` over the valid pixels of each of ``grid`` x ``grid`` cells, and the valid
    fraction ``(n, G, G)``."""
    n, c, h, w = x.shape
    if h % grid or w % grid:
        raise ConfigError(f"a {h} x {w} px modality does not split into a {grid} x {grid} task grid; choose a grid "
                          "that divides every modality's side (e.g. 22 or 44 for 264 px samples)")
    fy, fx = h // grid, w // grid
    v = valid.reshape(n, 1, grid, fy, grid, fx).astype(np.float32)
    s = (np.where(valid[:, None], x, 0).reshape(n, c, grid, fy, grid, fx) * v).sum((3, 5))
    cnt = v.sum((3, 5))
    return s / np.maximum(cnt, 1), cnt[:, 0] / (fy * fx)


def load_tasks(cube: str | os.PathLike[str], *, label: str, target: str, inputs: Sequence[str] | None = None,
               grid: int = 22, presence: float = 0.05, block: int = 64) -> TaskData:
    """Read ``cube`` into a :class:`TaskData` (see the module docstring).

    Args:
        cube: An eo-dataset cube.
        label: The categorical modality whose classes are the segmentation and composition labels.
        target: The continuous modality whose per-sample mean is the regression target.
        inputs: Input modalities (default: every image modality of the cube except ``label`` and ``target``).
        grid: Task-grid cells per sample side; must divide every modality's side in pixels.
        presence: Fraction of a sample's valid label pixels a class must cover to be present (composition).
        block: Samples read at a time.

    Raises:
        ConfigError: an unknown modality, a label among the inputs, a label of the wrong kind, a grid that does not fit.
    """
    with open_cube(cube) as ds:
        meta = cube_meta(ds, cube)
        mods = meta.modalities
        for what, name, kind in (("label", label, "categorical"), ("target", target, "continuous")):
            if name not in mods or name not in ds.data_vars:
                raise ConfigError(f"the {what} modality {name!r} is not in the cube {os.fspath(cube)}; it has "
                                  f"{sorted(mods)}")
            if mods[name].kind != kind:
                raise ConfigError(f"the {what} modality {name!r} is {mods[name].kind}, expected a {kind} one")
        image = [m for m in mods if mods[m].kind in IMAGE_KINDS and m in ds.data_vars]
        names = [m for m in image if m not in (label, target)] if inputs is None else list(inputs)
        leak = sorted(set(names) & {label, target})
        if leak:
            raise ConfigError(f"{leak} are labels of the tasks and cannot be inputs; remove them from the inputs")
        unknown = sorted(set(names) - set(image))
        if unknown or not names:
            raise ConfigError(f"input modalities {names}: expected some of the cube's image modalities {image}")
        n = ds.sizes["sample"]
        out = TaskData(sample_ids=np.asarray([str(s) for s in ds["sample_id"].values]), inputs={}, available={},
                       channels={}, seg=np.full((n, grid, grid), -1, np.int64), seg_classes=[],
                       composition=np.zeros((0,), np.float32), has_labels=np.zeros(n, bool),
                       height=np.full(n, np.nan, np.float32), grid=grid, label=label, target=target,
                       units=mods[target].units or "",
                       extra={"cube": os.fspath(cube), "recipe_hash": meta.recipe_hash})
        for m in names:
            out.inputs[m], out.available[m], out.channels[m] = _read_input(ds, mods[m], grid, block)
        classes = list(mods[label].class_table)
        out.seg_classes = [str(mods[label].class_table[c]) for c in classes]
        lut = np.full(max(int(c) for c in classes) + 1, -1, np.int64)
        lut[[int(c) for c in classes]] = np.arange(len(classes))
        out.composition = np.zeros((n, len(classes)), np.float32)
        avail = np.asarray(ds[f"{label}_available"].values, bool)
        out.has_labels = avail.copy()
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            if not avail[lo:hi].any():
                continue
            raw = np.asarray(ds[label].isel(sample=slice(lo, hi)).values)[:, 0].astype(np.int64)
            valid = np.asarray(ds[f"{label}_valid"].isel(sample=slice(lo, hi)).values, bool) & avail[lo:hi, None, None]
            idx = np.where(valid & (raw >= 0) & (raw < len(lut)), lut[np.clip(raw, 0, len(lut) - 1)], -1)
            onehot = (idx[:, None] == np.arange(len(classes))[None, :, None, None]).astype(np.float32)
            frac, vfrac = _pool(onehot, idx >= 0, grid)
            seg = frac.argmax(1)
            out.seg[lo:hi] = np.where(vfrac >= 0.5, seg, -1)
            counts = onehot.sum((2, 3))
            out.composition[lo:hi] = counts / np.maximum(counts.sum(1, keepdims=True), 1) >= presence
            out.has_labels[lo:hi] &= counts.sum(1) > 0
        tavail = np.asarray(ds[f"{target}_available"].values, bool)
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            if not tavail[lo:hi].any():
                continue
            raw = np.asarray(ds[target].isel(sample=slice(lo, hi)).values)[:, 0].astype(np.float64)
            valid = np.asarray(ds[f"{target}_valid"].isel(sample=slice(lo, hi)).values, bool)
            valid &= tavail[lo:hi, None, None]
            if mods[target].nodata is not None:
                valid &= raw != mods[target].nodata
            phys = raw * (mods[target].scale or 1.0) + (mods[target].offset or 0.0)
            cnt = valid.sum((1, 2))
            mean = np.where(valid, phys, 0).sum((1, 2)) / np.maximum(cnt, 1)
            out.height[lo:hi] = np.where(cnt > 0, mean, np.nan)
    return out


def _read_input(ds, meta, grid: int, block: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One input modality on the task grid (standardised), its availability and channel names."""
    name = meta.name
    n = ds.sizes["sample"]
    avail = np.asarray(ds[f"{name}_available"].values, bool)
    if meta.kind == "categorical":
        classes = [int(c) for c in meta.class_table]
        channels = [str(v) for v in meta.class_table.values()]
    else:
        channels = [str(b) for b in meta.bands]
    x = np.zeros((n, len(channels), grid, grid), np.float32)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        if not avail[lo:hi].any():
            continue
        raw = np.asarray(ds[name].isel(sample=slice(lo, hi)).values)
        valid = np.asarray(ds[f"{name}_valid"].isel(sample=slice(lo, hi)).values, bool) & avail[lo:hi, None, None]
        if meta.kind == "categorical":
            v = (raw[:, 0:1] == np.asarray(classes)[None, :, None, None]).astype(np.float32)
        elif meta.kind == "multilabel":
            if meta.nodata is not None:
                valid &= (raw != meta.nodata).all(1)
            v = (raw > 0).astype(np.float32)
        else:
            v = raw.astype(np.float64)
            if meta.nodata is not None:
                valid &= (raw != meta.nodata).all(1)
            v = v * (meta.scale or 1.0) + (meta.offset or 0.0)
            if meta.transform == "db":
                v = to_db(v)
            v = v.astype(np.float32)
        pooled, _ = _pool(v, valid, grid)
        x[lo:hi] = pooled
    if meta.kind == "continuous" and avail.any():  # standardise per band over the available samples
        sel = x[avail]
        mean = sel.mean((0, 2, 3), keepdims=True)
        std = sel.std((0, 2, 3), keepdims=True)
        x = np.where(avail[:, None, None, None], (x - mean) / np.where(std > 0, std, 1), 0).astype(np.float32)
    return x, avail, channels
