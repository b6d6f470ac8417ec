"""Freeze a recipe's item searches into a stac-geoparquet snapshot, then build a cube from the snapshot alone.

Runs offline on the demo world (a static STAC catalog the package generates). The same two steps work for a STAC
API recipe such as the bundled ``4m4eo`` (Planetary Computer):

    eo-dataset snapshot 4m4eo --region 11.0,47.5,11.2,47.6 --out items.parquet
    eo-dataset build 4m4eo --region 11.0,47.5,11.2,47.6 --source pc=items.parquet --out cube.zarr

A source whose href ends in ``.parquet`` is read as a snapshot: no search is sent anywhere, and the cube picks the
same items the searches found when the snapshot was taken (assets are still read, and signed, at build time).

    python examples/build_from_snapshot.py [WORKDIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import xarray as xr

import eo_dataset
from eo_dataset.demo.world import make_world
from eo_dataset.pipeline.snapshot import snapshot, snapshot_metadata


def main(workdir: str = "snapshot-example") -> None:
    """Demo world -> snapshot -> cube from the snapshot; checks it equals a cube built from the catalog."""
    work = Path(workdir)
    catalog = make_world(work / "demo-world")  # generated once, reused afterwards
    recipe = eo_dataset.load_recipe("demo").with_sources({"demo": str(catalog)})
    grid = eo_dataset.Grid(recipe.grid.spec())
    samples = grid.samples_in((11.99, 47.80, 12.05, 47.83))

    # 1. the searches a build would run, frozen into one stac-geoparquet file
    report = snapshot(recipe, samples, work / "items.parquet")
    print(f"snapshot: {report.n_items} items {report.per_collection} from {report.n_searches} searches")
    print("snapshot metadata:", {k: snapshot_metadata(report.path)[k] for k in ("recipe", "recipe_hash", "created")})
    print("columns:", pq.read_schema(report.path).names[:10], "...")

    # 2. a build from the snapshot alone (the recipe hash ignores sources: this is the same recipe)
    frozen = recipe.with_sources({"demo": str(report.path)})
    built = eo_dataset.build(frozen, samples, work / "from-snapshot.zarr", scheduler="sync", overwrite=True)
    print(f"built {built.path}: {built.n_samples} samples in {built.seconds:.1f} s")

    # 3. the same cube as a build from the catalog itself
    eo_dataset.build(recipe, samples, work / "from-catalog.zarr", scheduler="sync", overwrite=True)
    a, b = xr.open_zarr(work / "from-snapshot.zarr"), xr.open_zarr(work / "from-catalog.zarr")
    for m in recipe.modalities:
        assert a[f"{m}_item"].values.tolist() == b[f"{m}_item"].values.tolist(), m
        np.testing.assert_array_equal(a[m].values, b[m].values)
    print("identical to the cube built from the catalog:", ", ".join(recipe.modalities))


if __name__ == "__main__":
    main(*sys.argv[1:])
