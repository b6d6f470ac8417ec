"""Training tokenizers on the demo cube: outputs, resume (after a clean stop and after a crash), config errors, CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

import zarr  # noqa: E402

from eo_models.cli.main import main  # noqa: E402
from eo_models.errors import CheckpointError, ConfigError  # noqa: E402
from eo_models.tokenizers import Tokenizer  # noqa: E402
from eo_models.training.tokenizer import FIELDS, train_tokenizer  # noqa: E402

FAST = {"batch_size": 2, "crop": 32, "progress": False}  # a few CPU seconds per run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "train" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _steps(out: Path) -> list[int]:
    return [int(r["step"]) for r in _rows(out)]


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "train" / "checkpoint.pt", map_location="cpu", weights_only=False)


def test_train_writes_a_loadable_tokenizer(demo_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "s2"
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=2, log_every=1, **FAST)
    assert (r.out, r.steps, r.samples) == (out, 2, 4) and r.seconds > 0 and r.samples_per_s > 0
    assert {"loss", "rec", "quant"} <= set(r.last)
    for name in ("model.safetensors", "config.json", "README.md", "train/metrics.csv", "train/checkpoint.pt"):
        assert (out / name).is_file(), name
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2] and list(rows[0]) == FIELDS
    assert float(rows[-1]["loss"]) == pytest.approx(r.last["loss"], rel=1e-4)
    assert _checkpoint(out)["step"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["modality"]["name"] == "s2l2a" and cfg["train"]["steps"] == 2 and cfg["train"]["crop"] == 32
    tok = Tokenizer.from_pretrained(out)
    assert tok.modality == "s2l2a" and tok.codebook_size == 1000 and not tok.training


def test_resume_continues_from_the_checkpoint(demo_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "s2"
    train_tokenizer(demo_cube, "s2l2a", out, steps=2, log_every=1, **FAST)
    first = _checkpoint(out)["model"]
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=4, log_every=1, **FAST)
    assert (r.steps, r.samples, r.trained) == (4, 4, 2)  # two more steps of two samples: it went on from step 2
    assert _steps(out) == [1, 2, 3, 4]  # no row twice
    assert _checkpoint(out)["step"] == 4
    assert any(not torch.equal(first[k], v) for k, v in _checkpoint(out)["model"].items())
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=4, log_every=1, **FAST)  # nothing left to do
    assert (r.steps, r.trained) == (4, 0) and _steps(out) == [1, 2, 3, 4]
    assert r.samples == 4 and r.samples_per_s > 0 and "loss" in r.last  # reported from the run that trained it


def test_a_crashed_run_resumes_from_its_last_checkpoint(demo_cube: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s2"
    real = Tokenizer.training_loss

    def crash_at_step_3(self, x, valid, step):  # noqa: ANN001, ANN202
        if step == 3:
            raise RuntimeError("killed")
        return real(self, x, valid, step)

    monkeypatch.setattr(Tokenizer, "training_loss", crash_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=5, log_every=1, checkpoint_every=2, **FAST)
    assert _checkpoint(out)["step"] == 2 and _steps(out) == [1, 2, 3]  # step 3 logged, not checkpointed
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(Tokenizer, "training_loss", real)
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=5, log_every=1, checkpoint_every=2, **FAST)
    assert (r.steps, r.samples) == (5, 6)  # steps 3, 4, 5 again
    assert _steps(out) == [1, 2, 3, 4, 5]  # the row of the lost step 3 was dropped and written again
    assert _checkpoint(out)["step"] == 5 and (out / "model.safetensors").exists()


def test_checkpoint_of_another_config(demo_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "s2"
    train_tokenizer(demo_cube, "s2l2a", out, steps=1, **FAST)
    with pytest.raises(CheckpointError, match=r"another config \(differs in \['quantizer'\]\).*resume=False"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=1, quantizer="vq", **FAST)
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=1, quantizer="vq", resume=False, log_every=1, **FAST)
    assert (r.steps, r.samples) == (1, 2) and _steps(out) == [1]
    assert json.loads((out / "config.json").read_text())["quantizer"]["type"] == "vq"
    (out / "train" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=2, quantizer="vq", **FAST)


def test_restart_replaces_only_what_training_wrote(demo_cube: Path, tmp_path: Path) -> None:
    """train/metrics.csv marks a training folder: resuming works (with other loader workers too), and starting over
    replaces the files training writes and keeps a user's files."""
    out = tmp_path / "s2"
    train_tokenizer(demo_cube, "s2l2a", out, steps=1, log_every=1, **FAST)
    assert (out / "train" / "metrics.csv").is_file()
    (out / "notes.txt").write_text("keep me")
    (out / "train" / "my-plot.png").write_bytes(b"png")
    first = (out / "model.safetensors").read_bytes()
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=1, log_every=1, num_workers=1, **FAST)  # not the model's
    assert (r.steps, r.trained) == (1, 0)
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=1, quantizer="vq", resume=False, log_every=1, **FAST)
    assert (r.steps, r.trained) == (1, 1) and _steps(out) == [1]
    assert (out / "notes.txt").read_text() == "keep me" and (out / "train" / "my-plot.png").read_bytes() == b"png"
    assert (out / "model.safetensors").read_bytes() != first
    assert json.loads((out / "config.json").read_text())["quantizer"]["type"] == "vq"


def test_an_output_that_is_not_a_training_folder(demo_cube: Path, tmp_path: Path) -> None:
    from eo_dataset.errors import OutputError

    user = tmp_path / "runs"
    user.mkdir()
    (user / "results.csv").write_text("run,score\n")
    for resume in (True, False):
        with pytest.raises(OutputError, match=r"not a tokenizer folder written by train-tokenizer \(no "
                                              r"train/metrics.csv\); it is left untouched"):
            train_tokenizer(demo_cube, "s2l2a", user, steps=1, resume=resume, **FAST)
    assert [p.name for p in user.iterdir()] == ["results.csv"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        train_tokenizer(demo_cube, "s2l2a", tmp_path / "file", steps=1, **FAST)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_tokenizer(demo_cube, "s2l2a", empty, steps=1, **FAST).steps == 1  # an empty folder is fine


def _cube_without(cube: Path, modality: str, dst: Path) -> Path:
    """A copy of ``cube`` (hard links) where no sample has ``modality``."""
    shutil.copytree(cube, dst, copy_function=os.link)
    name = f"{modality}_available"
    shutil.rmtree(dst / name)
    shutil.copytree(cube / name, dst / name)  # a real copy: the write below must not reach the original
    arr = zarr.open_array(dst / name, mode="r+")
    arr[:] = False
    return dst


def test_config_errors(demo_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    fast = {k: v for k, v in FAST.items() if k != "crop"}
    with pytest.raises(ConfigError, match=r"train.crop 60 px is 60 px of s2l2a .* not a multiple of 8"):
        train_tokenizer(demo_cube, "s2l2a", out, crop=60, **fast)
    with pytest.raises(ConfigError, match="not a multiple of 16.*diffusion"):
        train_tokenizer(demo_cube, "s2l2a", out, crop=40, decoder="diffusion", **fast)
    with pytest.raises(ConfigError, match="landsat.*multiple of 3"):
        train_tokenizer(demo_cube, "landsat", out, crop=64, **fast)
    with pytest.raises(ConfigError, match="crop must be an int in 1..264"):
        train_tokenizer(demo_cube, "s2l2a", out, crop=512, **fast)
    with pytest.raises(ConfigError, match="has no modality 'nope'.*s2l2a"):
        train_tokenizer(demo_cube, "nope", out, **FAST)
    with pytest.raises(ConfigError, match=r"quantizer.type: expected one of \['fsq', 'vq', 'sigmoid_fsq'\], "
                       r"found 'pq'"):
        train_tokenizer(demo_cube, "s2l2a", out, quantizer="pq", **FAST)
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder: {patchh: 8}\n")
    with pytest.raises(ConfigError, match=r"encoder: unknown keys \['patchh'\]"):
        train_tokenizer(demo_cube, "s2l2a", out, config=bad, **FAST)
    with pytest.raises(ConfigError, match="neither a file nor a bundled config"):
        train_tokenizer(demo_cube, "s2l2a", out, config="huge", **FAST)
    empty = _cube_without(demo_cube, "lulc", tmp_path / "no-lulc.zarr")
    with pytest.raises(ConfigError, match="no sample of .* has modality 'lulc'"):
        train_tokenizer(empty, "lulc", out, **FAST)
    assert not out.exists()  # nothing was written for any of these


def test_cli_train_tokenizer(demo_cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lulc"

    def args(modality: str = "lulc", crop: str = "32") -> list[str]:
        return ["train-tokenizer", "--cube", str(demo_cube), "--modality", modality, "--quantizer", "vq",
                "--decoder", "gan", "--steps", "1", "--batch-size", "2", "--crop", crop, "--out", str(out), "--quiet"]

    assert main(args()) == 0
    printed = capsys.readouterr().out
    assert f"{out}: 1 steps" in printed and "metrics.csv" in printed
    assert Tokenizer.from_pretrained(out).cfg.quantizer.type == "vq"
    assert main(args(modality="nope")) == 2
    err = capsys.readouterr().err
    assert err.startswith("eo-models: error:") and "no modality 'nope'" in err
    assert main(args(crop="60")) == 2
    assert "not a multiple of 8" in capsys.readouterr().err


# -- Lightning: accumulation, precision, hardware, quiet, interrupts ---------------------------------------------------
def test_accumulation_and_bf16(demo_cube: Path, tmp_path: Path) -> None:
    """--accumulate 2: a step is two micro-batches (twice the samples); --precision bf16 trains under autocast (on a
    CPU too) and a run resumes with another precision (no part of the model)."""
    out = tmp_path / "s2"
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=2, accumulate=2, precision="bf16", log_every=1, **FAST)
    assert (r.steps, r.samples, r.trained) == (2, 8, 2)
    assert [int(row["samples"]) for row in _rows(out)] == [4, 8]
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert (cfg["accumulate"], cfg["precision"]) == (2, "bf16")
    r = train_tokenizer(demo_cube, "s2l2a", out, steps=3, accumulate=2, precision="32", log_every=1, **FAST)
    assert (r.steps, r.trained, r.samples) == (3, 1, 4) and _steps(out) == [1, 2, 3]
    with pytest.raises(CheckpointError, match=r"differs in \['train'\]"):  # accumulation changes the optimisation
        train_tokenizer(demo_cube, "s2l2a", out, steps=4, accumulate=1, **FAST)


def test_hardware_errors_write_nothing(demo_cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    with pytest.raises(ConfigError, match="devices must be an int >= 1, found 0"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=1, devices=0, **FAST)
    with pytest.raises(ConfigError, match="device must be cpu, cuda, cuda:N, mps or auto, found 'tpu'"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=1, device="tpu", **FAST)
    with pytest.raises(ConfigError, match=r"train\.precision: expected one of \['32', 'bf16', '16'\], found '8'"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=1, precision="8", **FAST)
    with pytest.raises(ConfigError, match=r"train\.accumulate: expected greater than or equal to 1, found 0"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=1, accumulate=0, **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA device"):
            train_tokenizer(demo_cube, "s2l2a", out, steps=1, device="cuda", **FAST)
    assert not out.exists()


def test_lightning_is_quiet(demo_cube: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Nothing of Lightning on the terminal (no 'GPU available', no model summary, no warnings): all of it is in
    train/lightning.log; the logging setup is left as it was."""
    import logging

    before = [(lg.handlers[:], lg.propagate, lg.level) for lg in map(logging.getLogger, ("lightning.pytorch",
                                                                                          "lightning.fabric"))]
    out = tmp_path / "s2"
    train_tokenizer(demo_cube, "s2l2a", out, steps=1, **FAST)
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""
    log = (out / "train" / "lightning.log").read_text()
    assert "GPU available" in log
    assert [(lg.handlers, lg.propagate, lg.level) for lg in map(logging.getLogger, ("lightning.pytorch",
                                                                                     "lightning.fabric"))] == before


def test_ctrl_c_is_a_keyboard_interrupt(demo_cube: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on; train_tokenizer raises
    KeyboardInterrupt and puts the handler back, so the command line says how to resume (exit status 130)."""
    import signal

    handler = signal.getsignal(signal.SIGINT)

    def interrupted(self, x, valid, step):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(Tokenizer, "training_loss", interrupted)
    out = tmp_path / "s2"
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(demo_cube, "s2l2a", out, steps=2, **FAST)
    assert signal.getsignal(signal.SIGINT) is handler
    code = main(["train-tokenizer", "--cube", str(demo_cube), "--modality", "s2l2a", "--steps", "2", "--batch-size",
                 "2", "--crop", "32", "--out", str(out), "--quiet"])
    assert code == 130 and "resume when run again" in capsys.readouterr().err


def test_earlier_folders_and_checkpoints(demo_cube: Path, tmp_path: Path) -> None:
    """A tokenizer folder of an earlier version (config.json without train.accumulate) loads; a checkpoint of the
    hand-written trainer before Lightning is refused with what to do."""
    out = tmp_path / "s2"
    train_tokenizer(demo_cube, "s2l2a", out, steps=1, **FAST)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["train"]["accumulate"]
    (out / "config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_pretrained(out).cfg.train.accumulate == 1
    old = {"config": cfg, "model": _checkpoint(out)["model"], "opt": {}, "dopt": None, "step": 1, "epoch": 0,
           "rng": torch.get_rng_state()}
    torch.save(old, out / "train" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"not a checkpoint of eo-models' Lightning trainer .*--restart"):
        train_tokenizer(demo_cube, "s2l2a", out, steps=2, **FAST)


def test_cli_config_errors_and_lightning_flags(demo_cube: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batchsize: 4, lr: fast}\n")
    base = ["train-tokenizer", "--cube", str(demo_cube), "--modality", "s2l2a", "--steps", "2", "--batch-size", "2",
            "--crop", "32", "--quiet"]
    assert main([*base, "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eo-models: error: train: unknown keys ['batchsize']")
    assert "; train.lr: expected a valid number" in err and "found 'fast'" in err and not (tmp_path / "x").exists()
    out = tmp_path / "s2"
    assert main([*base, "--out", str(out), "--accumulate", "2", "--precision", "bf16", "--devices", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 2 steps")
    assert [int(r["samples"]) for r in _rows(out)] == [8]
    assert json.loads((out / "config.json").read_text())["train"]["accumulate"] == 2
