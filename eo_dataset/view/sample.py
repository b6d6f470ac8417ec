"""One sample of a cube in one figure: a panel per modality, drawn by its display spec (:mod:`.quicklook`), the
reason recorded in the build manifest for each modality the sample lacks, and its caption (``eo-dataset show``).

Needs matplotlib (``pip install 'eo-dataset[docs]'``).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from eo_dataset._version import __version__
from eo_dataset.cube.manifest import MANIFEST_DIR, read_manifest
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.errors import CubeError
from eo_dataset.outputs import check_output_file
from eo_dataset.view.quicklook import draw

PANEL_IN = 4.2  # inches per panel
COLUMNS = 4
SOFTWARE = f"eo-dataset show {__version__}"  #: the PNG's Software text: marks a figure written by `show`
WHAT = "figure written by eo-dataset show"


def sample_figure(ds: xr.Dataset, meta: CubeMeta, sample_id: str, modalities: Sequence[str] | None = None,
                  reasons: dict[str, str] | None = None) -> Any:
    """A matplotlib ``Figure`` of one sample: a panel per modality (in cube order), then the caption.

    Args:
        ds: The cube (``xr.open_zarr``).
        meta: Its metadata.
        sample_id: Which sample.
        modalities: Which modalities (default: all).
        reasons: Why a modality is missing, per modality (from the build manifest), shown in its panel.

    Raises:
        CubeError: no such sample or modality.
    """
    from matplotlib.figure import Figure

    ids = np.array([str(i) for i in ds["sample_id"].values])
    where = np.flatnonzero(ids == sample_id)
    if not where.size:
        raise CubeError(f"no sample {sample_id!r} in the cube; it has {len(ids)} samples, e.g. {', '.join(ids[:3])}")
    names = list(meta.modalities) if modalities is None else list(modalities)
    for m in names:
        meta.modality(m)
    s = ds.isel(sample=int(where[0])).load()
    caption = str(s["caption"].item()) if "caption" in s else None
    panels = len(names) + (caption is not None)
    cols = min(COLUMNS, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(PANEL_IN * cols * 1.25, PANEL_IN * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, m in zip(axes, names, strict=False):
        if bool(s[f"{m}_available"].values):
            draw(meta.modalities[m], s, fig, ax)
        else:
            _note(ax, f"{m}: not available", (reasons or {}).get(m, "no reason recorded"))
    if caption is not None:
        _note(axes[len(names)], "caption", caption or "(empty caption)")
    for ax in axes[panels:]:
        ax.set_axis_off()
    anchor = s["anchor_time"].values
    when = "no anchor scene" if np.isnat(anchor) else f"anchor {np.datetime_as_string(anchor, unit='m')} UTC"
    fig.suptitle(f"{sample_id}: EPSG:{int(s['epsg'])}, lon {float(s['lon']):.4f}, lat {float(s['lat']):.4f}, "
                 f"{when}", fontsize=11)
    return fig


def show(cube: str | os.PathLike[str], sample_id: str, out: str | os.PathLike[str], *,
         modalities: Sequence[str] | None = None, dpi: int = 80) -> Path:
    """Write :func:`sample_figure` of a cube's sample to a PNG.

    Raises:
        OutputError: ``out`` exists and is not a figure this command wrote (it is left untouched).
        CubeError: not a cube, no such sample or modality.
    """
    if Path(out).suffix.lower() != ".png":
        raise CubeError(f"--out {out}: expected a .png file name, e.g. --out sample.png")
    out = check_output_file(out, what=WHAT, is_ours=_is_ours)
    try:
        ds = xr.open_zarr(cube)
    except (OSError, ValueError, KeyError) as exc:
        raise CubeError(f"{cube} is not an eo-dataset cube: it cannot be read as a Zarr v3 store "
                        f"({type(exc).__name__}: {exc})") from None
    meta = CubeMeta.from_attrs(ds.attrs, os.fspath(cube))
    reasons = _reasons(cube, ds, sample_id)
    fig = sample_figure(ds, meta, sample_id, modalities, reasons)
    fig.savefig(out, dpi=dpi, metadata={"Software": SOFTWARE})
    return out


def _reasons(cube: str | os.PathLike[str], ds: xr.Dataset, sample_id: str) -> dict[str, str]:
    """Why the sample lacks what it lacks: the entry of its own block only (a planet cube has ~70,000)."""
    manifest = None if "://" in os.fspath(cube) else read_manifest(cube)
    where = np.flatnonzero(np.array([str(i) for i in ds["sample_id"].values]) == sample_id)
    if manifest is None or not where.size:
        return {}
    entry = Path(cube) / MANIFEST_DIR / "blocks" / f"{int(where[0]) // manifest['shard_samples']:06d}.json"
    missing = json.loads(entry.read_text()).get("missing", {}) if entry.is_file() else {}
    return dict(missing.get(sample_id, {}))


def _note(ax: Any, title: str, text: str) -> None:
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    ax.text(0.02, 0.98, "\n".join(textwrap.wrap(text, width=48)), va="top", ha="left", fontsize=8, wrap=True,
            transform=ax.transAxes, family="serif")


def _is_ours(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return str(im.info.get("Software", "")).startswith("eo-dataset show")
    except Exception:  # not an image, or not one PIL reads: not ours
        return False
