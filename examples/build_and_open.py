"""Build a small cube from the offline demo world and open it with xarray.

Run it from any scratch directory (it writes ``demo-world/`` there and the cube in a temp dir)::

    cd "$(mktemp -d)" && python /path/to/examples/build_and_open.py

Takes well under a minute the first time (generating the demo world), a few seconds afterwards.
"""

import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine

import eo_dataset
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.demo.world import demo_sources, make_world

catalog = make_world("demo-world")  # reused if already there
recipe = eo_dataset.load_recipe("demo").with_sources(demo_sources(catalog))

grid = eo_dataset.Grid(recipe.grid.spec())
samples = grid.samples_in((11.99, 47.80, 12.05, 47.82))  # (west, south, east, north) in degrees
print(f"{len(samples)} samples:", [s.id for s in samples])

with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "small.zarr"
    report = eo_dataset.build(recipe, samples, out, scheduler="sync")
    print(f"built {report.n_samples} samples in {report.seconds:.1f} s, {report.missing} sample/modality pairs missing")

    ds = xr.open_zarr(out)
    meta = CubeMeta.from_attrs(ds.attrs)  # what every modality is: bands, kind, units, scale/offset, classes ...
    for m in meta.modalities:
        print(f"{m:8s} available {int(ds[f'{m}_available'].sum())}/{ds.sizes['sample']}")

    # one Sentinel-2 pixel, stored -> physical with the modality's scale/offset
    i = int(np.flatnonzero(ds.s2l2a_available.values)[0])
    s = ds.isel(sample=i)
    row, col = 100, 120
    dn = int(s.s2l2a.sel(s2l2a_band="B04").values[row, col])
    valid = bool(s.s2l2a_valid.values[row, col])
    s2 = meta.modalities["s2l2a"]
    refl = dn * s2.scale + s2.offset
    res = s2.resolution_m
    x, y = Affine(res, 0, float(s.x0), 0, -res, float(s.y0)) @ (col + 0.5, row + 0.5)  # pixel centre
    gap = (s.s1rtc_time - s.anchor_time).values / np.timedelta64(1, "D")
    print(f"sample {s.sample_id.values}: EPSG:{int(s.epsg)} pixel ({row}, {col}) at x={x:.1f}, y={y:.1f}")
    print(f"  B04 stored {dn} -> reflectance {refl:.4f} (valid={valid}), S2 date {s.s2l2a_time.values}")
    print(f"  S1 gap to anchor: {gap:.2f} days" if s.s1rtc_available else "  S1 not available")
    ds.close()
