"""The tokenizer example runs on the demo cube: trains, evaluates, reloads, tokenizes and reconstructs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vector_quantize_pytorch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tokenize_demo.py"


def test_tokenize_demo(demo_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    run = subprocess.run([sys.executable, str(EXAMPLE), "--cube", str(demo_cube), "--out", str(out), "--steps", "4"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"trained 4 steps at [\d.]+ samples/s", run.stdout), run.stdout
    m = re.search(r"4 samples -> tokens \(4, 8, 8\) \(ids 0\.\.(\d+)\) -> reconstruction \(4, 12, 64, 64\)", run.stdout)
    assert m and int(m.group(1)) == 999, run.stdout
    assert (out / "model.safetensors").is_file() and (out / "demo_tokens.pt").is_file()


def test_fusion_demo(demo_cube: Path, tmp_path: Path) -> None:
    example = EXAMPLE.parent / "fusion_demo.py"
    work = tmp_path / "work"
    run = subprocess.run([sys.executable, str(example), "--cube", str(demo_cube), "--work", str(work),
                          "--tokenizer-steps", "2", "--steps", "4", "--generation-steps", "1"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'lulc_tokens': (33, 33), 's2l2a_tokens': (33, 33)" in run.stdout, run.stdout
    assert re.search(r"fusion model: [\d.]+ M parameters, 4 steps", run.stdout), run.stdout
    m = re.search(r"land cover agrees with the cube on (\d+)% of pixels of (\d+) samples", run.stdout)
    assert m and 0 <= int(m.group(1)) <= 100 and int(m.group(2)) > 0, run.stdout
    assert "embeddings: (32, 128) pooled, (32, 33, 33, 128) per token" in run.stdout, run.stdout
    for store in ("tokens.zarr", "generated.zarr", "embeddings.zarr"):
        assert (work / store / "zarr.json").is_file()
