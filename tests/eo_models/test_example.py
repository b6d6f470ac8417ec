"""The tokenizer example runs on the demo cube: trains, evaluates, reloads, tokenizes and reconstructs."""

from __future__ import annotations

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
