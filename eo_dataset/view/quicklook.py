"""Quicklooks: one modality of one sample as a picture, drawn from the cube's metadata alone.

How a modality is drawn is data (:class:`~eo_dataset.spec.meaning.DisplaySpec`, from its collection YAML and stored
in the cube): three bands as true colour, one band with a colour map (in dB when the modality's ``transform`` is
``db``, hillshaded for terrain), class colours with a legend, presence layers stacked in their drawing order. A
modality without a display spec is drawn as its first band, 2nd to 98th percentile. Pixels that are not valid
(``<m>_valid`` False: no data, cloud, outside an OSM extract) are greyed and hatched.

Needs matplotlib (``pip install 'eo-dataset[docs]'``); uses its object API only (no pyplot, no global state).
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import xarray as xr

from eo_dataset.cube.schema import ModalityMeta

FIGSIZE = (4.0, 4.0)
LEGEND_FIGSIZE = (5.2, 4.0)  # room for a legend on the right
INVALID_GREY = 0.6
DB_FLOOR = 1e-6


def physical(meta: ModalityMeta, s: xr.Dataset, band: str | None = None) -> np.ndarray:
    """One band of one sample in physical units (after the modality's transform), NaN where not valid."""
    m = meta.name
    i = meta.bands.index(band) if band is not None else 0
    x = s[m].values[i].astype(np.float64) * meta.scale + meta.offset
    if meta.transform == "db":
        with np.errstate(divide="ignore", invalid="ignore"):
            x = 10 * np.log10(np.maximum(x, DB_FLOOR))
    return np.where(s[f"{m}_valid"].values, x, np.nan)


def quicklook(meta: ModalityMeta, s: xr.Dataset) -> Any:
    """A matplotlib ``Figure`` of modality ``meta`` of the one-sample dataset ``s`` (``ds.isel(sample=i)``)."""
    fig, ax = _figure(legend=_has_legend(meta))
    draw(meta, s, fig, ax)
    return fig


def draw(meta: ModalityMeta, s: xr.Dataset, fig: Any, ax: Any) -> None:
    """Draw modality ``meta`` of the one-sample dataset ``s`` into ``ax`` (a colour bar or legend beside it)."""
    ax.set_xticks([])
    ax.set_yticks([])  # no ticks, but keep the frame (white backgrounds need an edge)
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
    d = meta.display
    if meta.kind == "categorical" and meta.classes:
        _classes(meta, s, fig, ax)
    elif meta.kind == "multilabel":
        _layers(meta, s, fig, ax)
    elif d is not None and d.rgb:
        _rgb(meta, s, d.rgb, fig, ax)
    else:
        _band(meta, s, fig, ax)


def _has_legend(meta: ModalityMeta) -> bool:
    return meta.kind == "multilabel" or (meta.kind == "categorical" and bool(meta.classes))


def caption_figure(s: xr.Dataset) -> Any:
    """The sample's caption as a small figure."""
    from matplotlib.figure import Figure

    text = str(s.caption.item()) or "(empty caption)"
    lines = textwrap.wrap(text, width=56)
    fig = Figure(figsize=(5.0, 0.55 + 0.22 * len(lines)))
    fig.text(0.02, 0.98, f"caption of {s.sample_id.item()}", fontsize=9, fontweight="bold", va="top")
    fig.text(0.02, 0.98 - 0.32 / fig.get_figheight(), "\n".join(lines), fontsize=9, va="top", family="serif")
    return fig


# -- styles ----------------------------------------------------------------------------------------------------
def _rgb(meta: ModalityMeta, s: xr.Dataset, bands: tuple[str, str, str], fig: Any, ax: Any) -> None:
    valid = s[f"{meta.name}_valid"].values
    rgb = np.stack([physical(meta, s, b) for b in bands], axis=-1)
    lo, hi = display_range(meta, rgb)
    rgb = _grey_invalid(np.clip((np.nan_to_num(rgb, nan=lo) - lo) / (hi - lo), 0, 1), valid)
    ax.imshow(rgb, interpolation="nearest")
    _hatch(ax, valid)
    _title(ax, meta, s, f"{_what(meta, 'RGB')} {'/'.join(bands)}, {lo:g} to {hi:g}")


def _band(meta: ModalityMeta, s: xr.Dataset, fig: Any, ax: Any) -> None:
    from matplotlib import cm, colormaps
    from matplotlib.colors import LightSource, Normalize

    d = meta.display
    band = d.band if d is not None and d.band else meta.bands[0]
    x = physical(meta, s, band)
    valid = np.isfinite(x)
    lo, hi = display_range(meta, x)
    cmap = colormaps[d.colormap if d is not None and d.colormap else "viridis"]
    units = "dB" if meta.transform == "db" else meta.units
    if d is not None and d.hillshade:
        filled = np.where(valid, x, np.nanmean(x) if valid.any() else 0.0)
        norm = Normalize(lo, hi)
        rgb = LightSource(azdeg=315, altdeg=45).shade(filled, cmap=cmap, norm=norm, blend_mode="soft", vert_exag=2,
                                                      dx=meta.resolution_m, dy=meta.resolution_m)[..., :3]
        ax.imshow(_grey_invalid(rgb, valid), interpolation="nearest")
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.02,
                     label=f"{band} ({units})")
    else:
        im = ax.imshow(x, cmap=cmap.with_extremes(bad=(INVALID_GREY,) * 3), vmin=lo, vmax=hi,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=f"{band} ({units})")
    _hatch(ax, s[f"{meta.name}_valid"].values)
    _title(ax, meta, s, _what(meta, band) + (", hillshaded" if d is not None and d.hillshade else ""))


def _classes(meta: ModalityMeta, s: xr.Dataset, fig: Any, ax: Any) -> None:
    from matplotlib.patches import Patch

    classes = meta.class_table
    colour = class_colours(meta)
    ids = s[meta.name].values[0]
    valid = s[f"{meta.name}_valid"].values
    rgb = np.full((*ids.shape, 3), INVALID_GREY)
    for k, c in colour.items():
        rgb[(ids == k) & valid] = c
    present, counts = np.unique(ids[valid], return_counts=True)
    ax.imshow(rgb, interpolation="nearest")
    _hatch(ax, valid)
    total = counts.sum() or 1
    handles = [Patch(facecolor=colour[int(k)], edgecolor="k", linewidth=0.3,
                     label=f"{int(k)} {classes[int(k)]} ({100 * n / total:.0f}%)")
               for k, n in zip(present, counts, strict=True) if int(k) in classes]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    _title(ax, meta, s, _what(meta, "classes"))


def _layers(meta: ModalityMeta, s: xr.Dataset, fig: Any, ax: Any) -> None:
    from matplotlib.patches import Patch

    bands = list(meta.bands)
    data = s[meta.name].values  # (layer, y, x): 1 present, 0 absent
    valid = s[f"{meta.name}_valid"].values
    colours = layer_colours(meta)
    order = list(colours)  # bottom to top
    rgb = np.ones((*valid.shape, 3))
    for b in order:
        rgb[(data[bands.index(b)] == 1) & valid] = colours[b]
    ax.imshow(_grey_invalid(rgb, valid), interpolation="nearest")
    _hatch(ax, valid)
    share = {b: 100 * float((data[bands.index(b)][valid] == 1).mean()) if valid.any() else 0.0 for b in order}
    handles = [Patch(facecolor=colours[b], edgecolor="k", linewidth=0.3, label=f"{b} ({share[b]:.1f}%)")
               for b in reversed(order)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    _title(ax, meta, s, _what(meta, "layers"))


# -- pieces ------------------------------------------------------------------------------------------------------
def _what(meta: ModalityMeta, default: str) -> str:
    return meta.display.title if meta.display is not None and meta.display.title else default


def display_range(meta: ModalityMeta, x: np.ndarray) -> tuple[float, float]:
    """The display spec's ``range``, else the 2nd to 98th percentile of the finite values."""
    if meta.display is not None and meta.display.range is not None:
        return float(meta.display.range[0]), float(meta.display.range[1])
    finite = x[np.isfinite(x)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def class_colours(meta: ModalityMeta) -> dict[int, tuple[float, float, float]]:
    """Class id -> RGB in 0..1: the display spec's ``colours``, else matplotlib's tab20 in class order."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    palette = (meta.display.colours if meta.display is not None else None) or {}
    fallback = colormaps["tab20"]
    return {k: to_rgb(palette.get(str(k), fallback(i % 20))) for i, k in enumerate(meta.class_table)}


def layer_colours(meta: ModalityMeta) -> dict[str, tuple[float, float, float]]:
    """Presence layer -> RGB in 0..1, in drawing order (bottom to top): the display spec's ``colours`` first, then
    the other layers with matplotlib's tab10."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    bands = list(meta.bands)
    palette = (meta.display.colours if meta.display is not None else None) or {}
    order = [b for b in palette if b in bands] + [b for b in bands if b not in palette]
    extra = colormaps["tab10"]
    return {b: to_rgb(palette.get(b, extra(i % 10))) for i, b in enumerate(order)}


def _grey_invalid(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[~valid] = INVALID_GREY
    return out


def _hatch(ax: Any, valid: np.ndarray) -> None:
    if valid.all():
        return
    h, w = valid.shape
    ax.contourf(np.arange(w), np.arange(h), (~valid).astype(float), levels=[0.5, 1.5], colors="none",
                hatches=["////"])


def _figure(legend: bool = False) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=LEGEND_FIGSIZE if legend else FIGSIZE)
    return fig, fig.subplots()


def _title(ax: Any, meta: ModalityMeta, s: xr.Dataset, what: str) -> None:
    """Modality, what is shown; sample, date (not for static products), resolution."""
    t = s[f"{meta.name}_time"].values
    static = (meta.rule or {}).get("type") == "static"
    when = "" if np.isnat(t) or static else f", {np.datetime_as_string(t, unit='D')}"
    hatched = "" if s[f"{meta.name}_valid"].values.all() else "; hatched: not valid"
    ax.set_title(f"{meta.name}: {what}\n{s.sample_id.item()}{when}, {meta.resolution_m:g} m{hatched}", fontsize=8)
