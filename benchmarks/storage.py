"""Object-storage benchmarks on the demo world, every figure measured in this one run against a loopback S3 server
(moto's server mode, started here on 127.0.0.1).

(a) build: the demo build (32 samples, in-process) to local disk vs to s3:// (an icechunk repository); ratio of the
    wall times, S3 / local.
(b) loading: CubeDataset samples/s over every sample, from the local cube vs from the S3 one; ratio S3 / local.
(c) commits: the cost of one block's commit outside its data (open the repository, a writable session on the build
    branch, the block's manifest entry, the commit with rebase), median of repeated commits on a built cube.

moto is a Python server: its request handling, not icechunk's, bounds the S3 figures here; a real object store
adds network latency instead. Run: python benchmarks/storage.py [--repeat 3] [--world demo-world]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--world", default="demo-world")
    p.add_argument("--commits", type=int, default=20, help="commits timed in (c)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eo-storage-bench-"))
    proc, endpoint = start_moto(tmp / "moto.log")
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        run(args, tmp)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    import icechunk

    from eo_dataset import Grid, build, load_recipe
    from eo_dataset.cube.manifest import mark_done
    from eo_dataset.cube.storage import BUILD_BRANCH, open_repo
    from eo_dataset.demo.world import demo_sources, make_world

    catalog = make_world(args.world)
    recipe = load_recipe("demo").with_sources(demo_sources(catalog))
    grid = Grid(recipe.grid.spec())
    with open(catalog.parent / "samples.csv") as f:
        samples = [grid.sample(r["sample_id"]) for r in csv.DictReader(f)]
    build(recipe, samples[:8], tmp / "warm.zarr", scheduler="sync")  # imports, GDAL, catalog caches
    local_s, s3_s = [], []
    for i in range(args.repeat):  # alternate, so drifting machine load hits both alike
        t = time.perf_counter()
        build(recipe, samples, tmp / f"local{i}.zarr", scheduler="sync")
        local_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        build(recipe, samples, f"s3://bench/cube{i}.zarr", scheduler="sync")
        s3_s.append(time.perf_counter() - t)
    lm, sm = statistics.median(local_s), statistics.median(s3_s)
    print(f"(a) build of {len(samples)} samples, in-process, median of {args.repeat}: local {lm:.1f} s, "
          f"S3 (loopback moto, icechunk) {sm:.1f} s; ratio S3/local {sm / lm:.2f}")

    from eo_dataset.torch import CubeDataset

    rates: dict[str, list[float]] = {"local": [], "s3": []}
    for _ in range(args.repeat):
        for name, where in (("local", tmp / "local0.zarr"), ("s3", "s3://bench/cube0.zarr")):
            ds = CubeDataset(where)
            t = time.perf_counter()
            for j in range(len(ds)):
                ds[j]
            rates[name].append(len(ds) / (time.perf_counter() - t))
    lr, sr = statistics.median(rates["local"]), statistics.median(rates["s3"])
    print(f"(b) CubeDataset, every sample one by one, median of {args.repeat}: local {lr:.1f} samples/s, "
          f"S3 {sr:.1f} samples/s; ratio S3/local {sr / lr:.2f}")

    url = "s3://bench/cube0.zarr"
    entry = {"samples": [0, 8], "missing": {}, "stats": {}, "timing": {}}
    times = []
    for k in range(args.commits):
        t = time.perf_counter()
        session = open_repo(url).writable_session(BUILD_BRANCH)
        mark_done(session.store, 1000 + k, entry, "bench")
        session.commit(f"bench {k}", rebase_with=icechunk.ConflictDetector())
        times.append(time.perf_counter() - t)
    per_block = statistics.median(times)
    print(f"(c) commit of one block (repository open + session + manifest entry + commit), median of "
          f"{args.commits}: {per_block * 1000:.0f} ms; the demo's blocks took {sm / 4:.1f} s each on S3, so commits "
          f"are {per_block / (sm / 4) * 100:.1f}% of a block")


if __name__ == "__main__":
    main()
