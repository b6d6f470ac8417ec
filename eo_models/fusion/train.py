"""Training a fusion model on the Lightning core (:mod:`eo_models.training.core`).

``train_fusion(out, tokens=STORE)`` trains on a token store (``eo-models tokenize``: the fast path, the tokenizers
ran once); ``train_fusion(out, cube=CUBE, tokenizers=[...])`` tokenizes each batch on the fly with the frozen
tokenizers (no store; the cube is read through :class:`~eo_dataset.torch.CubeDataset` and the shard-aware sampler).
Each micro-batch draws its masks with :func:`~eo_models.fusion.masking.sample_masks` from a generator seeded by the
run's seed, the rank, the step and the micro-batch, and the loaders keep their position in the checkpoint: a
resumed run trains on the same batches with the same masks as an uninterrupted one.

AdamW (no weight decay on vectors and modality embeddings), linear warm-up then cosine decay over ``steps`` (a run
resumed with more steps follows the cosine of the new length from where it is: a warm restart), gradient clipping,
optional EMA of the weights
(the EMA weights are the ones saved), bf16 autocast (``precision``), DDP (``devices``/``num_nodes``), accumulation,
checkpoints every ``checkpoint_every`` steps with resume (``out/train/checkpoint.pt``), a CSV of metrics per modality
(``out/train/fusion-metrics.csv``: loss and token accuracy of each modality) and a progress bar.

``out`` ends as a model folder (``FusionModel.from_pretrained(out)``): ``model.safetensors``, ``config.json``,
``README.md`` (the model card), and ``train/`` (checkpoint, metrics, Lightning's log).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from eo_dataset.outputs import check_output
from eo_models.errors import ConfigError
from eo_models.fusion.config import FusionConfig, FusionTrainConfig, TokenModality, load_fusion_config
from eo_models.fusion.masking import sample_masks
from eo_models.fusion.model import FusionModel
from eo_models.tokens.dataset import TokenDataset, read_store_attrs, token_specs
from eo_models.training.core import (
    CSVMetrics,
    CubeDataModule,
    Hardware,
    StepModule,
    checked_checkpoint,
    default_workers,
    save_with_card,
    train_run,
)

MARKER = "train/fusion-metrics.csv"  #: the file that marks a folder written by train_fusion
WHAT = "fusion model folder written by train-fusion"


@dataclass(frozen=True)
class FusionTrainResult:
    """Where the model went, its steps (``trained`` of them in this call), throughput and last metrics;
    ``global_rank``: this process's DDP rank (rank 0 writes)."""

    out: Path
    steps: int
    samples: int
    seconds: float
    last: dict[str, float]
    parameters: int
    trained: int = 0
    global_rank: int = 0

    @property
    def samples_per_s(self) -> float:
        """Training samples per second of this run (all devices together)."""
        return self.samples / self.seconds if self.seconds else float("nan")


def lr_factor(step: int, cfg: FusionTrainConfig) -> float:
    """The learning rate at ``step`` as a fraction of ``lr``: linear warm-up, then cosine down to ``min_lr``."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class FusionModule(StepModule):
    """A :class:`FusionModel` in training (see the module docstring); ``online``: a callable turning a cube batch
    into a token batch (tokenizing on the fly), or None for token batches."""

    def __init__(self, cfg: FusionConfig, online: Any = None) -> None:
        names = cfg.names
        fields = ["step", "epoch", "samples", "seconds", "samples_per_s", "lr", "loss",
                  *(f"loss_{m}" for m in names), *(f"acc_{m}" for m in names)]
        super().__init__(steps=cfg.train.steps, accumulate=cfg.train.accumulate, log_every=cfg.train.log_every,
                         seed=cfg.train.seed, config=cfg.to_dict(), fields=fields, label="fusion")
        self.cfg = cfg
        self.online = online
        self.sequences = frozenset(m.name for m in cfg.modalities if m.kind == "sequence")
        self.model: FusionModel | None = None
        self.ema: AveragedModel | None = None
        self._micro_index = 0

    def configure_model(self) -> None:
        if self.model is None:
            self.model = FusionModel(self.cfg)
            if self.cfg.train.ema:
                self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.train.ema),
                                         use_buffers=True)
        if self.online is not None and hasattr(self.online, "to"):
            self.online.to(self.device)

    def configure_optimizers(self) -> Any:
        assert self.model is not None
        t = self.cfg.train
        # no decay on vectors (norms, the mask token) nor on the modality embeddings (as 4M)
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if p.ndim >= 2 and n != "modality_embedding"]
        rest = [p for n, p in named if not (p.ndim >= 2 and n != "modality_embedding")]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=t.lr, betas=(0.9, 0.95))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, t))
        return [opt], [sched]

    def micro_step(self, batch: dict[str, Any], step: int) -> tuple[int, dict[str, float]]:
        assert self.model is not None
        if self.online is not None:
            batch = self.online(batch)
        # only the model's modalities: budgets are never spent on tokens the model does not read
        keep = {"index", *self.cfg.names, *(f"{m}_{s}" for m in self.cfg.names for s in ("available", "valid"))}
        batch = {k: v for k, v in batch.items() if k in keep}
        cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        seed = np.random.SeedSequence([self.seed, self.global_rank, step, self._micro_index % self.accumulate])
        self._micro_index += 1
        gen = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        masks = sample_masks(cpu, self.cfg.masking, sequences=self.sequences, generator=gen)
        out = self.model(batch, {k: v.to(self.device) for k, v in masks.input.items()},
                         {k: v.to(self.device) for k, v in masks.target.items()})
        self.scaled_backward(out.loss)
        logs = {"loss": float(out.loss.detach()), "lr": self.all_optimizers()[0].param_groups[0]["lr"]}
        logs.update({f"loss_{m}": float(v.detach()) for m, v in out.losses.items()})
        logs.update({f"acc_{m}": v for m, v in out.accuracy.items()})
        n = next(iter(v for v in batch.values() if isinstance(v, torch.Tensor))).shape[0]
        return n, logs

    def before_step(self, optimizers: list[Any]) -> None:
        if self.cfg.train.clip:
            for opt in optimizers:
                self.clip_gradients(opt, gradient_clip_val=self.cfg.train.clip, gradient_clip_algorithm="norm")

    def after_step(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def on_train_start(self) -> None:
        super().on_train_start()
        self._micro_index = 0

    def final_model(self) -> FusionModel:
        """The weights to save: the EMA's when there is one."""
        assert self.model is not None
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]


class TokenDataModule(L.LightningDataModule):
    """Token batches of a token store: the samples that have at least one of the model's modalities, shuffled per
    epoch (seeded); under DDP each rank reads its own part."""

    def __init__(self, dataset: TokenDataset, indices: Sequence[int], *, batch_size: int, workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        self.subset = Subset(dataset, list(indices))
        self.batch_size, self.workers, self.seed = batch_size, workers, seed

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = DistributedSampler(self.subset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        # stateful: Lightning saves the loader's position, so a resumed run goes on with the next batch
        return StatefulDataLoader(self.subset, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
                          persistent_workers=self.workers > 0)


def _store_source(tokens: str | os.PathLike[str], cfg_modalities: Sequence[str] | None
                  ) -> tuple[list[TokenModality], str, TokenDataset, list[int]]:
    specs = token_specs(tokens)
    names = list(cfg_modalities) if cfg_modalities else list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        raise ConfigError(f"{tokens} has no tokens of {unknown}; it has {sorted(specs)}")
    dataset = TokenDataset(tokens, modalities=names)  # a local store or a URL (s3://: the published version)
    recipe_hash = str(read_store_attrs(tokens).get("recipe_hash", ""))
    indices = np.flatnonzero(dataset.availability.any(axis=1)).tolist()
    if not indices:
        raise ConfigError(f"no sample of {tokens} has tokens of any of {names}; nothing to train on")
    return [TokenModality.from_spec(specs[m]) for m in names], recipe_hash, dataset, indices


def train_fusion(out: str | os.PathLike[str], *, tokens: str | os.PathLike[str] | None = None,
                 cube: str | os.PathLike[str] | None = None, tokenizers: Sequence[Any] = (),
                 modalities: Sequence[str] | None = None, config: str | os.PathLike[str] = "tiny",
                 steps: int | None = None, device: str = "cpu", devices: int | None = None, num_nodes: int = 1,
                 precision: str | None = None, accumulate: int | None = None, resume: bool = True,
                 progress: bool = True, workers: int | None = None, verbose: bool = False,
                 callbacks: list[Callback] | None = None, **train_overrides: Any) -> FusionTrainResult:
    """Train (or resume training) a fusion model into ``out``; see the module docstring.

    Args:
        out: Output folder (new, empty, or one this function wrote, which is resumed).
        tokens: A token store (``eo-models tokenize``); or else:
        cube: A cube, with ``tokenizers`` (folders, Hub ids or objects, one per modality): tokens made on the fly.
        modalities: Which of the store's modalities (default: all).
        config: A fusion config file or a bundled name (``tiny``, ``small``, ``base``).
        steps, precision, accumulate: Override the config's ``train`` values (as do ``train_overrides``:
            ``batch_size=4``, ``lr=...``).
        device, devices, num_nodes: Where to train (several devices or nodes: DDP).
        resume: Continue from ``out/train/checkpoint.pt`` (its config must match); False starts over.
        progress: Show a progress bar.
        workers: Data loader worker processes (default: the config's ``train.num_workers``, else one per core).
        verbose: Let Lightning's messages through to the terminal (always in ``train/lightning.log``).
        callbacks: More Lightning callbacks.

    Raises:
        OutputError: ``out`` is not a folder this function wrote.
        ConfigError: bad config, no data, both or neither of ``tokens`` and ``cube``.
        CheckpointError: a checkpoint in ``out`` of another config (``resume=False`` or another ``out``).
    """
    if (tokens is None) == (cube is None):
        raise ConfigError("give either a token store (tokens=..., --tokens) or a cube with its tokenizers "
                          "(cube=..., tokenizers=[...], --cube --tokenizers)")
    check_output(out, what=WHAT, marker=MARKER)
    online = None
    if tokens is not None:
        mods, recipe_hash, dataset, indices = _store_source(tokens, modalities)
    else:
        from eo_models.tokens.online import OnlineTokens

        if not tokenizers:
            raise ConfigError("training on a cube needs its tokenizers (tokenizers=[...], --tokenizers)")
        online = OnlineTokens(cube, tokenizers)
        names = list(modalities) if modalities else list(online.specs)
        mods = [TokenModality.from_spec(online.specs[m]) for m in names]
        recipe_hash = online.recipe_hash
    cfg = load_fusion_config(config, mods, recipe_hash=recipe_hash, steps=steps, precision=precision,
                             accumulate=accumulate, **train_overrides)
    hardware = Hardware(device, devices, num_nodes, cfg.train.precision)
    n_workers = workers if workers is not None else (
        cfg.train.num_workers if cfg.train.num_workers is not None else default_workers())
    out = Path(out)
    state_path = out / "train" / "checkpoint.pt"
    saved = checked_checkpoint(state_path, cfg, FusionTrainConfig.RUNTIME) if resume and state_path.exists() else None
    start = int(saved["step"]) if saved is not None else 0
    module = FusionModule(cfg, online)
    metrics = CSVMetrics(out / MARKER, module.fields, keep_until=start)

    def datamodule() -> L.LightningDataModule:
        if online is None:
            return TokenDataModule(dataset, indices, batch_size=cfg.train.batch_size, workers=n_workers,
                                   seed=cfg.train.seed)
        return CubeDataModule(online.dataset(), require=[], batch_size=cfg.train.batch_size, workers=n_workers,
                              seed=cfg.train.seed)

    rank = train_run(out, module, hardware, metrics=metrics, saved=saved, datamodule=datamodule,
                     restore=lambda state: module.load_state_dict(state["state_dict"], strict=False),
                     checkpoint_every=cfg.train.checkpoint_every, resume=resume, progress=progress, verbose=verbose,
                     callbacks=callbacks or ())
    model = module.final_model()
    model.eval()
    if rank == 0:
        save_with_card(model, out)
    if module.steps_done:
        return FusionTrainResult(out, module.step, module.samples, module.seconds, dict(module.last),
                                 model.num_parameters(), trained=module.steps_done, global_rank=rank)
    row = metrics.last or {}
    return FusionTrainResult(out, start, int(row.get("samples") or 0), float(row.get("seconds") or 0.0),
                             {k: float(v) for k, v in row.items() if k.startswith(("loss", "acc")) and v},
                             model.num_parameters(), trained=0, global_rank=rank)
