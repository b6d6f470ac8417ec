"""Quicklook figures of a cube's modalities, for the documentation (docs/modalities/img/).

Usage, from the repository root (needs matplotlib: ``pip install matplotlib``)::

    python docs/quicklooks.py [CUBE] [--sample ID] [--out DIR]

CUBE defaults to ``demo.zarr`` (made by ``eo-dataset demo``). The sample defaults to the first one with the most
modalities available; a modality that this sample lacks is drawn from the first sample that has it (the figure's
title names the sample). One small PNG per modality is written to ``DIR`` (default ``docs/modalities/img``), named
after the modality (``<m>.png``), plus ``caption.png`` when the cube has captions. The figures in the docs are made
by ``python docs/generate.py quicklooks``, which builds a fresh demo cube and runs::

    python docs/quicklooks.py demo.zarr --sample 532U_89R_1_1

Each modality is drawn by what it is (its collection and bands), not by its name: Sentinel-2 and Landsat as true
colour, Sentinel-1 RTC as VV backscatter in dB, an ``elevation`` band as a hillshaded terrain map, a ``canopy_height``
band as a colour map, categorical data with its class colours and a legend, OpenStreetMap layers as one composite.
Pixels that are not valid (``<m>_valid`` False: no data, cloud, outside the OSM extract) are greyed and hatched.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import LightSource, to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

FIGSIZE = (4.0, 4.0)
LEGEND_FIGSIZE = (5.2, 4.0)  # room for a legend on the right
DPI = 80
INVALID_GREY = 0.6
RGB_MAX_REFLECTANCE = 0.3  # true colour: reflectance 0 .. 0.3 -> 0 .. 1

# Impact Observatory / Esri annual land cover colours (as published with the product)
IO_LULC_COLOURS = {1: "#419bdf", 2: "#397d49", 4: "#7a87c6", 5: "#e49635", 7: "#c4281b", 8: "#a59b8f",
                   9: "#a8ebff", 10: "#616161", 11: "#e3e2c3"}
# ESA WorldCover colours (product user manual)
WORLDCOVER_COLOURS = {10: "#006400", 20: "#ffbb22", 30: "#ffff4c", 40: "#f096ff", 50: "#fa0000", 60: "#b4b4b4",
                      70: "#f0f0f0", 80: "#0064c8", 90: "#0096a0", 95: "#00cf75", 100: "#fae6a0"}
CLASS_COLOURS = {"io-lulc-annual-v02": IO_LULC_COLOURS, "esa-worldcover": WORLDCOVER_COLOURS}

# OpenStreetMap layers, drawn bottom to top (areas first, then lines, buildings last)
OSM_COLOURS = {"farmland": "#eef0c0", "urban": "#e0c8c8", "forest": "#4f9a4f", "water": "#3a7bd5",
               "paths": "#b08050", "roads_minor": "#8c8c8c", "roads_major": "#202020", "railways": "#7b3fa0",
               "buildings": "#e01010"}


def physical(ds: xr.Dataset, m: str, s: xr.Dataset, band: str | None = None) -> np.ndarray:
    """Stored values -> physical values (float64), NaN where the pixel is not valid."""
    a = ds[m].attrs
    da = s[m].sel({f"{m}_band": band}) if band is not None else s[m].isel({f"{m}_band": 0})
    x = da.values.astype(np.float64) * a["scale"] + a["offset"]
    return np.where(s[f"{m}_valid"].values, x, np.nan)


def grey_invalid(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """RGB (y, x, 3) in 0..1 with the invalid pixels set to grey."""
    out = rgb.copy()
    out[~valid] = INVALID_GREY
    return out


def hatch_invalid(ax: plt.Axes, valid: np.ndarray) -> None:
    """Hatch the pixels that are not valid (drawn over an imshow in pixel coordinates)."""
    if valid.all():
        return
    h, w = valid.shape
    ax.contourf(np.arange(w), np.arange(h), (~valid).astype(float), levels=[0.5, 1.5], colors="none",
                hatches=["////"])


def new_figure(legend: bool = False) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=LEGEND_FIGSIZE if legend else FIGSIZE, dpi=DPI)
    ax.set_xticks([])
    ax.set_yticks([])  # no ticks, but keep the frame (white OSM backgrounds need an edge)
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
    return fig, ax


def title(ax: plt.Axes, ds: xr.Dataset, m: str, s: xr.Dataset, what: str) -> None:
    """Modality, what is shown; sample, date (not for OSM: its time is the extract file's), resolution."""
    t = s[f"{m}_time"].values
    when = "" if np.isnat(t) or ds[m].attrs.get("kind") == "osm" else f", {np.datetime_as_string(t, unit='D')}"
    res = ds[m].attrs.get("resolution_m")
    hatched = "" if s[f"{m}_valid"].values.all() else "; hatched: not valid"
    ax.set_title(f"{m}: {what}\n{s.sample_id.item()}{when}, {res:g} m{hatched}", fontsize=8)


def save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")


def true_colour(ds: xr.Dataset, m: str, s: xr.Dataset, bands: tuple[str, str, str], what: str) -> plt.Figure:
    valid = s[f"{m}_valid"].values
    rgb = np.stack([physical(ds, m, s, b) for b in bands], axis=-1) / RGB_MAX_REFLECTANCE
    rgb = grey_invalid(np.clip(np.nan_to_num(rgb, nan=0.0), 0, 1), valid)
    fig, ax = new_figure()
    ax.imshow(rgb, interpolation="nearest")
    hatch_invalid(ax, valid)
    title(ax, ds, m, s, f"{what} {'/'.join(bands)}, reflectance 0-{RGB_MAX_REFLECTANCE:g}")
    return fig


def sar_db(ds: xr.Dataset, m: str, s: xr.Dataset) -> plt.Figure:
    band = "vv" if "vv" in s[f"{m}_band"].values else str(s[f"{m}_band"].values[0])
    x = physical(ds, m, s, band)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10 * np.log10(np.where(x > 0, x, np.nan))
    fig, ax = new_figure()
    cmap = plt.get_cmap("gray").with_extremes(bad=(1.0, 0.8, 0.8))
    im = ax.imshow(db, cmap=cmap, vmin=-25, vmax=0, interpolation="nearest")
    hatch_invalid(ax, s[f"{m}_valid"].values)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=f"{band.upper()} gamma0 (dB)")
    title(ax, ds, m, s, f"{band.upper()} backscatter, 10 log10(linear)")
    return fig


def elevation(ds: xr.Dataset, m: str, s: xr.Dataset) -> plt.Figure:
    z = physical(ds, m, s)
    valid = np.isfinite(z)
    res = float(ds[m].attrs["resolution_m"])
    lo, hi = (np.nanmin(z), np.nanmax(z)) if valid.any() else (0.0, 1.0)
    filled = np.where(valid, z, np.nanmean(z) if valid.any() else 0.0)
    cmap = plt.get_cmap("terrain")
    norm = plt.Normalize(lo, hi)
    rgb = LightSource(azdeg=315, altdeg=45).shade(filled, cmap=cmap, norm=norm, blend_mode="soft", vert_exag=2,
                                                  dx=res, dy=res)[..., :3]
    fig, ax = new_figure()
    ax.imshow(grey_invalid(rgb, valid), interpolation="nearest")
    hatch_invalid(ax, valid)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.02, label="elevation (m)")
    title(ax, ds, m, s, "elevation, hillshaded")
    return fig


def canopy(ds: xr.Dataset, m: str, s: xr.Dataset) -> plt.Figure:
    h = physical(ds, m, s)
    fig, ax = new_figure()
    cmap = plt.get_cmap("YlGn").with_extremes(bad=(INVALID_GREY,) * 3)
    im = ax.imshow(h, cmap=cmap, vmin=0, vmax=max(30.0, float(np.nanmax(h)) if np.isfinite(h).any() else 30.0),
                   interpolation="nearest")
    hatch_invalid(ax, s[f"{m}_valid"].values)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="canopy height (m)")
    title(ax, ds, m, s, "canopy height")
    return fig


def categorical(ds: xr.Dataset, m: str, s: xr.Dataset) -> plt.Figure:
    classes = {int(k): v for k, v in ds[m].attrs["classes"].items()}
    palette = CLASS_COLOURS.get(ds[m].attrs.get("collection"), {})
    fallback = plt.get_cmap("tab20")
    colour = {k: to_rgb(palette.get(k, fallback(i % 20))) for i, k in enumerate(sorted(classes))}
    ids = s[m].isel({f"{m}_band": 0}).values
    valid = s[f"{m}_valid"].values
    rgb = np.full((*ids.shape, 3), INVALID_GREY)
    for k, c in colour.items():
        rgb[(ids == k) & valid] = c
    present, counts = np.unique(ids[valid], return_counts=True)
    fig, ax = new_figure(legend=True)
    ax.imshow(rgb, interpolation="nearest")
    hatch_invalid(ax, valid)
    total = counts.sum() or 1
    handles = [Patch(facecolor=colour[int(k)], edgecolor="k", linewidth=0.3,
                     label=f"{int(k)} {classes[int(k)]} ({100 * n / total:.0f}%)")
               for k, n in zip(present, counts, strict=True) if int(k) in classes]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    title(ax, ds, m, s, "land cover classes")
    return fig


def osm(ds: xr.Dataset, m: str, s: xr.Dataset) -> plt.Figure:
    bands = [str(b) for b in s[f"{m}_band"].values]
    data = s[m].values  # (layer, y, x): 1 feature, 0 none, 255 outside the extract
    valid = s[f"{m}_valid"].values
    order = [b for b in OSM_COLOURS if b in bands] + [b for b in bands if b not in OSM_COLOURS]
    extra = plt.get_cmap("tab10")
    colours = {b: to_rgb(OSM_COLOURS.get(b, extra(i % 10))) for i, b in enumerate(order)}
    rgb = np.ones((*valid.shape, 3))
    for b in order:
        rgb[(data[bands.index(b)] == 1) & valid] = colours[b]
    fig, ax = new_figure(legend=True)
    ax.imshow(grey_invalid(rgb, valid), interpolation="nearest")
    hatch_invalid(ax, valid)
    handles = [Patch(facecolor=colours[b], edgecolor="k", linewidth=0.3,
                     label=f"{b} ({100 * float((data[bands.index(b)][valid] == 1).mean()) if valid.any() else 0:.1f}%)")
               for b in reversed(order)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    title(ax, ds, m, s, "OpenStreetMap layers")
    return fig


def single_band(ds: xr.Dataset, m: str, s: xr.Dataset) -> plt.Figure:
    band = str(s[f"{m}_band"].values[0])
    x = physical(ds, m, s, band)
    fig, ax = new_figure()
    lo, hi = np.nanpercentile(x, [2, 98]) if np.isfinite(x).any() else (0, 1)
    im = ax.imshow(x, cmap=plt.get_cmap("viridis").with_extremes(bad=(INVALID_GREY,) * 3), vmin=lo, vmax=hi,
                   interpolation="nearest")
    hatch_invalid(ax, s[f"{m}_valid"].values)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=f"{band} ({ds[m].attrs.get('units', '')})")
    title(ax, ds, m, s, band)
    return fig


def renderer(ds: xr.Dataset, m: str):
    """The drawing function for a modality, from its collection and bands."""
    a = ds[m].attrs
    collection = str(a.get("collection", ""))
    bands = [str(b) for b in ds[f"{m}_band"].values]
    if a.get("kind") == "osm":
        return osm
    if a.get("kind") == "categorical" and a.get("classes"):
        return categorical
    if collection.startswith("sentinel-2") and {"B04", "B03", "B02"} <= set(bands):
        return lambda ds, m, s: true_colour(ds, m, s, ("B04", "B03", "B02"), "true colour")
    if collection.startswith("landsat") and {"red", "green", "blue"} <= set(bands):
        return lambda ds, m, s: true_colour(ds, m, s, ("red", "green", "blue"), "true colour")
    if collection.startswith("sentinel-1-rtc"):
        return sar_db
    if bands == ["elevation"]:
        return elevation
    if bands == ["canopy_height"]:
        return canopy
    return single_band


def caption_figure(s: xr.Dataset) -> plt.Figure:
    text = str(s.caption.item()) or "(empty caption)"
    lines = textwrap.wrap(text, width=56)
    fig = plt.figure(figsize=(5.0, 0.55 + 0.22 * len(lines)), dpi=DPI)
    fig.text(0.02, 0.98, f"caption of {s.sample_id.item()}", fontsize=9, fontweight="bold", va="top")
    fig.text(0.02, 0.98 - 0.32 / fig.get_figheight(), "\n".join(lines), fontsize=9, va="top", family="serif")
    return fig


def default_sample(ds: xr.Dataset, modalities: list[str]) -> int:
    """Index of the first sample with the most modalities available."""
    counts = sum(ds[f"{m}_available"].values.astype(int) for m in modalities)
    return int(np.argmax(counts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cube", nargs="?", default="demo.zarr", help="cube path (default: demo.zarr)")
    parser.add_argument("--sample", help="sample id (default: the first sample with the most modalities)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "modalities" / "img"),
                        help="output folder (default: docs/modalities/img)")
    args = parser.parse_args(argv)

    ds = xr.open_zarr(args.cube)
    modalities = list(ds.attrs["modalities"])
    ids = [str(i) for i in ds.sample_id.values]
    if args.sample is None:
        index = default_sample(ds, modalities)
    elif args.sample in ids:
        index = ids.index(args.sample)
    else:
        parser.error(f"sample {args.sample!r} is not in {args.cube} (e.g. {ids[:3]})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{args.cube}: sample {ids[index]} ({index})")

    for m in modalities:
        available = ds[f"{m}_available"].values
        i = index if available[index] else (int(np.argmax(available)) if available.any() else None)
        if i is None:
            print(f"{m}: available in no sample, skipped")
            continue
        if i != index:
            print(f"{m}: not available in {ids[index]}, drawn from {ids[i]}")
        s = ds.isel(sample=i).load()
        save(renderer(ds, m)(ds, m, s), out / f"{m}.png")
    if "caption" in ds:
        save(caption_figure(ds.isel(sample=index).load()), out / "caption.png")


if __name__ == "__main__":
    main()
