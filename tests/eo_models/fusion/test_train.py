"""Fusion training resumes exactly: a run stopped after step 3 (checkpoint at step 2) and resumed ends with the same
weights, EMA included, as a run never stopped (the loader's position is in the checkpoint: the resumed run goes on
with the batch after the checkpoint's, not from the start of its epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from eo_models.fusion.config import ArchConfig, FusionConfig, FusionTrainConfig, TokenModality  # noqa: E402
from eo_models.fusion.masking import MaskingConfig  # noqa: E402
from eo_models.fusion.train import FusionModule, TokenDataModule  # noqa: E402
from eo_models.training.core import Hardware, StepCheckpoint, fit, make_trainer, quiet_lightning  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODS = (TokenModality(name="a", kind="image", vocab_size=11, grid=(2, 3)),
        TokenModality(name="cap", kind="sequence", vocab_size=17, length=6))
CFG = FusionConfig(modalities=MODS, model=ArchConfig(dim=32, heads=4),
                   masking=MaskingConfig(input_tokens=4, target_tokens=4, exclude_invalid_targets=False),
                   train=FusionTrainConfig(batch_size=2, steps=6, warmup=1, checkpoint_every=2, log_every=1, ema=0.9))


class Stop(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.step == 3:
            raise RuntimeError("stopped")


class Seen(Callback):
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append(batch["a"][:, 0].tolist())


def _data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"a": torch.randint(0, 11, (6,), generator=g), "a_available": torch.tensor(True),
             "cap": torch.randint(0, 17, (6,), generator=g), "cap_available": torch.tensor(True)} for _ in range(8)]


def _run(out: Path, *, stop: bool = False, resume: bool = False) -> tuple[FusionModule, list[list[int]]]:
    state, seen = out / "checkpoint.pt", Seen()
    module = FusionModule(CFG)
    with quiet_lightning(False):
        trainer = make_trainer(out, Hardware(), callbacks=[StepCheckpoint(state, 2), seen, *([Stop()] if stop else [])])
        torch.manual_seed(0)
        dm = TokenDataModule(_data(), list(range(8)), batch_size=2, seed=0)
        try:
            fit(trainer, module, dm, ckpt_path=state if resume else None)
        except RuntimeError as exc:
            assert "stopped" in str(exc)
    return module, seen.batches


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    full, full_batches = _run(tmp_path / "full")
    _, first = _run(tmp_path / "cut", stop=True)
    resumed, rest = _run(tmp_path / "cut", resume=True)
    assert full.step == resumed.step == 6
    assert first == full_batches[:3] and rest == full_batches[2:]  # step 3 (after the checkpoint) is trained again
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
