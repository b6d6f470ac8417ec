"""Crash safety: a build killed with SIGKILL at random moments, then rerun, gives byte-identical arrays."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eo_dataset.cube.manifest import done_blocks
from tests.conftest import demo_source_args


def cube_files(path: Path) -> dict[str, bytes]:
    """Every object of the cube except the build manifest (which records timings and hosts)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.relative_to(path).parts[0] != "_build"}


def _cmd(world: Path, out: Path, scheduler: str | None) -> list[str]:
    """The build command; scheduler None means the default LocalCluster (2 worker processes)."""
    return [sys.executable, "-m", "eo_dataset.cli", "build", "demo", "--samples", str(world.parent / "samples.csv"),
            *demo_source_args(world), "--out", str(out), "--workers", "2"] + (
        ["--scheduler", scheduler] if scheduler else [])


def _kill_after(cmd: list[str], delay: float) -> int | None:
    """Start the build in its own process group and SIGKILL the whole group (client and workers) after delay."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=delay)
        return proc.returncode  # finished before the kill
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory, world) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "cube.zarr"
    subprocess.run(_cmd(world, out, "sync"), check=True, capture_output=True)
    return cube_files(out)


@pytest.mark.parametrize(("scheduler", "seed"), [("sync", 1), ("sync", 2), ("sync", 3), (None, 4)])
def test_kill_anywhere_then_resume_is_byte_identical(tmp_path, world, reference, scheduler, seed) -> None:
    rng = random.Random(seed)
    out = tmp_path / "cube.zarr"
    cmd = _cmd(world, out, scheduler)
    kills = 0
    for _ in range(3):  # up to three crashes at random moments, each followed by a rerun of the same command
        delay = rng.uniform(0.5, 7.0)
        if _kill_after(cmd, delay) is None:
            kills += 1
    assert kills >= 1
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert done_blocks(out) == {0, 1, 2, 3}
    assert not list(tmp_path.glob(".*.creating"))
    got = cube_files(out)
    assert sorted(got) == sorted(reference)
    different = [k for k in got if got[k] != reference[k]]
    assert not different, f"after {kills} kills these objects differ: {different[:5]}"


def test_kill_during_creation_leaves_no_half_cube(tmp_path, world) -> None:
    out = tmp_path / "cube.zarr"
    cmd = _cmd(world, out, "sync")
    for delay in (1.2, 1.6, 2.0):  # around the import + creation phase
        _kill_after(cmd, delay)
        assert not out.exists() or (out / "_build" / "manifest.json").is_file()
    time.sleep(0.1)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert done_blocks(out) == {0, 1, 2, 3}


def test_kill_during_append_then_resume_is_byte_identical(tmp_path, world, reference) -> None:
    """Append 20 samples to a 12-sample cube, killing the append at random moments; rerunning it completes it."""
    rows = (world.parent / "samples.csv").read_text().splitlines()
    first = tmp_path / "first.csv"
    first.write_text("\n".join(rows[:13]) + "\n")  # header + 12 samples: the last shard is partial
    out = tmp_path / "cube.zarr"
    base = _cmd(world, out, "sync")
    subprocess.run([*base[:6], str(first), *base[7:]], check=True, capture_output=True)
    append = [*base, "--append"]
    rng = random.Random(7)
    kills = sum(_kill_after(append, rng.uniform(0.5, 5.0)) is None for _ in range(3))
    assert kills >= 1
    result = subprocess.run(append, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert cube_files(out) == reference
