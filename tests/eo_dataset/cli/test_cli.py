"""The command line as a new user meets it: one-line errors (exit 2), nothing destroyed, quiet success, --help."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import zarr

from eo_dataset import Grid
from eo_dataset.cli.main import main, parser
from eo_dataset.pipeline.snapshot import snapshot
from tests.conftest import demo_source_args

SMALL = "11.90,47.80,11.93,47.81"  # 2 samples of the demo world


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("out", "message"), [
    ("/proc/nope.zarr", "cannot write --out /proc/nope.zarr: No such file or directory in /proc; choose a location "
                        "you can write to"),
    ("https://example.org/demo.zarr", "--out 'https://example.org/demo.zarr': a build writes to a local folder or "
                                      "to object storage (s3://, gs://, az://); https:// cubes are read-only"),
])
def test_unwritable_or_url_out(tmp_path, monkeypatch, capsys, world, out, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["build", "demo", "--region", SMALL, "--out", out, *demo_source_args(world)]) == 2
    assert message in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # no local folder named 'https:'


def test_empty_region(tmp_path, monkeypatch, capsys, world) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["build", "demo", "--region", "200,47.8,201,47.9", "--out", "x.zarr", *demo_source_args(world)]) == 2
    line = _one_line_error(capsys)
    assert "longitudes in -180..180" in line
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_cli_never_replaces_a_users_folder(tmp_path, monkeypatch, capsys, world, flags) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.csv").write_text("keep me")
    assert main(["build", "demo", "--region", SMALL, "--out", "results", *demo_source_args(world), *flags]) == 2
    line = _one_line_error(capsys)
    assert line == ("error: --out results exists and is not a cube built by eo-dataset (no _build/manifest.json); "
                    "it is left untouched: choose a new or empty folder for --out")
    assert (tmp_path / "results" / "results.csv").read_text() == "keep me"


def test_info_on_a_zarr_store_that_is_not_a_cube(tmp_path, capsys) -> None:
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3).attrs["x"] = 1
    assert main(["info", str(tmp_path / "other.zarr")]) == 2
    assert "is a Zarr store but not a cube built by eo-dataset" in _one_line_error(capsys)


def test_snapshot_never_replaces_a_users_file(tmp_path, demo_recipe, demo_samples) -> None:
    from eo_dataset.errors import OutputError

    mine = tmp_path / "items.parquet"
    mine.write_text("my own parquet-named notes")
    with pytest.raises(OutputError, match="is not a snapshot written by eo-dataset; it is left untouched"):
        snapshot(demo_recipe, demo_samples[:2], mine)
    assert mine.read_text() == "my own parquet-named notes"
    ours = tmp_path / "ours.parquet"
    first = snapshot(demo_recipe, demo_samples[:2], ours)
    again = snapshot(demo_recipe, demo_samples[:2], ours)  # our own snapshot is replaced
    assert first.n_items == again.n_items > 0


def test_help_of_every_subcommand_has_an_example_and_documents_every_option() -> None:
    p = parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    assert set(subs.choices) >= {"demo", "build", "info", "report", "plan", "cell", "snapshot"}
    for name, sp in subs.choices.items():
        assert sp.epilog and sp.epilog.startswith("example:\n  eo-dataset " + name), name
        for action in sp._actions:  # noqa: SLF001
            assert action.help, f"eo-dataset {name}: {action.option_strings or action.dest} has no help"


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("eo-dataset 0.")


def test_a_successful_build_is_quiet_and_logs_to_a_file(tmp_path, world) -> None:
    """A LocalCluster build prints our progress and summary only; Dask's records go to the log file."""
    env = {**os.environ, "EO_DATASET_LOG_DIR": str(tmp_path / "logs"), "COLUMNS": "200"}
    env.pop("DASK_LOGGING__DISTRIBUTED", None)
    cmd = [sys.executable, "-m", "eo_dataset.cli", "build", "demo", "--region", SMALL, "--out",
           str(tmp_path / "q.zarr"), "--workers", "2", *demo_source_args(world)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    text = run.stdout + run.stderr
    assert "INFO" not in text and "distributed" not in text and "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[0].startswith("building ") and lines[1].startswith("built ")  # the final bar, the summary
    assert all(ln.startswith("warning: ") for ln in lines[2:]), lines  # then only our warnings, one line each
    assert "distributed" in (tmp_path / "logs" / "eo-dataset.log").read_text()
    assert xr.open_zarr(tmp_path / "q.zarr").sizes["sample"] == len(Grid().samples_in([11.90, 47.80, 11.93, 47.81]))


def test_verbose_shows_the_records(tmp_path, world) -> None:
    env = {**os.environ, "EO_DATASET_LOG_DIR": str(tmp_path / "logs")}
    cmd = [sys.executable, "-m", "eo_dataset.cli", "--verbose", "build", "demo", "--region", SMALL, "--out",
           str(tmp_path / "v.zarr"), "--scheduler", "sync", *demo_source_args(world)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^(INFO|WARNING) [\w.]+: ", run.stderr, re.M), run.stderr  # log records, on stderr too


def test_log_dir_default(monkeypatch, tmp_path) -> None:
    from eo_dataset.logfile import log_dir

    monkeypatch.delenv("EO_DATASET_LOG_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert log_dir() == Path(tmp_path) / "eo-dataset" / "logs"
