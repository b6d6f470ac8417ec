"""One training core on Lightning for every model of eo_models (tokenizers now, the fusion model next).

- :class:`StepModule`: a ``LightningModule`` with manual optimisation counted in *our* optimiser steps (a GAN's
  discriminator update is part of its step, not a second one), gradient accumulation over ``accumulate``
  micro-batches, one metrics row every ``log_every`` steps, and the run's config, step and model inside every
  checkpoint. A subclass builds its model in ``configure_model``, its optimisers in ``configure_optimizers`` and
  writes :meth:`StepModule.micro_step` (losses of one micro-batch, backpropagated with
  :meth:`StepModule.scaled_backward`).
- :class:`CubeDataModule`: a ``LightningDataModule`` over a :class:`~eo_dataset.torch.CubeDataset` and a
  :class:`~eo_dataset.torch.ShardSampler` of the samples that have the required modalities; under DDP each rank
  reads its own part of every epoch (the sampler takes the trainer's rank and world size).
- :class:`Hardware` and :func:`make_trainer`: where and how a run trains (``device``, ``devices``, ``num_nodes``,
  ``precision``: ``32``, ``bf16`` mixed, ``16`` mixed); several devices or nodes train with DDP (gloo on CPUs,
  NCCL on GPUs). :func:`fit` runs ``Trainer.fit`` with Lightning's own messages kept off the terminal
  (:func:`quiet_lightning`: into the run's log file instead, unless ``verbose``).
- Callbacks: :class:`StepCheckpoint` (one checkpoint file, replaced atomically every ``every`` steps, through
  :class:`AtomicCheckpointIO`), :class:`StepProgress` (our rich progress bar, rank 0 only); the logger
  :class:`CSVMetrics` (a CSV with fixed columns, continued on resume: rows past the checkpoint are dropped).

Resuming is Lightning's (``Trainer.fit(ckpt_path=...)``: weights, optimisers, loop state); :func:`checked_checkpoint`
refuses a checkpoint of another config before anything is loaded. :func:`train_run` is one run from start to end
(trainer, logs, starting over, fitting or restoring a finished run) and :func:`save_with_card` writes the result, so
that every model's ``train_*`` function only says what is particular to it.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from eo_dataset.torch import CubeDataset, ShardSampler
from eo_models.errors import CheckpointError, ConfigError
from eo_models.progress import Progress

#: ``train.precision`` -> Lightning's precision: float32, bfloat16 mixed (autocast), float16 mixed (gradient scaler).
PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
#: Loggers whose records :func:`quiet_lightning` keeps off the terminal.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def default_workers() -> int:
    """CPU cores available to this process (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# -- where a run trains ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    """Where and how a run trains; no part of the model (a checkpoint resumes on other hardware).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` (that GPU only), ``mps`` or ``auto``.
        devices: How many devices of that kind (default 1); more than one, or ``num_nodes > 1``, trains with DDP:
            one process per device, each reading its own samples, gradients averaged every step.
        num_nodes: Machines (each with ``devices`` devices; started by ``torchrun`` or a cluster's launcher).
        precision: ``32``, ``bf16`` (bfloat16 mixed precision) or ``16`` (float16 mixed, GPUs).
    """

    device: str = "cpu"
    devices: int | None = None
    num_nodes: int = 1
    precision: str = "32"

    def __post_init__(self) -> None:
        for name in ("devices", "num_nodes"):
            n = getattr(self, name)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ConfigError(f"{name} must be an int >= 1, found {n!r}")
        if self.precision not in PRECISION:
            raise ConfigError(f"precision must be one of {list(PRECISION)}, found {self.precision!r}")
        kind, _, index = self.device.partition(":")
        if kind not in ("cpu", "cuda", "mps", "auto") or (index and (kind != "cuda" or not index.isdigit())):
            raise ConfigError(f"device must be cpu, cuda, cuda:N, mps or auto, found {self.device!r}")
        if index and (self.devices or 1) > 1:
            raise ConfigError(f"device {self.device} names one GPU but devices={self.devices}; use --device cuda "
                              "--devices N for N GPUs")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device}: torch sees no CUDA device on this machine")

    @property
    def distributed(self) -> bool:
        """Several processes (DDP)."""
        return (self.devices or 1) > 1 or self.num_nodes > 1

    def trainer_args(self) -> dict[str, Any]:
        """``accelerator``, ``devices``, ``num_nodes`` and ``precision`` for ``lightning.pytorch.Trainer``."""
        kind, _, index = self.device.partition(":")
        devices: Any = [int(index)] if index else (self.devices or (1 if kind != "auto" else "auto"))
        return {"accelerator": kind, "devices": devices, "num_nodes": self.num_nodes,
                "precision": PRECISION[self.precision]}


# -- Lightning's messages --------------------------------------------------------------------------------------------
class RunLog(logging.Handler):
    """Log records (and Lightning's and torch's warnings) of a run, kept in memory until :meth:`attach` names the
    file they go to (so that nothing is written before the output folder is known to be ours)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.path: Path | None = None
        self._pending: list[logging.LogRecord] = []

    def attach(self, path: Path) -> None:
        """Write the records so far, and every later one, to ``path`` (appended)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        pending, self._pending = self._pending, []
        for record in pending:
            self.emit(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.path is None:
            self._pending.append(record)
            return
        try:
            with self.path.open("a") as f:  # opened per record: DDP ranks append to the same file
                f.write(self.format(record) + "\n")
        except OSError:
            self.handleError(record)


def _is_ours(filename: str, category: type[Warning]) -> bool:
    """A warning of Lightning, torch or torchdata (raised while training; not the user's code)."""
    import torchdata

    roots = [Path(L.__file__).parents[1], Path(torch.__file__).parent, Path(torchdata.__file__).parent]
    path = Path(filename)
    return category.__module__.startswith("lightning") or any(r in path.parents for r in roots)


@contextlib.contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[RunLog]:
    """Lightning's log records (``GPU available: ...``, ``Initializing distributed ...``) and the warnings of
    Lightning and torch go to a :class:`RunLog` instead of the terminal; with ``verbose`` they also still go where
    they went before. Everything is restored on exit."""
    handler = RunLog()
    saved = []
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers = [handler, *(logger.handlers if verbose else [])]
        logger.propagate = verbose and logger.propagate
        logger.setLevel(logging.INFO)
    with warnings.catch_warnings():
        show = warnings.showwarning

        def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                        line: str | None = None) -> None:
            if _is_ours(filename, category):
                handler.handle(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno,
                                                 f"{category.__name__}: {message}", None, None))
                if not verbose:
                    return
            show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        try:
            yield handler
        finally:
            for logger, handlers, propagate, level in saved:
                logger.handlers, logger.propagate = handlers, propagate
                logger.setLevel(level)


# -- the module ------------------------------------------------------------------------------------------------------
class StepModule(L.LightningModule):
    """Base of our LightningModules: manual optimisation in optimiser steps of our own, accumulation, metrics rows,
    the config and step in every checkpoint.

    A subclass implements ``configure_model`` (build the model: it runs once the process group exists, so layers
    that sync across ranks see it), ``configure_optimizers`` and :meth:`micro_step`; it may override
    :meth:`optimizers_to_step` (which optimisers step this time), :meth:`checkpoint_extras` and
    :attr:`find_unused_parameters`.

    Args:
        steps: Optimiser steps to reach (training stops there; a resumed run goes on up to it).
        accumulate: Micro-batches per optimiser step.
        log_every: A metrics row every this many steps (and at the last one).
        seed: Seed of torch's generator at the start of training, mixed with the rank and the step reached.
        config: The run's config (``to_dict()``), stored in every checkpoint.
        fields: Columns of the metrics rows (``step``, ``epoch``, ``samples``, ``seconds``, ``samples_per_s`` and
            the losses :meth:`micro_step` reports).
        label: The progress bar's label.
    """

    #: DDP: some backward pass leaves parameters out (a GAN's discriminator, or its generator).
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, *, steps: int, accumulate: int = 1, log_every: int = 10, seed: int = 0,
                 config: Mapping[str, Any] | None = None, fields: Sequence[str] = (), label: str = "") -> None:
        super().__init__()
        self.automatic_optimization = False
        self.total_steps, self.accumulate, self.log_every, self.seed = steps, accumulate, log_every, seed
        self.run_config = dict(config or {})
        self.fields = tuple(fields) or ("step", "epoch", "samples", "seconds", "samples_per_s", "loss")
        self.label = label
        self.step = 0  #: optimiser steps done (by every run of this training)
        self.samples = 0  #: samples trained on in this call (all ranks)
        self.seconds = 0.0  #: wall-clock seconds of training in this call (data loading included)
        self.steps_done = 0  #: optimiser steps done in this call
        self.last: dict[str, float] = {}  #: the losses of the last step
        self.stepped = False  #: the batch just trained completed an optimiser step
        self._micro, self._micro_samples = 0, 0
        self._sums: dict[str, list[float]] = {}
        self._t0: float | None = None

    # -- what a subclass writes -----------------------------------------------------------------------------------
    def micro_step(self, batch: Any, step: int) -> tuple[int, dict[str, float]]:
        """Forward and backward (:meth:`scaled_backward`) of one micro-batch at optimiser step ``step`` (0-based);
        returns its number of samples and its losses (``loss`` first)."""
        raise NotImplementedError

    def optimizers_to_step(self, step: int) -> list[Any]:
        """The optimisers that step at the end of optimiser step ``step`` (default: all)."""
        return self.all_optimizers()

    def before_step(self, optimizers: list[Any]) -> None:
        """Called with the optimisers about to step, their gradients complete (clip them here)."""

    def after_step(self) -> None:
        """Called after each optimiser step (``self.step`` already counts it): schedulers, weight averages."""

    def checkpoint_extras(self) -> dict[str, Any]:
        """More entries for the checkpoint file (e.g. the bare model's ``state_dict`` under ``model``)."""
        return {}

    # -- helpers for micro_step -----------------------------------------------------------------------------------
    def all_optimizers(self) -> list[Any]:
        """``self.optimizers()`` as a list (Lightning's precision- and strategy-aware wrappers)."""
        opts = self.optimizers()
        return list(opts) if isinstance(opts, list | tuple) else [opts]

    def scaled_backward(self, loss: torch.Tensor) -> None:
        """``manual_backward`` of ``loss / accumulate`` (precision- and DDP-aware)."""
        self.manual_backward(loss / self.accumulate if self.accumulate > 1 else loss)

    def only(self, optimizer: Any) -> contextlib.AbstractContextManager[Any]:
        """Within it, gradients reach only ``optimizer``'s parameters (Lightning's ``toggled_optimizer``; a no-op
        with one optimiser)."""
        return self.toggled_optimizer(optimizer) if len(self.trainer.optimizers) > 1 else contextlib.nullcontext()

    # -- Lightning hooks ---------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # one stream per (seed, rank, step): ranks crop and noise differently, a resumed run is reproducible
        torch.manual_seed(int(np.random.SeedSequence([self.seed, self.global_rank, self.step]).generate_state(1)[0]))
        self._t0 = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.stepped = False
        n, logs = self.micro_step(batch, self.step)
        self._micro += 1
        self._micro_samples += n
        for k, v in logs.items():
            self._sums.setdefault(k, []).append(float(v))
        if self._micro < self.accumulate:
            return
        stepping = self.optimizers_to_step(self.step)
        self.before_step(stepping)
        for opt in stepping:
            opt.step()
        for opt in self.all_optimizers():  # also those that did not step: no gradient carries over
            opt.zero_grad(set_to_none=True)
        self.step += 1
        self.steps_done += 1
        self.samples += self._micro_samples * self.trainer.world_size
        self.seconds = time.perf_counter() - (self._t0 or time.perf_counter())
        self.last = {k: sum(v) / len(v) for k, v in self._sums.items()}
        self._micro, self._micro_samples, self._sums = 0, 0, {}
        self.stepped = True
        self.after_step()
        if self.step % self.log_every == 0 or self.step >= self.total_steps:
            if self.trainer.world_size > 1:  # every rank logs at the same steps: the mean over the ranks
                keys = sorted(self.last)
                mean = self.trainer.strategy.reduce(torch.tensor([self.last[k] for k in keys], device=self.device),
                                                    reduce_op="mean")
                self.last = dict(zip(keys, mean.tolist(), strict=True))
            row = {"step": self.step, "epoch": self.current_epoch, "samples": self.samples,
                   "seconds": round(self.seconds, 3),
                   "samples_per_s": round(self.samples / self.seconds, 3) if self.seconds else float("nan"),
                   **self.last}
            for logger in self.loggers:
                logger.log_metrics(row, step=self.step)
        if self.step >= self.total_steps:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["step"] = self.step
        checkpoint["config"] = self.run_config
        checkpoint.update(self.checkpoint_extras())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.step = int(checkpoint["step"])

    def progress_info(self) -> str:
        """The progress bar's text after a step."""
        return f"loss {self.last['loss']:.4f}" if "loss" in self.last else ""


# -- data ------------------------------------------------------------------------------------------------------------
class CubeDataModule(L.LightningDataModule):
    """Training batches of a cube: ``dataset`` read in :class:`ShardSampler` order, only samples that have every
    modality of ``require``; under DDP each rank reads its own, disjoint part of each epoch.

    Args:
        dataset: The cube dataset (crop, normalisation and modalities chosen by the caller).
        require: Modalities a sample must have.
        batch_size: Samples per batch (per device).
        workers: DataLoader worker processes (0: read in the training process).
        seed: The sampler's seed (the order of an epoch depends on seed and epoch only).
        shuffle: Shard-aware shuffling (False: cube order).
    """

    def __init__(self, dataset: CubeDataset, *, require: Sequence[str], batch_size: int, workers: int = 0,
                 seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.dataset, self.require, self.batch_size = dataset, list(require), batch_size
        self.workers, self.seed, self.shuffle = workers, seed, shuffle

    def sampler(self) -> ShardSampler:
        """This rank's sampler (the trainer's rank and world size once attached, else torch.distributed's)."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (None, None)
        return ShardSampler(self.dataset, require=self.require, shuffle=self.shuffle, seed=self.seed, rank=rank,
                            world_size=world)

    def loader(self, sampler: ShardSampler | None = None, stateful: bool = False) -> DataLoader:
        """A DataLoader over ``sampler`` (default: :meth:`sampler`); ``stateful``: torchdata's
        ``StatefulDataLoader``, whose position Lightning saves in checkpoints (a resumed run goes on with the batch
        after the checkpoint's, not from the start of its epoch)."""
        cls = StatefulDataLoader if stateful else DataLoader
        return cls(self.dataset, batch_size=self.batch_size, sampler=sampler or self.sampler(),
                          collate_fn=self.dataset.collate_fn, num_workers=self.workers,
                          persistent_workers=self.workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self.loader(stateful=True)


# -- checkpoints, metrics, progress ----------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file, then renamed over the checkpoint: a crash or a kill while saving
    leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class StepCheckpoint(Callback):
    """Saves the run into ``path`` every ``every`` optimiser steps and at the last one (all ranks call it; rank 0
    writes)."""

    def __init__(self, path: str | os.PathLike[str], every: int) -> None:
        self.path, self.every = Path(path), every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        m = pl_module
        if isinstance(m, StepModule) and m.stepped and (m.step % self.every == 0 or m.step >= m.total_steps):
            trainer.save_checkpoint(self.path)


class StepProgress(Callback):
    """Our progress bar (:class:`~eo_models.progress.Progress`) over optimiser steps, on rank 0 only."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero and isinstance(pl_module, StepModule):
            self.bar = Progress(True)
            self.bar.__enter__()
            self.bar.add(pl_module.label, pl_module.total_steps, pl_module.step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.bar is not None and isinstance(pl_module, StepModule) and pl_module.stepped:
            self.bar.advance(pl_module.progress_info())

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()


class _Interrupted(Callback):
    """Remembers a KeyboardInterrupt (Lightning turns it into ``sys.exit(1)``; :func:`fit` raises it again)."""

    def __init__(self) -> None:
        self.interrupt: BaseException | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = exception


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics CSV (none when there is no file)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class CSVMetrics(Logger):
    """The run's metrics as a CSV with fixed columns (``fields``), rank 0 only.

    :meth:`start` (re)writes the file when a run starts: on resume it keeps the rows up to the checkpoint's step
    (``keep_until``) and drops later ones (their steps are trained again), so the file continues the same run.
    """

    def __init__(self, path: str | os.PathLike[str], fields: Sequence[str], keep_until: int = 0) -> None:
        super().__init__()
        self.path, self.fields, self.keep_until = Path(path), list(fields), keep_until
        rows = [r for r in read_rows(self.path) if int(r["step"]) <= keep_until] if keep_until else []
        self.rows = rows
        self.last: dict[str, str] | None = rows[-1] if rows else None  #: the last row kept

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def start(self) -> None:
        """Write the header and the rows kept (before the first step: the file marks the output folder)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, self.fields, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the config is in config.json and in every checkpoint

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "step" not in metrics:  # only our rows (StepModule's), never Lightning's own
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields, restval="", extrasaction="ignore").writerow(dict(metrics))


def tensorboard_logger(save_dir: Path) -> Logger | None:
    """Lightning's TensorBoard logger into ``save_dir/tensorboard`` when tensorboard (or tensorboardX) is installed."""
    import importlib.util

    if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        return None
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(save_dir), name="tensorboard", version="", default_hp_metric=False)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by :class:`StepCheckpoint` (memory-mapped: cheap to read for its config and step).

    Raises:
        CheckpointError: it cannot be read, or it was not written by this trainer.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it to start over") from exc
    if not isinstance(state, dict) or not {"state_dict", "loops", "step", "config"} <= set(state):
        raise CheckpointError(f"{path} is not a checkpoint of eo-models' Lightning trainer (an older eo-models "
                              "wrote it?); resume=False (--restart) starts over")
    return state


def config_differences(saved: Mapping[str, Any], want: Mapping[str, Any], ignore: Mapping[str, Sequence[str]]
                       ) -> list[str]:
    """The top-level config sections that differ, leaving out ``ignore`` (``{"train": ["steps", ...]}``)."""

    def strip(cfg: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(cfg)
        for section, keys in ignore.items():
            if isinstance(out.get(section), Mapping):
                out[section] = {k: v for k, v in out[section].items() if k not in keys}
        return out

    a, b = strip(saved), strip(want)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def checked_checkpoint(path: Path, cfg: Any, runtime: Sequence[str]) -> dict[str, Any]:
    """The checkpoint at ``path`` if it was written with ``cfg`` (a config with ``from_dict``/``to_dict``), up to the
    ``train`` values in ``runtime`` (steps, devices ... which a resumed run may change).

    Raises:
        CheckpointError: it cannot be read, or holds another config.
    """
    state = read_checkpoint(path)
    try:
        saved = type(cfg).from_dict(state["config"]).to_dict()  # an older one gets today's defaults
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds a config this version cannot read ({exc}); use another output folder, "
                              "or resume=False (--restart) to start over") from exc
    diff = config_differences(saved, cfg.to_dict(), {"train": sorted(runtime)})
    if diff:
        raise CheckpointError(f"{path} was written with another config (differs in {diff}); use another output "
                              "folder, or resume=False (--restart) to start over")
    return state


# -- the trainer -----------------------------------------------------------------------------------------------------
def make_trainer(root: str | os.PathLike[str], hardware: Hardware, *, callbacks: Sequence[Callback] = (),
                 loggers: Sequence[Logger] = (), find_unused_parameters: bool = False) -> L.Trainer:
    """A ``Trainer`` for a :class:`StepModule`: our progress, checkpoints and metrics only (Lightning's progress
    bar, model summary and checkpointing off), epochs without end (the module stops it), DDP when
    ``hardware`` has several devices or nodes, our sampler kept (no ``DistributedSampler``).

    Call it inside :func:`quiet_lightning`: it logs the devices it found.

    Raises:
        ConfigError: Lightning cannot use ``hardware`` here.
    """
    strategy: Any = "auto"
    if hardware.distributed:
        strategy = DDPStrategy(find_unused_parameters=find_unused_parameters)
    try:
        return L.Trainer(**hardware.trainer_args(), strategy=strategy, max_epochs=-1, max_steps=-1,
                         use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, logger=list(loggers) or False,
                         callbacks=[*callbacks, _Interrupted()], num_sanity_val_steps=0,
                         default_root_dir=str(root), plugins=[AtomicCheckpointIO()])
    except MisconfigurationException as exc:
        raise ConfigError(f"cannot train on {hardware}: {exc}") from exc


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
        ckpt_path: str | os.PathLike[str] | None = None) -> None:
    """``trainer.fit`` (resuming from ``ckpt_path``); a Ctrl-C is raised again as KeyboardInterrupt (Lightning exits
    the process instead), and the SIGINT handler Lightning replaced is put back."""
    try:
        handler = signal.getsignal(signal.SIGINT)
    except ValueError:  # not the main thread
        handler = None
    interrupted = next(c for c in trainer.callbacks if isinstance(c, _Interrupted))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:
        if interrupted.interrupt is not None:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, handler)


# -- one run ---------------------------------------------------------------------------------------------------------
#: What a run writes into its output folder besides its metrics, and what starting over (``resume=False``) deletes;
#: other files in the folder are kept.
RUN_FILES = ("train/checkpoint.pt", "model.safetensors", "config.json", "README.md", "train/tensorboard")


def train_run(out: Path, module: StepModule, hardware: Hardware, *, metrics: CSVMetrics, saved: dict[str, Any] | None,
              datamodule: Callable[[], L.LightningDataModule], restore: Callable[[dict[str, Any]], None],
              checkpoint_every: int, resume: bool = True, progress: bool = True, verbose: bool = False,
              callbacks: Sequence[Callback] = ()) -> int:
    """Train ``module`` into ``out`` and return this process's rank.

    ``saved`` is the checkpoint to resume (see :func:`checked_checkpoint`; None starts at step 0). When it has
    already reached ``module.total_steps`` nothing trains: ``restore`` puts its weights into the module. Rank 0
    deletes :data:`RUN_FILES` first when ``resume`` is False and starts ``metrics``; Lightning's messages go to
    ``out/train/lightning.log``.
    """
    train_dir = out / "train"
    state_path = train_dir / "checkpoint.pt"
    tensorboard = tensorboard_logger(train_dir)
    with quiet_lightning(verbose) as log:
        ours = [StepProgress(progress), StepCheckpoint(state_path, checkpoint_every)]
        trainer = make_trainer(train_dir, hardware, loggers=[metrics, *([tensorboard] if tensorboard else [])],
                               callbacks=[*ours, *callbacks], find_unused_parameters=module.find_unused_parameters)
        rank = trainer.global_rank
        if rank == 0:
            if not resume:
                for path in (out / name for name in RUN_FILES):
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            metrics.start()
        log.attach(train_dir / "lightning.log")
        if saved is None or int(saved["step"]) < module.total_steps:
            torch.manual_seed(module.seed)  # the same initial weights on every rank
            fit(trainer, module, datamodule(), ckpt_path=state_path if saved is not None else None)
        else:  # nothing left to train: the checkpoint's weights
            module.configure_model()
            restore(saved)
    return rank


def save_with_card(model: Any, out: str | os.PathLike[str], metrics: dict[str, Any] | None = None) -> None:
    """``model.save_pretrained(out)`` with a fresh model card (the Hub library keeps an existing README.md)."""
    out = Path(out)
    (out / "README.md").unlink(missing_ok=True)
    model.save_pretrained(out, model_card_kwargs={"metrics": metrics} if metrics else None)
