"""Builds on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from eo_dataset import build
from tests.eo_dataset.cube.test_resume import cube_files
from tests.servers import free_port

DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def cluster():
    """A scheduler and two single-threaded workers, each its own process; yields (address, worker processes)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env=env)]
    workers = []
    for i in range(2):
        workers.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--name", f"w{i}",
                                         "--no-nanny", "--dashboard-address", ":0"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                        env=env))
    procs += workers
    from dask.distributed import Client

    deadline = time.time() + 60
    with Client(address, timeout=60) as client:
        while len(client.scheduler_info()["workers"]) < 2:
            if time.time() > deadline:
                raise RuntimeError("dask workers did not connect within 60 s")
            time.sleep(0.2)
    yield address, workers
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_build_on_an_existing_scheduler(tmp_path, cluster, demo_recipe, demo_samples, demo_cube) -> None:
    address, _ = cluster
    out = tmp_path / "cube.zarr"
    report = build(demo_recipe, demo_samples, out, scheduler=address)
    assert report.n_blocks == 4 and report.skipped_blocks == 0
    hosts = {e["timing"]["pid"] for e in _entries(out)}
    assert len(hosts) == 2, "both worker processes should have built blocks"
    assert cube_files(out) == cube_files(demo_cube)


def test_scheduler_address_from_environment(tmp_path, cluster, monkeypatch, demo_recipe, demo_samples) -> None:
    address, _ = cluster
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    out = tmp_path / "cube.zarr"
    build(demo_recipe, demo_samples[:16], out)
    worker_pids = {e["timing"]["pid"] for e in _entries(out)}
    assert os.getpid() not in worker_pids
    assert xr.open_zarr(out).sizes["sample"] == 16


def test_worker_killed_mid_build_loses_nothing(tmp_path, cluster, demo_recipe, demo_samples, demo_cube) -> None:
    address, workers = cluster
    out = tmp_path / "cube.zarr"
    killed = []

    def kill_one(done: int, total: int) -> None:
        if 0 < done < total and not killed:
            os.killpg(workers[0].pid, signal.SIGKILL)
            killed.append(done)

    report = build(demo_recipe, demo_samples, out, scheduler=address, progress=kill_one)
    assert killed and report.n_blocks == 4
    assert cube_files(out) == cube_files(demo_cube)


def _entries(path: Path) -> list[dict]:
    import json

    return [json.loads(p.read_text()) for p in sorted((path / "_build" / "blocks").glob("*.json"))]
