"""Loading throughput: CubeDataset against TorchGeo over the same rasters and against the Zarr floor, in one run.

(a) ``CubeDataset(cube)``: every modality, whole samples, normalised with the cube's statistics, through a
    ``DataLoader(num_workers=W, batch_size=B)`` with :class:`ShardSampler` and the cube's collate; its batch buffers
    reused with public API only (:class:`~eo_dataset.torch.buffers.BufferPool`, the default). Also measured: the
    same with a fresh buffer for every batch (no pool at all), and with ``normalize=False`` (stored dtypes,
    normalise on the device).
(b) TorchGeo: the same samples written as COGs (one file per sample and modality, in the sample's own UTM zone,
    ZSTD), one ``RasterDataset`` per modality intersected with ``&`` (TorchGeo's way to combine modalities), a
    ``RandomGeoSampler`` of one-sample-sized patches, ``stack_samples``, the same W and B.
(c) The floor: exactly the chunks (a) reads (data and valid mask of each available modality of each sample, in the
    same batches and the same selections: one ``array[lo:hi]`` per span of neighbouring samples, as (a) reads them)
    read and decompressed with zarr alone (``zarr.Array.__getitem__``) in W processes, the
    arrays then dropped: no tensors, no normalisation, nothing sent back. Measured twice: with zarr-python's own
    codec pipeline (c), and with the zarrs codec pipeline (c'), the one (a) uses when zarrs is installed, so
    (a)/(c') is the like-for-like overhead of the loader. (a) is also run with zarr-python's pipeline (a').

Prints samples/s of each, the ratios (a)/(b), (a)/(c) and each loader's to (c'), and peak memory per worker
process (RSS, and the unique set size USS: memory the worker does not share with the parent), watched during an
untimed warm-up round of each (reading ``/proc/*/smaps`` costs CPU that would otherwise be billed to the timed
rounds). Each figure is the best of ``--repeat`` rounds, all contenders measured in turn in every round.
``--sweep`` also rewrites the cube with other codecs and shard sizes and prints (a) and (c) for each (used to
choose the build defaults, see docs/loading.md).

Run: python benchmarks/load.py [--cube demo.zarr] [--workers 2] [--batch-size 8] [--repeat 3] [--sweep]
(builds demo.zarr from the demo world first when the cube does not exist; about a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rasterio
import torch
import xarray as xr
import zarr
from affine import Affine
from torch.utils.data import DataLoader
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.torch import CubeDataset, ShardSampler
from eo_dataset.torch.buffers import BufferPool
from eo_dataset.torch.dataset import read_spans

FORK = mp.get_context("fork")  # what DataLoader workers use on Linux; the same for every contender


# -- memory ----------------------------------------------------------------------------------------------------
class PeakMemory:
    """Samples RSS and USS of this process's children every ``interval`` s; keeps the peak per child.

    :meth:`cpu` tells which children used CPU during a stretch, so each contender's workers can be told apart.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss: dict[int, int] = {}
        self.peak_uss: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for child in me.children(recursive=True):
                try:
                    info = child.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.peak_rss[child.pid] = max(self.peak_rss.get(child.pid, 0), info.rss)
                self.peak_uss[child.pid] = max(self.peak_uss.get(child.pid, 0), info.uss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def cpu() -> dict[int, float]:
        """CPU seconds used so far by each child process."""
        out = {}
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                out[child.pid] = sum(child.cpu_times()[:2])
        return out

    def summary(self, pids: Iterable[int] | None = None) -> str:
        pids = [p for p in (self.peak_rss if pids is None else pids) if p in self.peak_rss]
        if not pids:
            return "n/a"
        mib = 2**20
        return (f"RSS {max(self.peak_rss[p] for p in pids) / mib:.0f} MiB, "
                f"USS {max(self.peak_uss[p] for p in pids) / mib:.0f} MiB (max over {len(pids)} workers)")


# -- (a) CubeDataset ---------------------------------------------------------------------------------------------
BUFFERS: dict[str, Callable[[], BufferPool]] = {
    "reused": BufferPool,  # the default
    "fresh": lambda: BufferPool(max_buffers=0),  # a fresh buffer per batch: no pool
}


def cube_loader(cube: Path, workers: int, batch_size: int, normalize: bool = True, pipeline: str = "auto",
                buffers: str = "reused"):
    ds = CubeDataset(cube, normalize=normalize, codec_pipeline=pipeline)
    ds._pool = BUFFERS[buffers]()
    sampler = ShardSampler(ds, seed=0)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=ds.collate_fn,
                        persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                        multiprocessing_context=FORK if workers else None)
    return ds, sampler, loader


def run_loader(loader: Any, sampler: Any, epochs: int, first_epoch: int = 0) -> int:
    n = 0
    for e in range(first_epoch, first_epoch + epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(e)
        for batch in loader:
            n += len(batch["sample_id"]) if "sample_id" in batch else int(batch["image"].shape[0])
    return n


# -- (c) the floor -----------------------------------------------------------------------------------------------
_GROUP: dict[str, zarr.Group] = {}


def _floor_init(cube: str, pipeline: str) -> None:
    if pipeline == "zarrs":  # this process only; one decode thread per process, as (a) uses
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "threading.max_workers": 1})
    _GROUP["g"] = zarr.open_group(cube, mode="r")


def _floor_batch(reads: list[tuple[str, int, int]]) -> int:
    g, nbytes = _GROUP["g"], 0
    for name, lo, hi in reads:
        nbytes += g[name][lo:hi].nbytes
    return nbytes


def floor_batches(ds: Any, sampler: Any, epochs: int, batch_size: int, first_epoch: int = 0) -> list[list]:
    """The selections (a) makes for each batch: ``(array, lo, hi)``, the same sample spans of the same arrays."""
    out = []
    for e in range(first_epoch, first_epoch + epochs):
        sampler.set_epoch(e)
        order = list(sampler)
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            reads = []
            for j, m in enumerate(ds.modalities):
                for lo, hi in read_spans([i for i in idx if ds.availability[i, j]], ds.shard_samples):
                    reads += [(m, lo, hi), (f"{m}_valid", lo, hi)]
            if ds.has_caption:
                reads += [("caption", lo, hi) for lo, hi in read_spans(idx, ds.shard_samples)]
            out.append(reads)
    return out


def run_floor(pool: ProcessPoolExecutor, batches: list[list], samples: int) -> int:
    list(pool.map(_floor_batch, batches))
    return samples


# -- (b) TorchGeo ------------------------------------------------------------------------------------------------
def export_cogs(cube: Path, out: Path) -> list[str]:
    """Every available modality of every sample as a COG in the sample's CRS; returns the modality order."""
    ds = xr.open_zarr(cube)
    meta = CubeMeta.from_attrs(ds.attrs, str(cube))
    for m, mm in meta.modalities.items():
        (out / m).mkdir(parents=True, exist_ok=True)
        res, nodata = mm.resolution_m, mm.nodata
        data, avail = ds[m].values, ds[f"{m}_available"].values
        for i in np.flatnonzero(avail):
            s = ds.isel(sample=int(i))
            arr = data[i]
            profile = {"driver": "COG", "width": arr.shape[2], "height": arr.shape[1], "count": arr.shape[0],
                       "dtype": arr.dtype.name, "crs": f"EPSG:{int(s.epsg)}", "nodata": nodata,
                       "transform": Affine(res, 0.0, float(s.x0), 0.0, -res, float(s.y0)),
                       "compress": "zstd", "blocksize": 256, "overviews": "none"}
            with rasterio.open(out / m / f"{s.sample_id.values}.tif", "w", **profile) as dst:
                dst.write(arr)
    return list(meta.modalities)


class _ImageRasters(RasterDataset):
    filename_glob = "*.tif"


class _MaskRasters(RasterDataset):
    filename_glob = "*.tif"
    is_image = False


def torchgeo_loader(root: Path, modalities: list[str], kinds: dict[str, str], patch_px: int, length: int,
                    workers: int, batch_size: int):
    with contextlib.redirect_stdout(io.StringIO()):  # TorchGeo prints each CRS/res conversion
        parts = [(_MaskRasters if kinds[m] == "categorical" else _ImageRasters)(paths=str(root / m))
                 for m in modalities]
        ds = parts[0]
        for p in parts[1:]:
            ds = ds & p
            # TorchGeo 0.8 cannot chain a third '&' (gpd.overlay: duplicate 'filepath_1' columns); the intersection
            # reads through its parts, so its index needs only the geometry
            ds.index = ds.index[["geometry"]]
    sampler = RandomGeoSampler(ds, size=patch_px, length=length)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=stack_samples,
                        persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                        multiprocessing_context=FORK if workers else None)
    return ds, sampler, loader


# -- codec sweep -----------------------------------------------------------------------------------------------
CODECS: dict[str, Callable[[], list]] = {
    "zstd(3)": lambda: [zarr.codecs.ZstdCodec(level=3)],
    "blosc zstd(3) shuffle": lambda: [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    "blosc zstd(1) bitshuffle": lambda: [zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")],
    "blosc lz4(5) shuffle": lambda: [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc lz4(5) bitshuffle": lambda: [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
    "none": lambda: [],
}


def rewrite(cube: Path, out: Path, compressors: list, shard: int) -> None:
    """A copy of the cube with other compressors / shard size for the pixel and valid arrays."""
    ds = xr.open_zarr(cube).load()
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        enc = {k: v for k, v in var.encoding.items() if k in ("chunks", "shards", "compressors", "dtype", "units",
                                                               "calendar", "fill_value")}
        if var.ndim >= 3:
            enc["shards"] = (min(shard, ds.sizes["sample"]),) + tuple(var.shape[1:])
            enc["compressors"] = compressors
        encoding[name] = enc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # consolidated metadata is not in the v3 spec yet
        ds.to_zarr(out, mode="w", zarr_format=3, encoding=encoding, consolidated=True)


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# -- main ------------------------------------------------------------------------------------------------------
def ensure_cube(cube: Path, world: Path) -> None:
    if (cube / "zarr.json").is_file():
        return
    from eo_dataset import Grid, build, load_recipe
    from eo_dataset.demo.world import make_world

    print(f"building {cube} from the demo world in {world} (about a minute) ...")
    catalog = make_world(world)
    recipe = load_recipe("demo").with_sources({"demo": str(catalog)})
    grid = Grid(recipe.grid.spec())
    with open(catalog.parent / "samples.csv") as f:
        samples = [grid.sample(r["sample_id"]) for r in csv.DictReader(f)]
    build(recipe, samples, cube, scheduler="sync")


def measure_cube_and_floor(cube: Path, args: argparse.Namespace, repeat: int,
                           contenders: tuple[str, ...] = ("a", "a_fresh", "a_raw", "a2", "c", "c2")) -> dict[str, Any]:
    """Best-of-``repeat`` samples/s of (a), (a) with fresh buffers, (a raw), (a') [a2], (c), (c') [c2] on one cube,
    in turn each round.

    Also returns the peak memory of the worker processes (the loaders' and the floor's) under ``"mem"``.
    """
    pipelines = {"a": "auto", "a_fresh": "auto", "a_raw": "auto", "a2": "zarr", "c": "zarr", "c2": "zarrs"}
    buffers = {"a_fresh": "fresh"}
    runners: dict[str, Callable[[int], int]] = {}
    pools: list[ProcessPoolExecutor] = []
    ds = sampler = None
    for key in contenders:
        if key.startswith("a"):
            ds, sampler, loader = cube_loader(cube, args.workers, args.batch_size, normalize=key != "a_raw",
                                              pipeline=pipelines[key], buffers=buffers.get(key, "reused"))

            def run(r: int, loader: Any = loader, sampler: Any = sampler) -> int:
                return run_loader(loader, sampler, args.epochs, first_epoch=r * args.epochs)
        else:
            pool = ProcessPoolExecutor(args.workers, mp_context=FORK, initializer=_floor_init,
                                       initargs=(str(cube), pipelines[key]))
            pools.append(pool)

            def run(r: int, pool: ProcessPoolExecutor = pool, ds: Any = ds, sampler: Any = sampler) -> int:
                return run_floor(pool, floor_batches(ds, sampler, args.epochs, args.batch_size, r * args.epochs),
                                 len(sampler) * args.epochs)
        runners[key] = run
    best: dict[str, Any] = dict.fromkeys(contenders, 0.0)
    cpu_ms: dict[str, float] = dict.fromkeys(contenders, float("inf"))
    workers: dict[str, set[int]] = {key: set() for key in contenders}
    mem = PeakMemory()
    with mem:  # memory is watched in the untimed warm-up round only: reading /proc/*/smaps costs CPU
        for key, run in runners.items():
            before = mem.cpu()
            run(1000)  # warm-up: start workers, open handles, fill the page cache; a full round
            workers[key] |= {p for p, t in mem.cpu().items() if t - before.get(p, 0.0) > 0.05}
    for r in range(repeat):
        for key, run in runners.items():
            c0, t0 = total_cpu(), time.perf_counter()
            n = run(r)
            best[key] = max(best[key], n / (time.perf_counter() - t0))
            cpu_ms[key] = min(cpu_ms[key], (total_cpu() - c0) / n * 1000)
    for pool in pools:
        pool.shutdown()
    best["mem"] = {key: mem.summary(workers[key]) for key in contenders}
    best["cpu_ms"] = cpu_ms
    return best


def total_cpu() -> float:
    """CPU seconds used so far by this process (all threads) and its children (workers) together."""
    return sum(psutil.Process().cpu_times()[:2]) + sum(PeakMemory.cpu().values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cube", type=Path, default=Path("demo.zarr"))
    p.add_argument("--world", type=Path, default=Path("demo-world"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8, help="epochs of the cube per timed round of (a) and (c)")
    p.add_argument("--torchgeo-samples", type=int, default=48, help="patches per timed round of (b)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sweep", action="store_true", help="also try other codecs and shard sizes")
    args = p.parse_args()
    ensure_cube(args.cube, args.world)

    torch.set_num_threads(1)  # the workers' setting (DataLoader sets 1 in each worker); the main thread only waits
    cube = xr.open_zarr(args.cube)
    meta, n_samples = CubeMeta.from_attrs(cube.attrs, str(args.cube)), cube.sizes["sample"]
    kinds = {m: mm.kind for m, mm in meta.modalities.items()}
    patch = meta.patch_px
    print(f"cube {args.cube}: {n_samples} samples, modalities {list(kinds)}; num_workers={args.workers}, "
          f"batch_size={args.batch_size}, best of {args.repeat}")

    with tempfile.TemporaryDirectory() as tmp:
        cogs = Path(tmp) / "cogs"
        modalities = export_cogs(args.cube, cogs)
        _, tg_sampler, tg_loader = torchgeo_loader(cogs, modalities, kinds, patch, args.torchgeo_samples,
                                                   args.workers, args.batch_size)
        b, b_cpu, b_mem = 0.0, float("inf"), PeakMemory()
        with b_mem:  # as for (a) and (c): memory watched in the untimed warm-up round only
            run_loader(tg_loader, tg_sampler, 1)
        for _ in range(args.repeat):
            c0, t0 = total_cpu(), time.perf_counter()
            n = run_loader(tg_loader, tg_sampler, 1)
            b = max(b, n / (time.perf_counter() - t0))
            b_cpu = min(b_cpu, (total_cpu() - c0) / n * 1000)
        del tg_loader
        r = measure_cube_and_floor(args.cube, args, args.repeat)
        a, a2, c, c2 = r["a"], r["a2"], r["c"], r["c2"]
        cpu = r["cpu_ms"] | {"b": b_cpu}
        rows = [("(a)", "CubeDataset + ShardSampler + collate, zarrs pipeline", a, cpu["a"]),
                ("", "the same, a fresh buffer per batch (no pool)", r["a_fresh"], cpu["a_fresh"]),
                ("", "the same, normalize=False (normalise on the GPU)", r["a_raw"], cpu["a_raw"]),
                ("(a')", "the same, zarr-python's codec pipeline", a2, cpu["a2"]),
                ("(b)", f"TorchGeo: {len(modalities)} RasterDatasets (COG) &, RandomGeoSampler", b, cpu["b"]),
                ("(c)", "floor: the same chunks, zarr-python's codec pipeline", c, cpu["c"]),
                ("(c')", "floor: the same chunks, zarrs codec pipeline", c2, cpu["c2"])]
        print(f"{'':5s}{'':55s} {'samples/s':>10s} {'CPU ms/sample':>14s}")
        for tag, what, rate, ms in rows:
            print(f"{tag:5s}{what:55s} {rate:10.1f} {ms:14.1f}")
        print(f"ratio (a)/(b)  = {a / b:6.1f}  (CPU: {cpu['b'] / cpu['a']:5.1f})   target >= 10")
        print(f"ratio (a)/(c)  = {a / c:6.2f}  (CPU: {cpu['c'] / cpu['a']:5.2f})   target >= 0.8")
        print(f"ratio (a)/(c') = {a / c2:6.2f}  (CPU: {cpu['c2'] / cpu['a']:5.2f})   like for like: what the loader "
              "adds; target >= 0.85")
        for key, what in (("a_fresh", "a fresh buffer per batch"), ("a_raw", "normalize=False")):
            print(f"  the same, {what + ':':25s}{r[key] / c2:6.2f}  (CPU: {cpu['c2'] / cpu[key]:5.2f})")
        print(f"ratio (a')/(c) = {a2 / c:6.2f}  (CPU: {cpu['c'] / cpu['a2']:5.2f})   zarr-python's pipeline")
        print("(CPU: the ratio of CPU time per sample, main process and workers together; steadier than wall time "
              "on a shared machine)")
        print(f"peak memory per worker, (a):  {r['mem']['a']}")
        print(f"peak memory per worker, (b):  {b_mem.summary()}")
        print(f"peak memory per worker, (c'): {r['mem']['c2']}")

        if args.sweep:
            print("\ncodec / shard sweep (pixel and valid arrays rewritten; (a) and (c') [cz] as above):")
            print(f"{'codec':26s} {'shard':>5s} {'MiB':>7s} {'(a) /s':>8s} {'(cz) /s':>8s} {'(a) CPU ms':>10s} "
                  f"{'(cz) CPU ms':>11s}")
            for shard in (8, 32):
                for k, (name, make) in enumerate(CODECS.items()):
                    out = Path(tmp) / f"sweep-{shard}-{k}.zarr"
                    rewrite(args.cube, out, make(), shard)
                    s = measure_cube_and_floor(out, args, args.repeat, ("a", "c2"))
                    ms = s["cpu_ms"]
                    print(f"{name:26s} {shard:5d} {du(out):7.1f} {s['a']:8.1f} {s['c2']:8.1f} {ms['a']:10.1f} "
                          f"{ms['c2']:11.1f}", flush=True)
                    shutil.rmtree(out)


if __name__ == "__main__":
    main()
