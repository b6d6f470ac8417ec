"""Engine throughput on the demo world against the floor of the work, measured in one process.

(a) the engine: ``eo_dataset.build`` in-process (select + read + reproject + mosaic + masks + Zarr write);
(b) the floor: the same windows (the items the engine chose, every band) read and reprojected with plain rasterio
    WarpedVRTs in a loop, nothing else.
Prints samples/s of both and their ratio (engine / floor; 1.0 means no overhead over raw GDAL reads).

Run: python benchmarks/build.py [--repeat 3] [--world demo-world]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import rasterio
import xarray as xr
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from eo_dataset import Grid, build, load_recipe
from eo_dataset.demo import make_world


def floor(recipe, samples, ds: xr.Dataset, world: Path) -> None:
    """Read every chosen asset window onto each sample grid with plain rasterio."""
    for i, s in enumerate(samples):
        for name, m in recipe.modalities.items():
            ids = ds[f"{name}_item"].values[i]
            for item in filter(None, ids.split(",")):
                keys = [b.asset_key for b in m.band_specs] + ([m.collection.quality.asset]
                                                              if m.collection.quality else [])
                for key in keys:
                    with rasterio.open(world / m.collection.name / item / f"{key}.tif") as src:
                        h, w = s.shape(m.resolution_m)
                        with WarpedVRT(src, crs=s.crs, transform=s.transform(m.resolution_m), width=w, height=h,
                                       resampling=Resampling[m.resampling_method]) as vrt:
                            vrt.read(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--world", default="demo-world")
    args = p.parse_args()
    catalog = make_world(args.world)
    world = catalog.parent
    recipe = load_recipe("demo").with_sources({"demo": str(catalog)})
    grid = Grid(recipe.grid.spec())
    with open(world / "samples.csv") as f:
        samples = [grid.sample(r["sample_id"]) for r in csv.DictReader(f)]
    engine, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):
            out = Path(tmp) / f"b{k}.zarr"
            t0 = time.perf_counter()
            build(recipe, samples, out, scheduler="sync")
            engine.append(time.perf_counter() - t0)
            ds = xr.open_zarr(out)
            t0 = time.perf_counter()
            floor(recipe, samples, ds, world)
            base.append(time.perf_counter() - t0)
    n = len(samples)
    e, b = min(engine), min(base)
    print(f"samples: {n}, best of {args.repeat}")
    print(f"(a) engine, 1 process : {n / e:7.1f} samples/s ({e:.2f} s)")
    print(f"(b) rasterio floor    : {n / b:7.1f} samples/s ({b:.2f} s)")
    print(f"ratio engine/floor    : {b / e:7.2f}")


if __name__ == "__main__":
    main()
