"""The fusion stage on real demo tokens: overfitting a handful of samples then generating their tokens back, training
from a token store and from the cube on the fly (CLI), resume after SIGKILL, DDP with two CPU processes, and
``generate``/``embed`` writing stores aligned with the cube that resume after a crash."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

import xarray as xr  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from eo_models.cli.main import main  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402
from eo_models.fusion import apply as apply_module  # noqa: E402
from eo_models.fusion.apply import embed_cube, generate_cube  # noqa: E402
from eo_models.fusion.config import TokenModality, load_fusion_config  # noqa: E402
from eo_models.fusion.generation import Schedule, generate  # noqa: E402
from eo_models.fusion.masking import MaskingConfig, sample_masks  # noqa: E402
from eo_models.fusion.model import FusionModel  # noqa: E402
from eo_models.fusion.train import lr_factor, train_fusion  # noqa: E402
from eo_models.tokenizers.text import train_caption_tokenizer  # noqa: E402
from eo_models.tokens.dataset import TokenDataset, token_specs  # noqa: E402
from eo_models.tokens.store import tokenize_cube  # noqa: E402
from eo_models.training.tokenizer import train_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Tokenizers with one token per 32 px: 8 x 8 tokens per 264 px sample (a ViT patch embedding: cheap on a CPU).
MICRO = """\
name: micro
quantizer: {type: fsq, levels: [8, 5, 5, 5], codebook_size: 64, codebook_dim: 4}
encoder: {type: vit, patch: 32, dim: 16, depth: 1, heads: 2, latent_dim: 8}
decoder: {type: gan, dim: 8, disc_start: 1000, disc_dim: 8}
train: {crop: 64, batch_size: 2, steps: 2, log_every: 1}
"""
#: A smaller fusion config for the CLI runs.
SMALLER = """\
name: test
model: {dim: 64, encoder_depth: 1, decoder_depth: 1, heads: 2}
masking: {input_tokens: 32, target_tokens: 32}
train: {batch_size: 4, steps: 4, lr: 0.001, warmup: 1, log_every: 1, checkpoint_every: 2, num_workers: 0}
"""
TIMEOUT = 240


@pytest.fixture(scope="module")
def toks(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fusion-tokenizers")
    config = root / "micro.yaml"
    config.write_text(MICRO)
    out = {m: train_tokenizer(demo_cube, m, root / m, config=config, progress=False).out for m in ("s2l2a", "lulc")}
    caption = train_caption_tokenizer(demo_cube, vocab_size=400)
    caption.save_pretrained(root / "caption")
    out["caption"] = root / "caption"
    return out


@pytest.fixture(scope="module")
def store(demo_cube: Path, toks: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fusion-tokens") / "tokens.zarr"
    return tokenize_cube(demo_cube, list(toks.values()), out, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fusion")
    (root / "test.yaml").write_text(SMALLER)
    return train_fusion(root / "model", tokens=store, config=root / "test.yaml", progress=False).out


def test_overfits_a_handful_of_samples_then_generates_their_tokens(store: Path) -> None:
    specs = token_specs(store)
    ds = TokenDataset(store)
    idx = [i for i in range(len(ds)) if all(bool(ds[i][f"{m}_available"]) for m in specs)][:4]
    batch = default_collate([ds[i] for i in idx])
    cfg = load_fusion_config("tiny", [TokenModality.from_spec(s) for s in specs.values()], steps=600, lr=2e-3)
    # input budgets below one modality's 64 tokens: training also sees s2l2a alone as input, as generation will
    cfg = dataclasses.replace(cfg, masking=MaskingConfig(input_tokens=48, target_tokens=96))
    torch.manual_seed(0)
    model = FusionModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg.train))
    for step in range(cfg.train.steps):  # the real budget sampler: Dirichlet splits over the available modalities
        masks = sample_masks(batch, cfg.masking, sequences=frozenset({"caption"}),
                             generator=torch.Generator().manual_seed(step))
        out = model(batch, masks.input, masks.target)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
    assert float(out.loss.detach()) < 0.1
    model.eval()
    sep = specs["caption"].special_id("sep")
    real = batch["caption"] >= 0
    for steps in (1, 8):
        gen = generate(model, batch, ["lulc", "caption"], conditioning=["s2l2a"],
                       schedule=Schedule(steps=steps, temperature=0.0), stop={"caption": [sep]})
        assert float((gen["lulc"] == batch["lulc"]).float().mean()) > 0.95
        # the caption, token by token from nothing: most of it right, ended by [SEP], nothing after it
        assert float((gen["caption"][real] == batch["caption"][real]).float().mean()) > 0.9
        for row in gen["caption"]:
            ends = (row == sep).nonzero().flatten()
            assert len(ends) == 1 and (row[int(ends[0]) + 1:] == -1).all()


def test_train_fusion_from_a_store(trained: Path, store: Path) -> None:
    model = FusionModel.from_pretrained(trained)
    assert model.modalities == ("s2l2a", "lulc", "caption")
    specs = token_specs(store)
    assert [m.digest for m in model.cfg.modalities] == [specs[m].digest for m in model.modalities]
    assert model.cfg.recipe_hash == xr.open_zarr(store).attrs["recipe_hash"]
    rows = (trained / "train" / "fusion-metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"loss", "loss_s2l2a", "acc_lulc", "loss_caption", "lr"} <= set(header) and len(rows) == 5
    card = (trained / "README.md").read_text()
    assert "4M4EO fusion model" in card and specs["s2l2a"].digest[:12] in card


def test_cli_train_from_the_cube_on_the_fly_and_errors(demo_cube: Path, toks: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "test.yaml"
    config.write_text(SMALLER)
    out = tmp_path / "online"
    assert main(["train-fusion", "--cube", str(demo_cube), "--tokenizers", str(toks["s2l2a"]), str(toks["lulc"]),
                 "--config", str(config), "--steps", "2", "--precision", "bf16", "--out", str(out), "--quiet"]) == 0
    assert "2 steps" in capsys.readouterr().out
    assert FusionModel.from_pretrained(out).modalities == ("s2l2a", "lulc")
    # a folder that is not ours is refused and left alone
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["train-fusion", "--cube", str(demo_cube), "--tokenizers", str(toks["s2l2a"]), "--config",
                 str(config), "--out", str(foreign), "--quiet"]) == 2
    assert "left untouched" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="either a token store"):
        train_fusion(tmp_path / "x", progress=False)


DRIVER = textwrap.dedent('''
    import json, sys, time
    import torch
    from lightning.pytorch.callbacks import Callback
    from eo_models.fusion.train import train_fusion

    torch.set_num_threads(1)
    store, out, config, devices, sleep_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])


    class Sleep(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if module.stepped and module.step == sleep_at:
                open(out + ".asleep", "w").write(str(module.step))
                time.sleep(600)  # the test kills us here

        def on_train_end(self, trainer, module):
            torch.save(module.model.state_dict(), out + f".rank{trainer.global_rank}.pt")


    r = train_fusion(out, tokens=store, config=config, devices=devices, progress=False, callbacks=[Sleep()])
    print(json.dumps({"rank": r.global_rank, "steps": r.steps, "trained": r.trained, "samples": r.samples}))
''')


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_killed_run_resumes_and_ddp_ranks_agree(store: Path, tmp_path: Path) -> None:
    script, config = tmp_path / "driver.py", tmp_path / "test.yaml"
    script.write_text(DRIVER)
    config.write_text(SMALLER)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(out), str(config), "1", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    asleep = Path(f"{out}.asleep")
    end = time.monotonic() + TIMEOUT
    while not asleep.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < end, "the run never reached step 3"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(out / "train" / "checkpoint.pt", weights_only=True)["step"] == 2
    done = subprocess.run([sys.executable, str(script), str(store), str(out), str(config), "1", "0"],
                          capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"rank": 0, "steps": 4, "trained": 2, "samples": 8}
    steps = [line.split(",")[0] for line in (out / "train" / "fusion-metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]  # row 3 of the killed run dropped, then written again

    ddp = tmp_path / "ddp"
    proc2 = subprocess.run([sys.executable, str(script), str(store), str(ddp), str(config), "2", "0"],
                           capture_output=True, text=True, env=_env(), timeout=TIMEOUT, cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr
    # the ranks share one stdout: their lines can run together, so each JSON object is found by itself
    ranks = sorted(json.loads(obj)["rank"] for obj in re.findall(r"\{[^{}]*\}", proc2.stdout))
    assert ranks == [0, 1]
    end = time.monotonic() + TIMEOUT
    while not Path(f"{ddp}.rank1.pt").exists() and time.monotonic() < end:
        time.sleep(0.2)
    a, b = (torch.load(f"{ddp}.rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients averaged: the same weights on both ranks


def test_generate_and_embed_stores_align_with_the_cube(trained: Path, demo_cube: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cube = xr.open_zarr(demo_cube)
    gen = tmp_path / "gen.zarr"
    assert main(["generate", "--fusion", str(trained), "--cube", str(demo_cube), "--from", "s2l2a", "--to",
                 "lulc,caption", "--steps", "2", "--out", str(gen), "--quiet"]) == 0
    g = xr.open_zarr(gen)
    assert list(g.sample_id.values) == list(cube.sample_id.values)
    assert g["lulc"].shape == cube["lulc"].shape and g["lulc"].dtype == cube["lulc"].dtype
    has = cube["s2l2a_available"].values
    assert (g["lulc_available"].values == has).all()
    classes = [int(c) for c in g.attrs["modalities"]["lulc"]["classes"]]
    inside = g["lulc"].values[has][:, :, 4:260, 4:260]  # the tokenizers' 256 px centre crop
    assert set(np.unique(inside).tolist()) <= set(classes)
    assert not g["lulc_valid"].values[has][:, :4].any() and g["lulc_valid"].values[has][:, 4:260, 4:260].all()
    assert g["lulc"].attrs["generated_from"]["conditioning"] == ["s2l2a"]
    assert all(isinstance(c, str) and c for c in g["caption"].values[has])
    assert main(["embed", "--fusion", str(trained), "--cube", str(demo_cube), "--out", str(tmp_path / "emb.zarr"),
                 "--quiet"]) == 0
    e = xr.open_zarr(tmp_path / "emb.zarr")
    assert e["embedding"].shape == (cube.sizes["sample"], 64) and e["s2l2a_patch"].shape[1:] == (8, 8, 64)
    assert list(e.sample_id.values) == list(cube.sample_id.values)
    assert np.isfinite(e["embedding"].values).all()  # every demo sample has some modality
    capsys.readouterr()

    # a crash in block 3 of 4: the rerun does blocks 3 and 4 only and ends with the same store
    calls = []
    real = apply_module.generate

    def crash(model, batch, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(apply_module, "generate", crash)
    again = tmp_path / "again.zarr"
    kwargs = {"source": "s2l2a", "target": "lulc,caption", "schedule": Schedule(steps=2), "progress": False}
    with pytest.raises(RuntimeError, match="killed"):
        generate_cube(trained, demo_cube, again, **kwargs)
    counted = []
    monkeypatch.setattr(apply_module, "generate", lambda *a, **k: counted.append(1) or real(*a, **k))
    generate_cube(trained, demo_cube, again, **kwargs)
    assert len(counted) == 2
    a = xr.open_zarr(again)
    assert (a["lulc"].values == g["lulc"].values).all() and (a["caption"].values == g["caption"].values).all()
    with pytest.raises(ConfigError, match="both source"):
        generate_cube(trained, demo_cube, tmp_path / "x.zarr", source="lulc", target="lulc", progress=False)
    with pytest.raises(ConfigError, match="no modality 'dem'"):
        embed_cube(trained, demo_cube, tmp_path / "e2.zarr", modalities="s2l2a,dem", progress=False)


def test_the_docs_python_snippet_runs(trained: Path, store: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/fusion.md's "From Python" block runs as written, in a folder with eo-fusion/tiny and tokens.zarr."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "fusion.md").read_text()
    (code,) = [b for b in text.split("```python\n")[1:] for b in [b.split("```")[0]] if "FusionModel" in b]
    (tmp_path / "eo-fusion").mkdir()
    (tmp_path / "eo-fusion" / "tiny").symlink_to(trained, target_is_directory=True)
    (tmp_path / "tokens.zarr").symlink_to(store, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/fusion.md", "exec"), scope)
    assert scope["tokens"]["lulc"].shape == (4, 64) and scope["emb"].pooled.shape == (4, 64)
