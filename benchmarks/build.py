"""Build benchmarks on the demo world, every figure measured in this one run.

(a) engine vs floor: ``eo_dataset.build`` in one process (select + read + reproject + mosaic + masks + Zarr write)
    against the same windows (the items the engine chose, every band) read with plain rasterio WarpedVRTs in a loop.
    Ratio = engine samples/s / floor samples/s (target >= 0.7).
(b) scaling: a LocalCluster of 1 worker process vs 2 (start-up excluded: cluster, imports, catalog/extract loading,
    one warm-up sample per worker). Target speed-up >= 1.7 on 2 cores.
(c) memory: peak RSS of each worker process for blocks of 4 and 16 samples, and for a region of 16 vs 32 samples:
    bounded by the block size, not the region size.

Run: python benchmarks/build.py [--repeat 3] [--world demo-world]
Scaling on a bigger world (issue: >= 1.8 on >= 256 samples), e.g. the first 256 samples (16 cells) of
``eo-dataset demo --cells 64 --seed 0``'s world: python benchmarks/build.py --world demo-world-64c-seed0 --samples 256
--parts b --block 16 --repeat 2
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import rasterio
import xarray as xr
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from eo_dataset import Grid, build, load_recipe
from eo_dataset.demo.world import demo_sources, make_world
from eo_dataset.engine.align import align_block


def floor(recipe, samples, ds: xr.Dataset, world: Path) -> None:
    """Read every chosen asset window onto each sample grid with plain rasterio."""
    for i, s in enumerate(samples):
        for name, m in recipe.modalities.items():
            if m.collection.kind == "osm":  # vector data: the floor covers the raster reads
                continue
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
    p.add_argument("--world", default="demo-world",
                   help="a demo world folder: the default one (made if missing) or one of eo-dataset demo --cells")
    p.add_argument("--samples", type=int, help="the first N samples of the world's samples.csv (default: all)")
    p.add_argument("--parts", default="abc", help="which measurements: any of a, b, c (default: abc)")
    p.add_argument("--block", type=int, default=4, help="(b): samples per block (default: 4)")
    args = p.parse_args()
    world = Path(args.world)
    scaled = (world / "world.json").is_file() and "generator" in json.loads((world / "world.json").read_text())
    catalog = world.resolve() / "catalog.json" if scaled else make_world(world)
    world = catalog.parent
    recipe = load_recipe("demo").with_sources(demo_sources(catalog))
    grid = Grid(recipe.grid.spec())
    with open(world / "samples.csv") as f:
        samples = [grid.sample(r["sample_id"]) for r in csv.DictReader(f)][:args.samples]
    n = len(samples)
    print(f"world {world} ({'scaled' if scaled else 'default'}): {n} samples")
    if "a" in args.parts:
        engine_vs_floor(recipe, samples, world, args.repeat)
    if "b" in args.parts:
        scaling(recipe, samples, args.repeat, args.block)
    if "c" in args.parts:
        memory(recipe, samples)


def engine_vs_floor(recipe, samples, world: Path, repeat: int) -> None:
    engine, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeat):
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
    print(f"samples: {n}, best of {repeat}")
    print(f"(a) engine, 1 process  : {n / e:7.1f} samples/s ({e:.2f} s)")
    print(f"    rasterio floor     : {n / b:7.1f} samples/s ({b:.2f} s)")
    print(f"    ratio engine/floor : {b / e:7.2f}   (target >= 0.7)")


def scaling(recipe, samples, repeat: int, block: int) -> None:
    n = len(samples)
    small = recipe.model_copy(update={"build": recipe.build.model_copy(update={"shard_samples": block})})
    print(f"(b) {n} samples in blocks of {block}, best of {repeat}")
    wall = {}
    for workers in (1, 2):
        wall[workers] = min(cluster_build(small, samples, workers)[0] for _ in range(repeat))
    print(f"    LocalCluster 1 worker : {n / wall[1]:7.1f} samples/s ({wall[1]:.2f} s)")
    print(f"    LocalCluster 2 workers: {n / wall[2]:7.1f} samples/s ({wall[2]:.2f} s)")
    print(f"    speed-up 2 vs 1       : {wall[1] / wall[2]:7.2f}   (target >= 1.7; >= 1.8 on >= 256 samples)")


def memory(recipe, samples) -> None:
    print("(c) peak RSS per worker process (MB), 1 worker, fresh process per run:")
    for block, region in ((4, 32), (32, 32), (4, 16)):
        r = recipe.model_copy(update={"build": recipe.build.model_copy(update={"shard_samples": block})})
        _, rss = cluster_build(r, samples[:region], 1)
        print(f"    block {block:2d} samples, region {region} samples: {max(rss):7.0f} MB")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cluster_build(recipe, samples, workers: int) -> tuple[float, list[float]]:
    """Wall time of a build on a fresh LocalCluster (start-up excluded) and the workers' peak RSS."""
    from dask.distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp, LocalCluster(n_workers=workers, threads_per_worker=1,
                                                             dashboard_address=None) as cluster, Client(cluster) as c:
        # start-up is not build time: imports, catalog / OSM extract / gazetteer loading, GDAL's first opens
        c.run(lambda: align_block(recipe, samples[:1]) and None)
        t0 = time.perf_counter()
        build(recipe, samples, Path(tmp) / "c.zarr", scheduler=cluster.scheduler_address)
        seconds = time.perf_counter() - t0
        rss = list(c.run(_peak_rss_mb).values())
    return seconds, rss


if __name__ == "__main__":
    main()
