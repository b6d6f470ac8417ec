"""Training a tokenizer on a cube: ``CubeDataset`` + ``ShardSampler`` (only samples that have the modality),
random aligned crops, valid masks weighting the loss, checkpoints and resume, a CSV of metrics, progress.

The output folder holds the trained tokenizer (``model.safetensors``, ``config.json``, ``README.md``: load it with
``Tokenizer.from_pretrained(folder)``) and ``train/``: ``checkpoint.pt`` (model, optimisers, step, RNG states;
written atomically every ``checkpoint_every`` steps) and ``metrics.csv`` (one row every ``log_every`` steps).

``train/metrics.csv`` is the folder's marker (:data:`MARKER`): it is written when a run starts, before the first
step, and only by training. An existing output folder is used only when it is empty or carries it (then training
resumes, or with ``resume=False`` starts over); anything else, a Hub download or a folder of the user's, is refused
(:func:`eo_dataset.outputs.check_output`) and left untouched. Starting over replaces only the files training writes.

Data loader workers (:func:`loader_workers`): the ``workers`` argument (``--workers``) if given, else the config's
``train.num_workers`` if it sets one, else one per CPU core available to this process.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from eo_dataset.errors import CubeError
from eo_dataset.outputs import check_output
from eo_dataset.torch import CubeDataset, ShardSampler
from eo_models.config import TokenizerConfig, load_sections, make_config
from eo_models.cube import check_cube
from eo_models.errors import CheckpointError, ConfigError
from eo_models.modality import modality_from_cube
from eo_models.progress import Progress
from eo_models.tokenizers.tokenizer import Tokenizer

FIELDS = ["step", "epoch", "samples", "seconds", "samples_per_s", "loss", "rec", "quant", "feat", "adv", "disc"]
MARKER = "train/metrics.csv"  #: the file that marks a tokenizer folder written by training
WHAT = "tokenizer folder written by train-tokenizer"
#: What starting over (``resume=False``) deletes; other files in the folder (a user's notes) are kept.
REPLACED = ("train/checkpoint.pt", "model.safetensors", "config.json", "README.md")


@dataclass(frozen=True)
class TrainResult:
    """Where the tokenizer went, how many steps it has (``trained`` of them in this call), and the training
    throughput and last losses (of the call that trained it, when this one found nothing left to do)."""

    out: Path
    steps: int
    samples: int
    seconds: float
    last: dict[str, float]
    trained: int = 0

    @property
    def samples_per_s(self) -> float:
        """Training samples per second of this run (data loading included)."""
        return self.samples / self.seconds if self.seconds else float("nan")


def tokenizer_config(cube: str | os.PathLike[str], modality: str, config: str | os.PathLike[str] = "tiny",
                     **overrides: Any) -> TokenizerConfig:
    """The full config of a tokenizer for ``modality`` of ``cube`` (file sections + the cube's modality)."""
    return make_config(load_sections(config, modality, **overrides), modality_from_cube(cube, modality))


def default_workers() -> int:
    """CPU cores available to this process (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(cfg: TokenizerConfig, workers: int | None = None) -> int:
    """Data loader worker processes: ``workers`` if given, else the config's ``train.num_workers`` if set, else
    :func:`default_workers`."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers must be an int >= 0 (0: load in the training process), found {workers!r}")
        return workers
    return cfg.train.num_workers if cfg.train.num_workers is not None else default_workers()


def make_loader(cube: str | os.PathLike[str], cfg: TokenizerConfig, *, shuffle: bool = True,
                crop_mode: str = "random", workers: int | None = None
                ) -> tuple[CubeDataset, ShardSampler, DataLoader]:
    """The dataset, sampler and loader a tokenizer trains (or is evaluated) on, with :func:`loader_workers`
    worker processes.

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
    sampler = ShardSampler(ds, require=[m], shuffle=shuffle, seed=cfg.train.seed)
    workers = loader_workers(cfg, workers)
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=ds.collate_fn,
                        num_workers=workers, persistent_workers=workers > 0)
    return ds, sampler, loader


def train_tokenizer(cube: str | os.PathLike[str], modality: str, out: str | os.PathLike[str], *,
                    config: str | os.PathLike[str] = "tiny", quantizer: str | None = None,
                    decoder: str | None = None, steps: int | None = None, device: str = "cpu",
                    resume: bool = True, progress: bool = True, workers: int | None = None,
                    **train_overrides: Any) -> TrainResult:
    """Train (or resume training) one tokenizer; see the module docstring for what lands in ``out``.

    Args:
        cube: The training cube (local path or URL).
        modality: Which of its modalities.
        out: Output folder.
        config: A config file or the name of a bundled one (``tiny``, ``base``).
        quantizer: ``fsq`` or ``vq`` (overrides the file).
        decoder: ``gan`` or ``diffusion`` (overrides the file).
        steps: Total optimiser steps (overrides the file).
        device: torch device.
        resume: Continue from ``out/train/checkpoint.pt`` when there is one (its config must match); False
            starts over (only the files training writes are replaced).
        progress: Show a progress bar.
        workers: Data loader worker processes (see :func:`loader_workers`).
        train_overrides: Other ``train`` values (``batch_size=4``, ``crop=48`` ...).

    Raises:
        OutputError: ``out`` exists and is not a tokenizer folder written by training (no ``train/metrics.csv``),
            or cannot be written.
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: a bad config or a cube that cannot train this modality.
        CheckpointError: a checkpoint in ``out`` belongs to another config (pass ``resume=False`` or another
            ``out``).
    """
    check_output(out, what=WHAT, marker=MARKER)
    cfg = tokenizer_config(cube, modality, config, quantizer=quantizer, decoder=decoder, steps=steps,
                           **train_overrides)
    out = Path(out)
    state_path = out / "train" / "checkpoint.pt"
    torch.manual_seed(cfg.train.seed)
    _, sampler, loader = make_loader(cube, cfg, workers=workers)
    tok = Tokenizer(cfg.to_dict()).to(device)
    opt = torch.optim.AdamW(tok.generator_parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    disc = getattr(tok.decoder, "discriminator", None)
    dopt = torch.optim.AdamW(disc.parameters(), lr=cfg.train.disc_lr) if disc is not None else None
    step = epoch = 0
    if resume and state_path.exists():
        step, epoch = _load_checkpoint(state_path, cfg, tok, opt, dopt)
    elif not resume:  # start over: drop what the last run wrote (metrics.csv is rewritten below), nothing else
        for name in REPLACED:
            (out / name).unlink(missing_ok=True)
    log = _MetricsLog(out / "train" / "metrics.csv", keep_until=step)
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                if cfg.train.precision == "bf16" else contextlib.nullcontext())
    m, samples, seconds, last, start = cfg.modality.name, 0, 0.0, {}, step
    tok.train()
    with Progress(progress) as bar:
        bar.add(f"{m} {cfg.quantizer.type}/{cfg.decoder.type}", cfg.train.steps, step)
        while step < cfg.train.steps:
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            for batch in loader:
                x, valid = batch[m].to(device), batch[f"{m}_valid"].to(device)
                with autocast:
                    loss, logs, out_, target = tok.training_loss(x, valid, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if dopt is not None and step >= cfg.decoder.disc_start:
                    with autocast:
                        dloss = tok.decoder.discriminator_loss(out_, tok.head, target, valid)
                    dopt.zero_grad(set_to_none=True)
                    dloss.backward()
                    dopt.step()
                    logs["disc"] = float(dloss.detach())
                step += 1
                samples += x.shape[0]
                now = time.perf_counter()
                seconds += now - t0
                t0 = now
                last = {"loss": float(loss.detach()), **logs}
                bar.advance(f"loss {last['loss']:.4f}")
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    log.write({"step": step, "epoch": epoch, "samples": samples, "seconds": round(seconds, 3),
                               "samples_per_s": round(samples / seconds, 3), **last})
                if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                    _save_checkpoint(state_path, cfg, tok, opt, dopt, step, epoch)
                if step >= cfg.train.steps:
                    break
            else:
                epoch += 1
    tok.eval()
    save_tokenizer(tok, out)
    if samples == 0 and log.last:  # nothing left to train: report the run that trained it
        row = log.last
        samples, seconds = int(row["samples"]), float(row["seconds"])
        last = {k: float(row[k]) for k in ("loss", "rec", "quant", "feat", "adv", "disc") if row.get(k)}
    return TrainResult(out, step, samples, seconds, last, trained=step - start)


def save_tokenizer(tok: Tokenizer, out: str | os.PathLike[str], metrics: dict[str, Any] | None = None) -> None:
    """``save_pretrained`` with a fresh model card (the library keeps an existing README.md otherwise)."""
    out = Path(out)
    (out / "README.md").unlink(missing_ok=True)
    tok.save_pretrained(out, model_card_kwargs={"metrics": metrics} if metrics else None)


def _save_checkpoint(path: Path, cfg: TokenizerConfig, tok: Tokenizer, opt: torch.optim.Optimizer,
                     dopt: torch.optim.Optimizer | None, step: int, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"config": cfg.to_dict(), "model": tok.state_dict(), "opt": opt.state_dict(),
             "dopt": dopt.state_dict() if dopt is not None else None, "step": step, "epoch": epoch,
             "rng": torch.get_rng_state()}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash leaves the previous checkpoint intact


def _load_checkpoint(path: Path, cfg: TokenizerConfig, tok: Tokenizer, opt: torch.optim.Optimizer,
                     dopt: torch.optim.Optimizer | None) -> tuple[int, int]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it to start over") from exc
    saved = dict(state["config"])
    want = cfg.to_dict()
    # more steps may be asked for on resume, and the loader's workers are no part of the model
    saved["train"] = {**saved["train"], "steps": want["train"]["steps"],
                      "num_workers": want["train"].get("num_workers")}
    if saved != want:
        diff = sorted(k for k in want if saved.get(k) != want[k])
        raise CheckpointError(f"{path} was written with another config (differs in {diff}); use another output "
                              "folder, or resume=False (--restart) to start over")
    tok.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if dopt is not None and state.get("dopt"):
        dopt.load_state_dict(state["dopt"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), int(state["epoch"])


class _MetricsLog:
    """Appends rows to a CSV; on resume drops rows past the checkpoint's step (they will be written again)."""

    def __init__(self, path: Path, keep_until: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.exists() and keep_until:
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        self.path = path
        self.last: dict[str, str] | None = rows[-1] if rows else None
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, FIELDS, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, FIELDS, restval="", extrasaction="ignore").writerow(row)
