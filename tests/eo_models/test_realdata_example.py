"""The real-data smoke example runs on the five TerraMind places with tiny models trained on the demo cube, and its
markdown table holds finite metrics in range for every modality and for S2 -> land cover generation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import realdata

pytest.importorskip("vector_quantize_pytorch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "realdata_smoke.py"


def rows(markdown: str) -> dict[str, dict[str, str]]:
    """The table's rows by modality, as {column: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True))
        out[cells["modality"]] = cells
    return out


def number(cell: str) -> float:
    value = float(cell.split()[0])
    assert math.isfinite(value), cell
    return value


@pytest.fixture(scope="session")
def realdata_root() -> Path:
    """shared/realdata, or a skip with the reason (before the demo cube is built)."""
    return realdata("terramind").parent


def test_realdata_smoke(realdata_root: Path, demo_cube: Path, tmp_path: Path) -> None:
    root = realdata_root
    work = tmp_path / "work"
    run = subprocess.run([sys.executable, str(EXAMPLE), "--realdata", str(root), "--work", str(work),
                          "--demo-cube", str(demo_cube), "--tokenizer-steps", "1", "--fusion-steps", "2",
                          "--generation-steps", "1"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Loading weights" not in run.stdout  # quiet
    md = (work / "realdata.md").read_text()
    assert md in run.stdout and "Command: `python examples/realdata_smoke.py --realdata" in md
    table = rows(md)
    assert set(table) == {"s2l2a", "s1rtc", "dem", "lulc", "s2l2a -> lulc"}, table
    for m in ("s2l2a", "s1rtc", "dem"):
        r = table[m]
        assert r["samples"] == "5" and number(r["real px scored"]) > 0, r
        assert 0 < number(r["PSNR (dB)"]) < 100 and -1 <= number(r["SSIM"]) <= 1 and number(r["MAE"]) >= 0, r
    for m in ("lulc", "s2l2a -> lulc"):
        r = table[m]
        assert r["samples"] == "5" and 0 <= number(r["accuracy"]) <= 1 and 0 <= number(r["mIoU"]) <= 1, r
    # generation is scored on every real pixel: 5 tiles of 224 x 224 px, none of the padding around them
    assert number(table["s2l2a -> lulc"]["real px scored"]) == 5 * 224 * 224
    assert table["s2l2a -> lulc"]["accuracy"] != ""
    result = json.loads((work / "realdata.json").read_text())
    for m, r in result["reconstruction"].items():  # the largest centre crops inside the real tiles: 184 px at 10 m
        assert r["valid_fraction"] == 1.0 and r["crop_px"] == (56 if m == "dem" else 184), (m, r["crop_px"])
    assert number(table["s2l2a"]["real px scored"]) == 5 * 184 * 184
    # the TerraMesh land cover indices were mapped to Esri codes: snow/ice (the Hudson Bay tile), never "built area"
    assert "snow/ice" in result["generation"]["classes_present"]
