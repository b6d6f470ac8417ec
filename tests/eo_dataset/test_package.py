"""The package itself: imports without torch, exposes its API, has an error root that subclasses builtins."""

from __future__ import annotations

import subprocess
import sys

import eo_dataset
from eo_dataset import CubeError, EODatasetError, GridError, RecipeError, SourceError


def test_imports_without_torch() -> None:
    code = ("import sys, eo_dataset, eo_dataset.cli.main, eo_dataset.pipeline.run, eo_dataset.demo.world; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api() -> None:
    for name in eo_dataset.__all__:
        assert hasattr(eo_dataset, name), name
    assert eo_dataset.__version__ != "0.0.0+unknown"


def test_error_root() -> None:
    for cls, builtin in ((RecipeError, ValueError), (GridError, ValueError), (CubeError, ValueError),
                         (SourceError, OSError)):
        assert issubclass(cls, EODatasetError) and issubclass(cls, builtin)


def test_wheel_ships_both_packages_with_their_data(tmp_path) -> None:
    """A built wheel holds eo_dataset (with catalogs/) and eo_models (with its bundled configs)."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "eo_dataset/catalogs/demo.yaml" in names
    assert {"eo_models/configs/tokenizer-tiny.yaml", "eo_models/configs/tokenizer-base.yaml",
            "eo_models/cli/main.py", "eo_models/tokenizers/quantizers/fsq.py"} <= names
