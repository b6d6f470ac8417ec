"""Training a baseline on the Lightning core (:mod:`eo_models.training.core`) from in-memory task-grid arrays.

The loss is the sum of three: cross-entropy of the per-cell segmentation (unknown cells ignored), binary
cross-entropy of the composition labels, and the squared error of the standardised regression target (samples
without a label or target leave that term out). Modality dropout: each available modality of a training sample is
dropped with probability ``modality_dropout`` (one always stays), so the model learns to use any subset.

``out`` ends as a model folder (``BaselineModel.from_pretrained(out)``: ``config.json``, ``model.safetensors``, the
model card ``README.md`` with the last training losses as metrics: ``eo-models push out --repo ID`` uploads exactly
these) with ``train/`` (checkpoint, ``metrics.csv``, Lightning's log). A finished folder with the same config is
reused; an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from eo_dataset.outputs import check_output
from eo_models.baselines.config import BaselineConfig
from eo_models.baselines.model import BaselineModel, load_baseline
from eo_models.errors import ConfigError
from eo_models.training.core import (
    CSVMetrics,
    Hardware,
    StepCheckpoint,
    StepModule,
    StepProgress,
    fit,
    make_trainer,
    quiet_lightning,
    read_rows,
    save_with_card,
)

MARKER = "train/metrics.csv"  #: the file that marks a folder written by train_baseline
FIELDS = ("step", "epoch", "samples", "seconds", "samples_per_s", "loss", "seg", "composition", "height")


class ArrayDataset(Dataset):
    """Rows ``indices`` of task-grid arrays as dicts of tensors."""

    def __init__(self, arrays: Mapping[str, np.ndarray], indices: np.ndarray) -> None:
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        self.indices = np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        return {k: v[j] for k, v in self.arrays.items()}


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def drop_modalities(available: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``available (B, M)`` with each True dropped with probability ``p``, keeping at least one per sample that had
    any."""
    if p <= 0 or available.shape[1] < 2:
        return available
    keep = available & (torch.rand(available.shape, generator=generator) >= p)
    lost = available.any(1) & ~keep.any(1)
    if lost.any():  # keep one random available modality of those samples
        score = torch.rand(available.shape, generator=generator) * available
        keep[lost] = F.one_hot(score[lost].argmax(1), available.shape[1]).bool()
    return keep


def losses(model: BaselineModel, batch: Mapping[str, torch.Tensor], available: torch.Tensor
           ) -> dict[str, torch.Tensor]:
    """The three losses of a batch (``available (B, M)`` in the model's modality order) and their sum."""
    names = model.cfg.modalities
    out = model({m: batch[m] for m in names}, {m: available[:, i] for i, m in enumerate(names)})
    seg_truth = batch["seg"]
    zero = out.seg.sum() * 0
    seg = F.cross_entropy(out.seg, seg_truth, ignore_index=-1) if (seg_truth >= 0).any() else zero
    has = batch["has_labels"]
    comp = F.binary_cross_entropy_with_logits(out.composition[has], batch["composition"][has]) if has.any() else zero
    h = batch["height"]
    ok = torch.isfinite(h)
    cfg = model.cfg
    height = F.mse_loss((out.height[ok] - cfg.height_mean) / cfg.height_std,
                        (h[ok] - cfg.height_mean) / cfg.height_std) if ok.any() else zero
    return {"loss": seg + comp + height, "seg": seg, "composition": comp, "height": height}


class BaselineModule(StepModule):
    """A :class:`BaselineModel` in training on the Lightning core."""

    def __init__(self, cfg: BaselineConfig) -> None:
        t = cfg.train
        super().__init__(steps=t.steps, log_every=t.log_every, seed=cfg.seed, config=cfg.to_dict(), fields=FIELDS,
                         label=f"{cfg.kind} {'+'.join(cfg.modalities)}")
        self.cfg = cfg
        self.model: BaselineModel | None = None

    def configure_model(self) -> None:
        if self.model is None:
            torch.manual_seed(self.cfg.seed)
            self.model = BaselineModel(self.cfg.to_dict())

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        return torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def micro_step(self, batch: Any, step: int) -> tuple[int, dict[str, float]]:
        t = self.cfg.train
        for group in self.all_optimizers()[0].param_groups:
            group["lr"] = t.lr * lr_factor(step, t.steps, t.warmup)
        avail = torch.stack([batch[f"{m}_available"] for m in self.cfg.modalities], 1)
        avail = drop_modalities(avail, self.cfg.modality_dropout)
        out = losses(self.model, batch, avail)
        self.scaled_backward(out["loss"])
        return len(batch["seg"]), {k: float(v.detach()) for k, v in out.items()}


class _Data(L.LightningDataModule):
    def __init__(self, dataset: ArrayDataset, batch_size: int, seed: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        sampler = RandomSampler(self.dataset, replacement=True, num_samples=10**8, generator=gen)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, drop_last=False)


def batch_arrays(inputs: Mapping[str, np.ndarray], available: Mapping[str, np.ndarray], seg: np.ndarray,
                 composition: np.ndarray, has_labels: np.ndarray, height: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays a baseline trains on, as one dict (``<m>``, ``<m>_available``, ``seg``, ``composition``,
    ``has_labels``, ``height``)."""
    out: dict[str, np.ndarray] = {}
    for m, x in inputs.items():
        out[m], out[f"{m}_available"] = x.astype(np.float32), available[m].astype(bool)
    out.update(seg=seg.astype(np.int64), composition=composition.astype(np.float32), has_labels=has_labels.astype(bool),
               height=height.astype(np.float32))
    return out


def finished(out: str | os.PathLike[str], cfg: BaselineConfig) -> bool:
    """``out`` holds a finished model of exactly ``cfg``."""
    path = Path(out)
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        return False
    try:
        saved = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    try:  # defaults filled in: a folder saved before a field was added is still the same config
        return BaselineConfig.from_dict(saved.get("config", saved)).what_is_trained() == cfg.what_is_trained()
    except ConfigError:
        return False


def training_metrics(out: str | os.PathLike[str]) -> dict[str, float]:
    """The last logged training losses of a run in ``out`` (``train_loss``, ``train_seg_loss`` ...) and its
    ``train_steps``, for the model card (none when nothing was logged)."""
    rows = read_rows(Path(out) / MARKER)
    if not rows:
        return {}
    last = rows[-1]
    metrics: dict[str, float] = {"train_steps": int(last["step"])}
    for key in ("loss", "seg", "composition", "height"):
        if last.get(key):
            metrics["train_loss" if key == "loss" else f"train_{key}_loss"] = round(float(last[key]), 6)
    return metrics


def train_baseline(out: str | os.PathLike[str], cfg: BaselineConfig, arrays: Mapping[str, np.ndarray],
                   train: np.ndarray, *, progress: bool = False, verbose: bool = False) -> BaselineModel:
    """Train (or reuse, or resume) a baseline on the rows ``train`` of ``arrays`` (:func:`batch_arrays`) into
    ``out``, and return it.

    Raises:
        ConfigError: an input modality missing from ``arrays``, or no training rows.
        OutputError: ``out`` exists and is not a folder of train_baseline.
    """
    missing = [m for m in cfg.modalities if m not in arrays]
    if missing or not len(train):
        raise ConfigError(f"cannot train the {cfg.kind} baseline: " + (f"inputs {missing} are not in the data"
                          if missing else "no training samples (the training split is empty)"))
    out = Path(out)
    if finished(out, cfg):
        return load_baseline(out)
    check_output(out, marker=MARKER, what="baseline model folder written by eo-models")
    ckpt = out / "train" / "checkpoint.pt"
    resume = ckpt.is_file()
    module = BaselineModule(cfg)
    metrics = CSVMetrics(out / MARKER, FIELDS, keep_until=0)
    if not resume:
        metrics.start()
    with quiet_lightning(verbose) as log:
        log.attach(out / "train" / "lightning.log")
        trainer = make_trainer(out / "train", Hardware(), loggers=[metrics],
                               callbacks=[StepCheckpoint(ckpt, cfg.train.checkpoint_every), StepProgress(progress)])
        fit(trainer, module, _Data(ArrayDataset(arrays, train), cfg.train.batch_size, cfg.seed),
            ckpt_path=ckpt if resume else None)
    model = module.model.eval()
    save_with_card(model, out, training_metrics(out))
    return model
