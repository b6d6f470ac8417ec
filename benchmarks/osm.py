"""OpenStreetMap rasterising throughput on the real Liechtenstein PBF, measured in one run.

Reads the PBF once (the per-process cost of a region), then rasterises the bundled OSM layers (catalogs/collections/
osm.yaml) onto every sample that intersects the extract. Prints samples/s and the ratio of read time to
rasterise time.

Run: python benchmarks/osm.py [--pbf ../shared/realdata/osm/liechtenstein.osm.pbf]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from eo_dataset import Grid, load_recipe
from eo_dataset.sources.osm import Layer, load_extract, rasterize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pbf", default=str(Path(__file__).resolve().parents[2] / "shared/realdata/osm/"
                                        "liechtenstein.osm.pbf"))
    args = p.parse_args()
    modality = load_recipe("demo").modalities["osm"]
    layers = [Layer(b.name, {k: v if isinstance(v, bool) else tuple(v) for k, v in b.osm.tags.items()},
                    b.osm.width_m) for b in modality.band_specs]
    keys = tuple(sorted({k for b in modality.band_specs for k in b.osm.tags}))
    t0 = time.perf_counter()
    extract = load_extract(args.pbf, keys)
    read_s = time.perf_counter() - t0
    samples = Grid().samples_in(extract.coverage)
    t0 = time.perf_counter()
    burned = 0
    for s in samples:
        data, valid = rasterize(extract, layers, s, 10)
        burned += int((data == 1).sum())
    raster_s = time.perf_counter() - t0
    print(f"{Path(args.pbf).name}: {len(extract.geometries):,} features, {len(samples)} samples intersect it")
    print(f"read PBF once       : {read_s:6.2f} s")
    print(f"rasterise 9 layers  : {raster_s:6.2f} s -> {len(samples) / raster_s:6.1f} samples/s "
          f"({burned:,} feature pixels)")
    print(f"read / rasterise    : {read_s / raster_s:6.2f}")
    print(f"end to end          : {len(samples) / (read_s + raster_s):6.1f} samples/s")


if __name__ == "__main__":
    main()
