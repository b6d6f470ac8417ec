"""The cube's lifecycle in one place: open it for a build (create, resume, append or start an update), say which
blocks are left, write one block (its data, then its manifest entry: the order that makes a crash safe), and finish
(fold an update in, merge the statistics, consolidate).

:class:`CubeWriter` is what a build talks to; the store (:mod:`~eo_dataset.cube.store`), the manifest
(:mod:`~eo_dataset.cube.manifest`) and updates (:mod:`~eo_dataset.cube.update`) are its parts. It is small and
picklable (a path, the recipe, the modalities an update rewrites), so Dask ships it to the workers that write
blocks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from eo_dataset.cube.block import AlignedBlock
from eo_dataset.cube.manifest import done_blocks, mark_done
from eo_dataset.cube.storage import IcechunkWriter, is_object_url
from eo_dataset.cube.store import block_slices, create_or_open, finalize, write_block
from eo_dataset.cube.update import begin_update, finish_update, prepare_append, update_key
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import Recipe


@dataclass(frozen=True)
class CubeWriter:
    """An open build of a cube: where, by which recipe, and (for an update) which modalities are rewritten."""

    path: Path
    recipe: Recipe
    only: tuple[str, ...] | None = None

    @classmethod
    def open(cls, path: Path | str, recipe: Recipe, samples: Sequence[Sample], *, overwrite: bool = False,
             append: bool = False, update: Sequence[str] = ()) -> tuple[CubeWriter | IcechunkWriter, Sequence[Sample]]:
        """Get the cube at ``path`` ready for writing ``samples``; returns the writer and the cube's full sample
        list (for an append: the old samples followed by the new ones).

        An object-storage URL (``s3://``, ``gs://``, ``az://``) gets an
        :class:`~eo_dataset.cube.storage.IcechunkWriter` (the same interface, every step a commit).

        Raises:
            CubeError, OutputError: the path holds another cube (and ``overwrite`` is off), something that is not
                ours, or an update changes more than its modalities.
        """
        if is_object_url(path):  # a transactional repository: every step is a commit
            return IcechunkWriter.open(str(path), recipe, samples, overwrite=overwrite, append=append,
                                       update=update)
        only = tuple(sorted(update)) or None
        if append and path.exists():
            samples = prepare_append(path, recipe, samples)
        if only:
            begin_update(path, recipe, samples, only)
        else:
            create_or_open(path, recipe, samples, overwrite=overwrite)
        return cls(path, recipe, only), samples

    @property
    def _entries(self) -> str:
        return update_key(self.only) if self.only else "blocks"

    def blocks(self, n_samples: int) -> list[slice]:
        """The sample range of every block of a cube of ``n_samples`` samples."""
        return block_slices(n_samples, self.recipe.build.shard_samples)

    def done(self) -> set[int]:
        """Indices of the blocks already written (of this update, for an update)."""
        return done_blocks(self.path, self._entries)

    def anchor_times(self, region: slice) -> list[dt.datetime | None]:
        """The anchor times of a block's samples, as the cube holds them (an update matches its modalities to them)."""
        times = xr.open_zarr(self.path, consolidated=False).anchor_time.values[region]
        return [None if np.isnat(t) else pd.Timestamp(t).to_pydatetime().replace(tzinfo=dt.UTC) for t in times]

    def arrays(self, region: slice) -> dict[str, np.ndarray]:
        """Every per-sample array of a block's samples, as the cube holds them."""
        cube = xr.open_zarr(self.path, consolidated=False).isel(sample=region)
        return {k: cube[k].values for k in cube.variables if "sample" in cube[k].dims}

    def write(self, index: int, region: slice, block: AlignedBlock, entry: Callable[[], dict[str, Any]]) -> None:
        """Write a block's arrays, then record it as done with its manifest entry (``entry()``, called once the data
        is written, so it can say how long writing took)."""
        write_block(self.path, self.recipe, region, block)
        mark_done(self.path, index, entry(), self._entries)

    def finish(self) -> Path:
        """Fold an update in, store the merged statistics and consolidate; returns the finished cube (to read its
        manifest entries from, e.g. with :func:`~eo_dataset.cube.manifest.iter_block_reports`)."""
        if self.only:
            finish_update(self.path, self.recipe, self.only)
        finalize(self.path)
        return self.path
