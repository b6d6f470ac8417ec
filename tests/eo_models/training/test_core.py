"""The Lightning core in separate processes: DDP on CPUs (gloo) with two ranks, and a run killed with SIGKILL after its
first checkpoint that a rerun continues (same steps, same metrics file)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

from eo_models.config import CONFIG_DIR  # noqa: E402

#: The tiny config with the discriminator on from step 2, so both optimisers step under DDP and after a resume.
CONFIG = (CONFIG_DIR / "tokenizer-tiny.yaml").read_text().replace("disc_start: 30", "disc_start: 2")

#: A training script: train_tokenizer with a callback that records, per rank, the samples it trained on and its
#: final weights; with --sleep-at N it stops for good after optimiser step N (for the test to kill it).
DRIVER = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path

    import torch
    from lightning.pytorch.callbacks import Callback

    from eo_models.training.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    cube, out, record = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    devices, sleep_at = int(sys.argv[4]), int(sys.argv[5])


    class Record(Callback):
        def __init__(self):
            self.ids = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.ids += [int(i) for i in batch["index"]]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if module.stepped and module.step == sleep_at:
                (record / "asleep").write_text(str(module.step))
                time.sleep(600)  # the test kills us here

        def on_train_end(self, trainer, module):
            torch.save({"ids": self.ids, "state": module.tokenizer.state_dict(), "world": trainer.world_size},
                       record / f"rank{trainer.global_rank}.pt")


    r = train_tokenizer(cube, "s2l2a", out, config=sys.argv[6], steps=int(sys.argv[7]), batch_size=2, crop=32,
                        devices=devices, progress=False, callbacks=[Record()])
    print(json.dumps({"rank": r.global_rank, "steps": r.steps, "trained": r.trained, "samples": r.samples}))
''')

TIMEOUT = 240  # seconds for a subprocess (imports alone take ~10 s on a busy 2-core machine)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "train" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the training process ended ({proc.returncode}) before writing {path.name}:\n"
                                 + proc.stderr.read())
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {path.name} after {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def driver(tmp_path: Path) -> tuple[Path, Path]:
    script, config = tmp_path / "driver.py", tmp_path / "tiny-disc2.yaml"
    script.write_text(DRIVER)
    config.write_text(CONFIG)
    return script, config


def test_ddp_two_cpu_ranks_see_different_samples_and_end_identical(demo_cube: Path, tmp_path: Path,
                                                                    driver: tuple[Path, Path]) -> None:
    """Two processes (Lightning starts the second by running the script again), gloo: each rank trains on its own
    samples, gradients are averaged, so both end with the same weights; rank 0 writes the folder."""
    script, config = driver
    out, record = tmp_path / "s2", tmp_path / "record"
    record.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(demo_cube), str(out), str(record), "2", "0", str(config),
                           "4"], capture_output=True, text=True, env=_env(), timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # the ranks share one stdout: their lines can run together, so each JSON object is found by itself
    results = sorted((json.loads(obj) for obj in re.findall(r"\{[^{}]*\}", proc.stdout)),
                     key=lambda r: r["rank"])  # rank 1 inherits rank 0's stdout
    assert results == [{"rank": r, "steps": 4, "trained": 4, "samples": 16} for r in (0, 1)]
    assert "GPU available" not in proc.stderr + proc.stdout  # Lightning's messages go to the log file
    assert "Initializing distributed" in (out / "train" / "lightning.log").read_text()
    end = time.monotonic() + TIMEOUT  # rank 1 is the child of rank 0 and may still be saving
    while not (record / "rank1.pt").exists() and time.monotonic() < end:
        time.sleep(0.2)
    ranks = [torch.load(record / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    ids0, ids1 = ranks[0]["ids"], ranks[1]["ids"]
    assert len(ids0) == len(ids1) == 8 and not set(ids0) & set(ids1)  # 4 steps of 2 samples, none shared
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    assert state0.keys() == state1.keys() and any("discriminator" in k for k in state0)
    assert all(torch.equal(state0[k], state1[k]) for k in state0)
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [4] and int(rows[0]["samples"]) == 16  # log_every 5: the last step
    assert rows[0]["disc"]  # the discriminator stepped (from step 2)
    checkpoint = torch.load(out / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 4 and all(torch.equal(checkpoint["model"][k], state0[k]) for k in state0)
    assert (out / "model.safetensors").is_file()


def test_a_killed_run_continues_where_its_checkpoint_left_it(demo_cube: Path, tmp_path: Path,
                                                             driver: tuple[Path, Path]) -> None:
    """SIGKILL after step 3 (checkpoint at step 2, metrics row 3 written): the command run again continues the same
    run from step 2 to the same final step; the rows of steps 1-2 stay as they were, the lost step 3 is redone."""
    script, config = driver
    config.write_text(CONFIG.replace("log_every: 5", "log_every: 1").replace("checkpoint_every: 20",
                                                                          "checkpoint_every: 2"))
    out, record = tmp_path / "s2", tmp_path / "record"
    record.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(demo_cube), str(out), str(record), "1", "3",
                             str(config), "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=tmp_path)
    try:
        _wait_for(record / "asleep", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    before = _rows(out)
    assert [int(r["step"]) for r in before] == [1, 2, 3]
    assert torch.load(out / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 2
    assert not (out / "model.safetensors").exists()

    # the same training again, from the command line this time
    cli = [sys.executable, "-m", "eo_models.cli", "train-tokenizer", "--cube", str(demo_cube), "--modality", "s2l2a",
           "--config", str(config), "--steps", "5", "--batch-size", "2", "--crop", "32", "--out", str(out), "--quiet"]
    again = subprocess.run(cli, capture_output=True, text=True, env=_env(), timeout=TIMEOUT, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{out}: 5 steps") and again.stderr == ""
    after = _rows(out)
    assert [int(r["step"]) for r in after] == [1, 2, 3, 4, 5]
    assert after[:2] == before[:2]  # the same file, continued
    assert [int(r["samples"]) for r in after[2:]] == [2, 4, 6]  # steps 3, 4, 5 trained by the second run
    assert all(r["disc"] for r in after[2:])  # the discriminator's optimiser was restored and steps on
    state = torch.load(out / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 5 and (out / "model.safetensors").is_file()


def test_accumulation_is_one_big_batch(tmp_path: Path) -> None:
    """The core on a toy model: 2 micro-batches of 2 per step end with the weights of batches of 4 (SGD, mean
    losses), the rows count steps and samples, and a step's logged loss is the mean of its micro-batches."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    from eo_models.training.core import CSVMetrics, Hardware, StepModule, fit, make_trainer, quiet_lightning

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)

    class Toy(StepModule):
        def configure_model(self) -> None:
            torch.manual_seed(0)
            self.net = torch.nn.Linear(3, 1)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

        def micro_step(self, batch, step):  # noqa: ANN001, ANN202
            loss = ((self.net(batch[0]) - batch[1]) ** 2).mean()
            self.scaled_backward(loss)
            return len(batch[0]), {"loss": float(loss.detach())}

    class Data(L.LightningDataModule):
        def __init__(self, batch_size: int) -> None:
            super().__init__()
            self.batch_size = batch_size

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(x, y), batch_size=self.batch_size)

    weights, rows = [], []
    for accumulate, batch in ((2, 2), (1, 4)):
        module = Toy(steps=2, accumulate=accumulate, log_every=1, fields=["step", "samples", "loss"])
        csv_path = tmp_path / f"acc{accumulate}.csv"
        metrics = CSVMetrics(csv_path, module.fields)
        with quiet_lightning():
            trainer = make_trainer(tmp_path, Hardware(), loggers=[metrics])
            metrics.start()
            fit(trainer, module, Data(batch))
        assert (module.step, module.samples, module.steps_done) == (2, 8, 2)
        weights.append(torch.cat([p.detach().flatten() for p in module.net.parameters()]))
        rows.append(_rows_of(csv_path))
    torch.testing.assert_close(weights[0], weights[1])
    assert [[(r["step"], r["samples"]) for r in rs] for rs in rows] == [[("1", "4"), ("2", "8")]] * 2
    # the first step's loss: the mean of two micro-batch means = the mean over 4 (same weights before the step)
    assert float(rows[0][0]["loss"]) == pytest.approx(float(rows[1][0]["loss"]), rel=1e-6)


def _rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
