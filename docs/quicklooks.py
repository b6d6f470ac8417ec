"""Quicklook figures of a cube's modalities, for the documentation (docs/modalities/img/).

Usage, from the repository root (needs matplotlib: ``pip install matplotlib``)::

    python docs/quicklooks.py [CUBE] [--sample ID] [--out DIR]

CUBE defaults to ``demo.zarr`` (made by ``eo-dataset demo``). The sample defaults to the first one with the most
modalities available; a modality that this sample lacks is drawn from the first sample that has it (the figure's
title names the sample). One small PNG per modality is written to ``DIR`` (default ``docs/modalities/img``), named
after the modality (``<m>.png``), plus ``caption.png`` when the cube has captions. The figures in the docs are made
by ``python docs/generate.py quicklooks``, which builds a fresh demo cube and runs::

    python docs/quicklooks.py demo.zarr --sample 532U_89R_1_1

Each modality is drawn as its collection's ``display`` spec says (stored in the cube; see
:mod:`eo_dataset.view.quicklook`): true colour for Sentinel-2 and Landsat, VV backscatter in dB for Sentinel-1, a
hillshaded terrain map for a DEM, class colours with a legend, OpenStreetMap layers as one composite. Pixels that are
not valid (``<m>_valid`` False: no data, cloud, outside the OSM extract) are greyed and hatched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.view.quicklook import caption_figure, quicklook

DPI = 80


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.05)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")


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
    meta = CubeMeta.from_attrs(ds.attrs, args.cube)
    modalities = list(meta.modalities)
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
        save(quicklook(meta.modalities[m], s), out / f"{m}.png")
    if "caption" in ds:
        save(caption_figure(ds.isel(sample=index).load()), out / "caption.png")


if __name__ == "__main__":
    main()
