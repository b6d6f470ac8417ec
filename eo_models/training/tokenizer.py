"""Training a tokenizer on a cube, on the Lightning core (:mod:`eo_models.training.core`): ``CubeDataset`` +
``ShardSampler`` (only samples that have the modality, each DDP rank its own), random aligned crops, valid masks
weighting the loss, checkpoints and resume, a CSV of metrics, progress; one GPU, several (DDP), CPUs, bf16,
gradient accumulation.

The output folder holds the trained tokenizer (``model.safetensors``, ``config.json``, ``README.md``: load it with
``Tokenizer.from_pretrained(folder)``) and ``train/``: ``checkpoint.pt`` (Lightning's checkpoint: weights,
optimisers, loop state, plus our ``step``, ``config`` and the bare tokenizer's ``model`` state; replaced atomically
every ``checkpoint_every`` steps), ``metrics.csv`` (one row every ``log_every`` steps), ``lightning.log``
(Lightning's messages and warnings, appended by every run) and, when tensorboard is installed, ``tensorboard/``.

``train/metrics.csv`` is the folder's marker (:data:`MARKER`): it is written when a run starts, before the first
step, and only by training. An existing output folder is used only when it is empty or carries it (then training
resumes, or with ``resume=False`` starts over); anything else, a Hub download or a folder of the user's, is refused
(:func:`eo_dataset.outputs.check_output`) and left untouched. Starting over replaces only the files training writes.

A step is one optimiser step of the tokenizer (and of a GAN's discriminator, once it is on): ``batch_size x
accumulate`` samples on each of the devices. Resuming continues the same run: same step count, the metrics file
continued (rows past the checkpoint, lost with a crash, are dropped and trained again), the same config (a
checkpoint of another config is refused; ``steps``, ``num_workers`` and ``precision`` may change).

Data loader workers (:func:`loader_workers`): the ``workers`` argument (``--workers``) if given, else the config's
``train.num_workers`` if it sets one, else one per CPU core available to this process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from eo_dataset.errors import CubeError
from eo_dataset.outputs import check_output
from eo_dataset.torch import CubeDataset, ShardSampler
from eo_models.config import TokenizerConfig, TrainConfig, load_sections, make_config
from eo_models.cube import check_cube
from eo_models.errors import ConfigError
from eo_models.modality import modality_from_cube
from eo_models.tokenizers.tokenizer import Tokenizer
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

__all__ = ["FIELDS", "MARKER", "WHAT", "TokenizerModule", "TrainResult", "default_workers", "loader_workers",
           "make_loader", "tokenizer_config", "tokenizer_dataset", "train_tokenizer"]

LOSSES = ["loss", "rec", "quant", "feat", "adv", "disc"]
FIELDS = ["step", "epoch", "samples", "seconds", "samples_per_s", *LOSSES]
MARKER = "train/metrics.csv"  #: the file that marks a tokenizer folder written by training
WHAT = "tokenizer folder written by train-tokenizer"


@dataclass(frozen=True)
class TrainResult:
    """Where the tokenizer went, how many steps it has (``trained`` of them in this call), and the training
    throughput and last losses (of the call that trained it, when this one found nothing left to do).

    ``global_rank``: the process's DDP rank (0 without DDP); only rank 0 writes the tokenizer and the metrics.
    """

    out: Path
    steps: int
    samples: int
    seconds: float
    last: dict[str, float]
    trained: int = 0
    global_rank: int = 0

    @property
    def samples_per_s(self) -> float:
        """Training samples per second of this run (data loading included; all devices together)."""
        return self.samples / self.seconds if self.seconds else float("nan")


def tokenizer_config(cube: str | os.PathLike[str], modality: str, config: str | os.PathLike[str] = "tiny",
                     **overrides: Any) -> TokenizerConfig:
    """The full config of a tokenizer for ``modality`` of ``cube`` (file sections + the cube's modality)."""
    return make_config(load_sections(config, modality, **overrides), modality_from_cube(cube, modality))


def loader_workers(cfg: TokenizerConfig, workers: int | None = None) -> int:
    """Data loader worker processes: ``workers`` if given, else the config's ``train.num_workers`` if set, else
    :func:`default_workers`."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers must be an int >= 0 (0: load in the training process), found {workers!r}")
        return workers
    return cfg.train.num_workers if cfg.train.num_workers is not None else default_workers()


def tokenizer_dataset(cube: str | os.PathLike[str], cfg: TokenizerConfig, crop_mode: str = "random") -> CubeDataset:
    """The cube dataset of the tokenizer's modality (stored values, ``train.crop`` crops), checked: the crop fits
    the modality's resolution, the encoder's patch (and the diffusion UNet's levels), and some sample has it.

    Raises:
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: the crop does not fit the modality's patch size, or no sample has the modality.
    """
    check_cube(cube)
    m = cfg.modality.name
    try:
        ds = CubeDataset(cube, [m], crop=cfg.train.crop, crop_mode=crop_mode, normalize=False)
    except CubeError as exc:  # mostly a crop that does not fit the sample or the modality's resolution
        raise ConfigError(f"{cube} cannot serve {m!r} crops of train.crop {cfg.train.crop} px: {exc}") from exc
    side = cfg.train.crop // ds.info[m].factor
    multiple = cfg.encoder.patch * (2 ** (len(cfg.decoder.unet_dims) - 1) if cfg.decoder.type == "diffusion" else 1)
    multiple = max(multiple, cfg.encoder.patch)
    if side % multiple:
        raise ConfigError(f"train.crop {cfg.train.crop} px is {side} px of {m} at {ds.info[m].resolution_m:g} m, not "
                          f"a multiple of {multiple} (encoder.patch, and the diffusion UNet's levels); pick a crop "
                          "that is")
    if not ds.availability[:, 0].any():  # checked here: ShardSampler would raise a CubeError
        raise ConfigError(f"no sample of {cube} has modality {m!r}; nothing to train on")
    return ds


def make_loader(cube: str | os.PathLike[str], cfg: TokenizerConfig, *, shuffle: bool = True,
                crop_mode: str = "random", workers: int | None = None
                ) -> tuple[CubeDataset, ShardSampler, DataLoader]:
    """The dataset, sampler and loader a tokenizer trains (or is evaluated) on, with :func:`loader_workers`
    worker processes (the sampler splits the samples across ``torch.distributed`` ranks when a process group is
    up; training itself goes through :class:`~eo_models.training.core.CubeDataModule`).

    Raises:
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: the crop does not fit the modality's patch size, or no sample has the modality.
    """
    ds = tokenizer_dataset(cube, cfg, crop_mode)
    dm = CubeDataModule(ds, require=[cfg.modality.name], batch_size=cfg.train.batch_size,
                        workers=loader_workers(cfg, workers), seed=cfg.train.seed, shuffle=shuffle)
    sampler = dm.sampler()
    return ds, sampler, dm.loader(sampler)


class TokenizerModule(StepModule):
    """A :class:`~eo_models.tokenizers.tokenizer.Tokenizer` in training: AdamW on everything but the GAN
    discriminator, a second AdamW on the discriminator (stepping once ``decoder.disc_start`` steps are done);
    each backward pass reaches only its own optimiser's parameters."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        t = cfg.train
        super().__init__(steps=t.steps, accumulate=t.accumulate, log_every=t.log_every, seed=t.seed,
                         config=cfg.to_dict(), fields=FIELDS,
                         label=f"{cfg.modality.name} {cfg.quantizer.type}/{cfg.decoder.type}")
        self.cfg = cfg
        self.tokenizer: Tokenizer | None = None

    @property
    def find_unused_parameters(self) -> bool:  # type: ignore[override]
        return self.cfg.decoder.type == "gan"  # the discriminator's and the generator's passes leave the other out

    def configure_model(self) -> None:
        if self.tokenizer is None:  # built here, once the process group is up: a VQ codebook then syncs its EMA
            self.tokenizer = Tokenizer(self.cfg.to_dict())

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        tok = self.tokenizer
        opt = torch.optim.AdamW(tok.generator_parameters(), lr=t.lr, weight_decay=t.weight_decay)
        disc = getattr(tok.decoder, "discriminator", None)
        return opt if disc is None else [opt, torch.optim.AdamW(disc.parameters(), lr=t.disc_lr)]

    def _discriminating(self, step: int) -> bool:
        return len(self.trainer.optimizers) > 1 and step >= self.cfg.decoder.disc_start

    def micro_step(self, batch: dict[str, Any], step: int) -> tuple[int, dict[str, float]]:
        m, tok = self.cfg.modality.name, self.tokenizer
        x, valid = batch[m], batch[f"{m}_valid"]
        opts = self.all_optimizers()
        with self.only(opts[0]):
            loss, logs, out, target = tok.training_loss(x, valid, step)
            self.scaled_backward(loss)
        logs = {"loss": float(loss.detach()), **logs}
        if self._discriminating(step):
            with self.only(opts[1]):
                dloss = tok.decoder.discriminator_loss(out, tok.head, target, valid)
                self.scaled_backward(dloss)
            logs["disc"] = float(dloss.detach())
        return x.shape[0], logs

    def optimizers_to_step(self, step: int) -> list[Any]:
        opts = super().optimizers_to_step(step)
        return opts if step >= self.cfg.decoder.disc_start else opts[:1]

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"model": self.tokenizer.state_dict()}  # the bare tokenizer (shares storage: saved once)


def train_tokenizer(cube: str | os.PathLike[str], modality: str, out: str | os.PathLike[str], *,
                    config: str | os.PathLike[str] = "tiny", quantizer: str | None = None,
                    decoder: str | None = None, steps: int | None = None, device: str = "cpu",
                    devices: int | None = None, num_nodes: int = 1, precision: str | None = None,
                    accumulate: int | None = None, resume: bool = True, progress: bool = True,
                    workers: int | None = None, verbose: bool = False, callbacks: list[Callback] | None = None,
                    **train_overrides: Any) -> TrainResult:
    """Train (or resume training) one tokenizer; see the module docstring for what lands in ``out``.

    Several devices (``devices=N`` or ``num_nodes``) train with DDP: from a script or the command line Lightning
    starts the other processes itself (by running the same command again), or start them with ``torchrun``; every
    process calls this function and gets its own :class:`TrainResult` (``global_rank``); rank 0 writes.

    Args:
        cube: The training cube (local path or URL).
        modality: Which of its modalities.
        out: Output folder.
        config: A config file or the name of a bundled one (``tiny``, ``base``).
        quantizer: ``fsq`` or ``vq`` (overrides the file).
        decoder: ``gan`` or ``diffusion`` (overrides the file).
        steps: Total optimiser steps (overrides the file).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        devices: How many devices of that kind (default 1; more: DDP).
        num_nodes: Machines taking part (DDP across nodes, started by torchrun or a cluster launcher).
        precision: ``32``, ``bf16`` or ``16`` (overrides the file's ``train.precision``).
        accumulate: Micro-batches per optimiser step (overrides the file's ``train.accumulate``).
        resume: Continue from ``out/train/checkpoint.pt`` when there is one (its config must match); False
            starts over (only the files training writes are replaced).
        progress: Show a progress bar.
        workers: Data loader worker processes (see :func:`loader_workers`).
        verbose: Let Lightning's messages through to the terminal too (they always go to ``train/lightning.log``).
        callbacks: More Lightning callbacks.
        train_overrides: Other ``train`` values (``batch_size=4``, ``crop=48`` ...).

    Raises:
        OutputError: ``out`` exists and is not a tokenizer folder written by training (no ``train/metrics.csv``),
            or cannot be written.
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: a bad config, device, or a cube that cannot train this modality.
        CheckpointError: a checkpoint in ``out`` belongs to another config (pass ``resume=False`` or another
            ``out``), or cannot be read.
    """
    check_output(out, what=WHAT, marker=MARKER)
    cfg = tokenizer_config(cube, modality, config, quantizer=quantizer, decoder=decoder, steps=steps,
                           precision=precision, accumulate=accumulate, **train_overrides)
    hardware = Hardware(device, devices, num_nodes, cfg.train.precision)
    workers = loader_workers(cfg, workers)
    out = Path(out)
    state_path = out / "train" / "checkpoint.pt"
    ds = tokenizer_dataset(cube, cfg)
    saved = checked_checkpoint(state_path, cfg, TrainConfig.RUNTIME) if resume and state_path.exists() else None
    start = int(saved["step"]) if saved is not None else 0
    metrics = CSVMetrics(out / MARKER, FIELDS, keep_until=start)
    module = TokenizerModule(cfg)

    def datamodule() -> CubeDataModule:
        return CubeDataModule(ds, require=[cfg.modality.name], batch_size=cfg.train.batch_size, workers=workers,
                              seed=cfg.train.seed)

    rank = train_run(out, module, hardware, metrics=metrics, saved=saved, datamodule=datamodule,
                     restore=lambda state: module.tokenizer.load_state_dict(state["model"]),
                     checkpoint_every=cfg.train.checkpoint_every, resume=resume, progress=progress, verbose=verbose,
                     callbacks=callbacks or ())
    tok = module.tokenizer
    tok.eval()
    if rank == 0:
        save_with_card(tok, out)
    if module.steps_done:
        return TrainResult(out, module.step, module.samples, module.seconds, dict(module.last),
                           trained=module.steps_done, global_rank=rank)
    row = metrics.last or {}  # nothing left to train: report the run that trained it
    return TrainResult(out, start, int(row.get("samples") or 0), float(row.get("seconds") or 0.0),
                       {k: float(row[k]) for k in LOSSES if row.get(k)}, trained=0, global_rank=rank)
