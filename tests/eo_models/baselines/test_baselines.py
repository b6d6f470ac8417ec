"""The baselines: late fusion zero-fills and flags a missing modality, modality dropout keeps one, the U-Net runs on
any subset, configs refuse unknown keys, and training on the Lightning core saves a model that loads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from eo_models.baselines.config import load_baseline_config  # noqa: E402
from eo_models.baselines.model import BaselineModel, load_baseline  # noqa: E402
from eo_models.baselines.train import batch_arrays, drop_modalities, train_baseline  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(kind: str = "late", **kw):
    return load_baseline_config("tiny", kind=kind, modalities=("a", "b"), channels=(3, 2), classes=4, dim=8,
                                head_dim=8, **kw)


@pytest.mark.parametrize("kind", ["late", "unet"])
def test_missing_modality_is_zero_filled_and_flagged(kind: str) -> None:
    torch.manual_seed(0)
    model = BaselineModel(_cfg(kind).to_dict()).eval()
    x = {"a": torch.randn(2, 3, 6, 6), "b": torch.randn(2, 2, 6, 6)}
    off = {"a": torch.tensor([True, True]), "b": torch.tensor([False, False])}
    out = model(x, off)
    assert out.seg.shape == (2, 4, 6, 6) and out.composition.shape == (2, 4) and out.height.shape == (2,)
    junk = {"a": x["a"], "b": torch.full((2, 2, 6, 6), 1e6)}  # what a missing input holds does not matter
    assert torch.allclose(model(junk, off).seg, out.seg)
    assert torch.allclose(model({"a": x["a"]}, {"a": off["a"]}).seg, out.seg)  # absent key: missing
    assert not torch.allclose(model(x, {"a": off["a"], "b": torch.tensor([True, True])}).seg, out.seg)


def test_modality_dropout_keeps_one_per_sample() -> None:
    avail = torch.tensor([[True, True, True]] * 200 + [[False, False, False]])
    kept = drop_modalities(avail, 0.9, torch.Generator().manual_seed(0))
    assert (kept[:200].sum(1) >= 1).all() and not kept[200].any() and (kept <= avail).all()
    assert kept[:200].sum() < 0.5 * avail[:200].sum()


def test_config_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="baseline config: .*kind"):
        load_baseline_config("tiny", kind="transformer")
    with pytest.raises(ConfigError, match="neither a file nor a bundled config"):
        load_baseline_config("huge")


def test_trains_on_the_core_saves_and_reuses(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, g = 24, 6
    a = rng.normal(size=(n, 3, g, g)).astype(np.float32)
    seg = (a[:, 0] > 0).astype(np.int64)
    arrays = batch_arrays({"a": a, "b": rng.normal(size=(n, 2, g, g)).astype(np.float32)},
                          {"a": np.ones(n, bool), "b": rng.random(n) > 0.5}, seg,
                          np.stack([seg.mean((1, 2)) > 0.5] * 4, 1).astype(np.float32), np.ones(n, bool),
                          a[:, 1].mean((1, 2)))
    cfg = _cfg("late", train={"steps": 40, "batch_size": 8, "lr": 0.01, "log_every": 10, "checkpoint_every": 20})
    model = train_baseline(tmp_path / "late", cfg, arrays, np.arange(n))
    assert (tmp_path / "late" / "model.safetensors").is_file() and (tmp_path / "late" / "train/metrics.csv").is_file()
    loaded = load_baseline(tmp_path / "late")
    x = {k: torch.from_numpy(arrays[k]) for k in ("a", "b")}
    av = {k: torch.from_numpy(arrays[f"{k}_available"]) for k in ("a", "b")}
    with torch.no_grad():
        pred = loaded(x, av).seg.argmax(1).numpy()
        assert torch.allclose(loaded(x, av).seg, model.eval()(x, av).seg)
    assert (pred == seg).mean() > 0.8  # learned the task (a separable one)
    stamp = (tmp_path / "late" / "model.safetensors").stat().st_mtime_ns
    train_baseline(tmp_path / "late", cfg, arrays, np.arange(n))
    assert (tmp_path / "late" / "model.safetensors").stat().st_mtime_ns == stamp  # finished: reused
