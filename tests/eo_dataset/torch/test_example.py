"""The training example runs on the demo cube (CPU, workers, samplers) and its loss goes down."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "train_tiny_head.py"


def test_train_tiny_head(demo_cube: Path) -> None:
    run = subprocess.run([sys.executable, str(EXAMPLE), "--cube", str(demo_cube), "--steps", "15"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    m = re.search(r"first 5 steps ([\d.]+), of the last 5 ([\d.]+)", run.stdout)
    assert m, run.stdout
    first, last = float(m.group(1)), float(m.group(2))
    assert last < 0.8 * first, run.stdout

