"""Shared fixtures: the demo world (generated once per session) and a cube built from it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from eo_dataset import Grid, build, load_recipe
from eo_dataset.demo.world import demo_sources, make_world

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REALDATA = Path(os.environ.get("EO_REALDATA", REALDATA))


def pytest_configure(config: pytest.Config) -> None:
    """Commands the tests run log to a throwaway folder, not the user's ~/.cache/eo-dataset/logs."""
    import tempfile

    os.environ.setdefault("EO_DATASET_LOG_DIR", tempfile.mkdtemp(prefix="eo-dataset-test-logs-"))


def realdata(*parts: str) -> Path:
    """A path in ../shared/realdata, skipping the test with a reason when it is not there."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set EO_REALDATA to the shared/realdata folder)")
    return path


def demo_source_args(world: Path) -> list[str]:
    """``--source NAME=PATH`` arguments pointing the demo recipe at a demo world."""
    return [arg for name, href in demo_sources(world).items() for arg in ("--source", f"{name}={href}")]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo world's catalog.json (generated once per test session)."""
    return make_world(tmp_path_factory.mktemp("world") / "demo-world")


@pytest.fixture(scope="session")
def demo_recipe(world: Path):
    """The bundled demo recipe pointed at the session's demo world."""
    return load_recipe("demo").with_sources(demo_sources(world))


@pytest.fixture(scope="session")
def demo_samples(world: Path, demo_recipe):
    """The demo world's 32 samples, in samples.csv order."""
    grid = Grid(demo_recipe.grid.spec())
    with open(world.parent / "samples.csv") as f:
        return [grid.sample(r["sample_id"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="session")
def demo_cube(tmp_path_factory: pytest.TempPathFactory, demo_recipe, demo_samples) -> Path:
    """A cube of the whole demo world, built in-process."""
    out = tmp_path_factory.mktemp("cube") / "demo.zarr"
    build(demo_recipe, demo_samples, out, scheduler="sync")
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): the
    model tests' tensors are tiny, and on a busy small machine two threads can be 100 x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
