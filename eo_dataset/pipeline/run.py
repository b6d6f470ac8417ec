"""Build orchestration: blocks of samples -> the cube, on dask.distributed or in-process.

One block = one shard of samples = one task. A task aligns its samples and writes them as a region of the cube,
then marks itself done in the manifest; a rerun with the same recipe and samples skips done blocks.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eo_dataset.cube.lifecycle import CubeWriter
from eo_dataset.cube.manifest import iter_block_reports
from eo_dataset.cube.stats import block_stats
from eo_dataset.cube.storage import is_object_url
from eo_dataset.engine.align import align_block
from eo_dataset.engine.captions import make_captioner
from eo_dataset.errors import GridError, OutputError
from eo_dataset.logfile import worker_log_level
from eo_dataset.outputs import is_url, local_path
from eo_dataset.pipeline.coverage import check_region, empty_warnings, region_bbox
from eo_dataset.sources import open_source
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildReport:
    """What a build did."""

    path: Path | str  # a local folder or an object-storage URL
    n_samples: int
    n_blocks: int
    skipped_blocks: int
    seconds: float
    missing: int  # sample/modality pairs without data, in the whole cube
    warnings: tuple[str, ...] = ()  # what found no data: a region outside a source, a modality empty everywhere
    empty_samples: int = 0  # samples without data in any modality

    @property
    def empty(self) -> bool:
        """True when no sample holds data of any modality."""
        return self.n_samples > 0 and self.empty_samples >= self.n_samples

    @property
    def samples_per_second(self) -> float:
        """Samples built per second of wall time (skipped blocks excluded)."""
        built = self.n_samples * (self.n_blocks - self.skipped_blocks) / max(self.n_blocks, 1)
        return built / self.seconds if self.seconds > 0 else float("nan")


def run_block(cube: CubeWriter, index: int, region: slice, samples: Sequence[Sample]) -> int:
    """Align and write one block, then mark it done; returns the number of samples written.

    The block's manifest entry records what is missing and why, statistics, and where and how long it ran (the
    planner's measured per-sample cost). For an update (``cube.only``), just those modalities are aligned, matched
    to the anchor times already in the cube, and the entry goes to the update's folder.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    recipe = cube.recipe
    anchor_times = cube.anchor_times(region) if cube.only else None
    derives = cube.only and set(recipe.derived_order) & set(cube.only)  # from the inputs the cube holds
    block = align_block(recipe, samples, only=cube.only, anchor_times=anchor_times,
                        stored=cube.arrays(region) if derives else None)
    if cube.only and recipe.captions is not None:  # captions speak of every modality: rewrite them from the new data
        arrays = cube.arrays(region) | block.arrays
        captioner = make_captioner(recipe.captions)
        block.arrays["caption"] = np.array([captioner(s, {k: v[i] for k, v in arrays.items()}, recipe)
                                            for i, s in enumerate(samples)], dtype=object)
    t1 = time.perf_counter()
    cube.write(index, region, block, lambda: {
        "samples": [region.start, region.stop], "missing": block.reasons, "stats": block_stats(recipe, block.arrays),
        "timing": {"align_s": t1 - t0, "write_s": time.perf_counter() - t1, "cpu_s": time.process_time() - c0,
                   "host": socket.gethostname(), "pid": os.getpid()}})
    return len(samples)


def build(recipe: Recipe, samples: Sequence[Sample], out: str | Path, *, scheduler: str | None = None,
          workers: int | None = None, overwrite: bool = False, append: bool = False,
          update: Sequence[str] = (), progress: Callable[[int, int], None] | None = None) -> BuildReport:
    """Build (or resume) a cube.

    Args:
        recipe: The validated recipe.
        samples: Samples in cube order (see :meth:`eo_dataset.spec.grid.Grid.samples_in`).
        out: Cube path, or an ``s3://``, ``gs://`` or ``az://`` URL (an icechunk repository: the build is a new
            version, published when it finishes; credentials from the environment).
        scheduler: ``None`` for a LocalCluster sized to the machine, ``"sync"`` to run in this process, or a Dask
            scheduler address (``tcp://host:8786``). ``DASK_SCHEDULER_ADDRESS`` is used when unset.
        workers: Worker processes of the LocalCluster (default: one per core).
        overwrite: Replace a cube of another recipe/sample list instead of refusing.
        append: Add the samples that are not in the cube yet after its last sample (same recipe); only the last,
            partial shard of the existing cube is rewritten.
        update: Rebuild just these modalities for every sample (the recipe may differ only in them); the other
            modalities' arrays are not touched.
        progress: Called with (samples done, total) after each block.
    """
    t0 = time.perf_counter()
    if is_url(out) and not is_object_url(out):
        raise OutputError(f"--out {str(out)!r}: a build writes to a local folder or to object storage (s3://, gs://, "
                          "az://); https:// cubes are read-only")
    out = out if is_object_url(out) else local_path(out)  # object storage: an icechunk repository
    if not samples:
        raise GridError("no samples to build: the region or sample list is empty; a region is WEST,SOUTH,EAST,NORTH "
                        "in degrees (longitudes -180..180, latitudes -90..90)")
    if sum(map(bool, (overwrite, append, update))) > 1:
        raise ValueError("choose one of overwrite, append and update")
    for spec in recipe.sources.values():  # a source that cannot be opened at all fails the build now, clearly
        open_source(spec)
    warnings = check_region(recipe, region_bbox(samples))  # a region outside every source fails before writing
    cube, samples = CubeWriter.open(out, recipe, samples, overwrite=overwrite, append=append, update=update)
    slices = cube.blocks(len(samples))
    done = cube.done()
    todo = [i for i in range(len(slices)) if i not in done]
    n_done = sum(slices[i].stop - slices[i].start for i in done)
    if progress:
        progress(n_done, len(samples))
    scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if todo and scheduler == "sync":
        for i in todo:
            n_done += run_block(cube, i, slices[i], samples[slices[i]])
            if progress:
                progress(n_done, len(samples))
    elif todo:
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler is None:
            n_workers = workers or os.cpu_count() or 1
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=worker_log_level())
        try:
            with Client(cluster or scheduler) as client:
                shipped = dataclasses.replace(cube, path=out.resolve()) if isinstance(out, Path) else cube
                # a bounded window of blocks in flight: the client and the scheduler hold the samples of a few
                # blocks per worker, never the whole list (9M samples would be ~70,000 queued tasks)
                pending = iter(todo)
                window = 4 * max(sum(client.nthreads().values()), 1) + 8

                def submit(i: int) -> Any:
                    return client.submit(run_block, shipped, i, slices[i], samples[slices[i]],
                                         key=f"block-{recipe.hash}-{i}-{cube.only}", retries=1)

                running = as_completed([submit(i) for i in itertools.islice(pending, window)])
                for fut in running:
                    n_done += fut.result()
                    nxt = next(pending, None)
                    if nxt is not None:
                        running.add(submit(nxt))
                    if progress:
                        progress(n_done, len(samples))
        finally:
            if cluster is not None:
                cluster.close()
    finished = cube.finish()
    empty, n_empty, missing = empty_warnings(recipe, (e for _, e in iter_block_reports(finished)), len(samples))
    return BuildReport(out, len(samples), len(slices), len(done), time.perf_counter() - t0, missing,
                       tuple(dict.fromkeys(warnings + empty)), n_empty)
