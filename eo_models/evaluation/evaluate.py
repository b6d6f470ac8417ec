"""Reconstruction metrics of a tokenizer on a cube (``eo-models eval-tokenizer``).

Every metric is computed over valid pixels only (the cube's ``<m>_valid`` masks) of the samples that have the
modality, on centre crops of the tokenizer's ``train.crop``:

- ``continuous``: per band PSNR and SSIM (torchmetrics) in the head's units (stored units, or dB for SAR), with
  the band's range of the target over the evaluated valid pixels as ``data_range``; MAE in physical units
  (``stored * scale + offset``; dB stays dB); and their means over bands.
- ``categorical``: overall accuracy, per-class IoU and mIoU (from a torchmetrics multiclass confusion matrix).
- ``multilabel``: per-layer F1 and accuracy.
- all: codebook usage (distinct tokens used / codebook size), perplexity of the token histogram, samples,
  tokens per sample, tokenize and decode time per sample (the first, warm-up batch left out when there are more).

The accumulators (:class:`ContinuousScores`, :class:`CategoricalScores`, :class:`MultilabelScores`) and the
formulas (:func:`codebook_stats`, :func:`confusion_scores`, :func:`binary_scores`) are public, so a training loop
or a notebook can use them on its own tensors.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import multilabel_stat_scores
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio

from eo_models.errors import ConfigError
from eo_models.modality import to_db
from eo_models.tokenizers.heads import IGNORE
from eo_models.tokenizers.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "CategoricalScores", "ContinuousScores", "MultilabelScores", "binary_scores", "check_metrics_file",
    "codebook_stats", "confusion_scores", "eval_batches", "evaluate_reconstruction", "evaluate_tokenizer",
    "load_tokenizer", "new_scores", "scores_result", "target_units",
]


#: Keys every metrics dict has: an existing ``--out`` file is replaced only when it is such a JSON object.
METRICS_KEYS = ("modality", "kind", "codebook_usage", "tokens_per_sample")


def check_metrics_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Check that the metrics JSON may be written to ``path``: a new file in a writable place, or a file the
    metrics were saved to before (a JSON object with :data:`METRICS_KEYS`), which is replaced.

    Raises:
        OutputError: a URL, a folder, an unwritable place, or an existing file of something else (left untouched).
    """
    from eo_dataset.outputs import check_output_file

    def is_metrics(p: Path) -> bool:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in METRICS_KEYS)

    return check_output_file(path, what="metrics file written by eval-tokenizer", is_ours=is_metrics, option=option)


# -- formulas ----------------------------------------------------------------------------------------------------
def codebook_stats(counts: Tensor) -> dict[str, float]:
    """Usage and perplexity of a token histogram ``counts`` (one count per code).

    ``codebook_usage`` = codes used at least once / codebook size; ``perplexity`` = ``exp`` of the entropy (nats)
    of the token distribution: 1 when one code takes every token, the number of codes for a uniform histogram.
    """
    counts = counts.detach().double().flatten().cpu()
    total = float(counts.sum())
    used = int((counts > 0).sum())
    if total == 0:
        return {"codebook_usage": 0.0, "codes_used": 0, "perplexity": float("nan")}
    p = counts[counts > 0] / total
    entropy = float(-(p * p.log()).sum())
    return {"codebook_usage": used / counts.numel(), "codes_used": used, "perplexity": math.exp(entropy)}


def confusion_scores(confmat: Tensor) -> dict[str, Any]:
    """Overall accuracy, per-class IoU and mIoU from a ``(K, K)`` confusion matrix (rows: target, cols: prediction).

    A class that is in neither the target nor the prediction has no IoU (``None``) and is left out of the mIoU.
    """
    cm = confmat.detach().double().cpu()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    total = float(cm.sum())
    iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    defined = [v for v in iou if v is not None]
    return {"accuracy": float(tp.sum()) / total if total else float("nan"),
            "miou": sum(defined) / len(defined) if defined else float("nan"), "iou": iou,
            "pixels": int(total)}


def binary_scores(stats: Tensor) -> dict[str, list[float | None]]:
    """Per-label F1 and accuracy from torchmetrics' multilabel stat scores ``(L, 5)``: tp, fp, tn, fn, support.

    F1 is ``None`` for a label that is neither in the target nor in the prediction (0 / 0).
    """
    s = stats.detach().double().cpu()
    tp, fp, tn, fn = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    n = tp + fp + tn + fn
    f1 = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else None for a, b, c in zip(tp, fp, fn, strict=True)]
    acc = [float((a + d) / m) if m > 0 else None for a, d, m in zip(tp, tn, n, strict=True)]
    return {"f1": f1, "accuracy": acc}


def _mean(values: Sequence[float | None]) -> float:
    good = [v for v in values if v is not None and math.isfinite(v)]
    return sum(good) / len(good) if good else float("nan")


# -- accumulators ------------------------------------------------------------------------------------------------
class ContinuousScores:
    """Per band PSNR, SSIM and MAE over valid pixels, accumulated over batches.

    Args:
        data_range: Per band range of the target (``max - min`` over the valid pixels that will be evaluated), in
            the units of ``pred``/``target``; PSNR's peak and SSIM's ``data_range``.
        fill: Per band value put in the target's invalid pixels (e.g. the band's mean), so fill values such as
            -32768 never enter SSIM's windows.
        mae_factor: Multiplies the MAE (``abs(scale)`` to report it in physical units; 1 for dB).

    SSIM is computed on whole images in which the prediction's invalid pixels are replaced by the target's (so they
    add no error), and its map is then averaged over the valid pixels only. Samples are weighted by their valid
    pixels. Sums are kept in float64.
    """

    def __init__(self, data_range: Sequence[float], fill: Sequence[float] | None = None,
                 mae_factor: float = 1.0) -> None:
        self.data_range = [float(r) for r in data_range]
        self.fill = [0.0] * len(self.data_range) if fill is None else [float(f) for f in fill]
        self.mae_factor = float(mae_factor)
        self.psnr = [PeakSignalNoiseRatio(data_range=r if r > 0 else 1.0) for r in self.data_range]
        c = len(self.data_range)
        self.abs_sum = torch.zeros(c, dtype=torch.float64)
        self.ssim_sum = torch.zeros(c, dtype=torch.float64)
        self.ssim_n = torch.zeros(c, dtype=torch.float64)
        self.n = torch.zeros(c, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` ``(B, C, H, W)`` in the same units, ``valid`` ``(B, H, W)`` bool."""
        pred, target, valid = pred.double(), target.double(), valid.bool()
        side = min(pred.shape[-2:])
        for c, metric in enumerate(self.psnr):
            p, t = pred[:, c], target[:, c]
            metric.update(p[valid].cpu(), t[valid].cpu())
            self.abs_sum[c] += float((p[valid] - t[valid]).abs().sum())
            self.n[c] += float(valid.sum())
            if side < 6 or self.data_range[c] <= 0:  # SSIM's 11 px Gaussian window needs 5 px of reflection
                continue
            t = torch.where(valid, t, torch.full_like(t, self.fill[c]))
            p = torch.where(valid, p, t)
            _, full = structural_similarity_index_measure(p.unsqueeze(1), t.unsqueeze(1),
                                                          data_range=self.data_range[c], reduction="none",
                                                          return_full_image=True)
            self.ssim_sum[c] += float(full[:, 0][valid].sum())
            self.ssim_n[c] += float(valid.sum())

    def compute(self) -> dict[str, list[float | None]]:
        """``psnr`` (dB), ``ssim``, ``mae`` (times ``mae_factor``) per band; ``None`` where undefined (no valid
        pixel, a constant band, a perfect reconstruction's infinite PSNR)."""
        psnr = [float(m.compute()) if n > 0 and r > 0 else None
                for m, n, r in zip(self.psnr, self.n, self.data_range, strict=True)]
        psnr = [v if v is not None and math.isfinite(v) else None for v in psnr]
        ssim = [float(s / n) if n > 0 else None for s, n in zip(self.ssim_sum, self.ssim_n, strict=True)]
        mae = [float(a / n) * self.mae_factor if n > 0 else None for a, n in zip(self.abs_sum, self.n, strict=True)]
        return {"psnr": psnr, "ssim": ssim, "mae": mae}


class CategoricalScores:
    """A multiclass confusion matrix over valid pixels (targets ``IGNORE`` elsewhere), see :func:`confusion_scores`."""

    def __init__(self, num_classes: int) -> None:
        self.confmat = MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=IGNORE, validate_args=False)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: class indices ``(B, H, W)``; ``target``: class indices, ``IGNORE`` where not valid."""
        self.confmat.update(pred.flatten().cpu(), target.flatten().cpu())

    def compute(self) -> dict[str, Any]:
        return confusion_scores(self.confmat.compute())


class MultilabelScores:
    """Per-layer stat scores over valid pixels, see :func:`binary_scores`."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.stats = torch.zeros(num_labels, 5, dtype=torch.long)

    def update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        """``pred``, ``target``: 0/1 ``(B, L, H, W)``; ``valid`` ``(B, H, W)``."""
        p = pred.movedim(1, -1)[valid.bool()].long().cpu()  # (N, L)
        t = target.movedim(1, -1)[valid.bool()].long().cpu()
        if len(p):
            self.stats += multilabel_stat_scores(p, t, num_labels=self.num_labels, average=None,
                                                 validate_args=False).long()

    def compute(self) -> dict[str, list[float | None]]:
        return binary_scores(self.stats)


# -- evaluation --------------------------------------------------------------------------------------------------
def target_units(tok: Tokenizer, x: Tensor) -> Tensor:
    """Stored values ``(B, C, H, W)`` in the units of ``tok.head.predict`` (float; dB for ``transform: db``)."""
    return to_db(x) if tok.cfg.modality.transform == "db" else x.float()


def eval_batches(tok: Tokenizer, cube: str | os.PathLike[str], batch_size: int = 8,
                 limit: int | None = None, workers: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, valid)`` centre-crop batches of the samples that have the tokenizer's modality (at most ``limit``),
    read by ``workers`` loader processes (:func:`eo_models.training.tokenizer.loader_workers`)."""
    from eo_models.training.tokenizer import make_loader

    cfg = tok.cfg
    cfg = cfg.with_train(batch_size=batch_size)
    ds, _, loader = make_loader(cube, cfg, shuffle=False, crop_mode="center", workers=workers)
    m = cfg.modality.name
    if tuple(ds.info[m].bands) != tuple(cfg.modality.bands):
        raise ConfigError(f"the tokenizer reads {m} bands {list(cfg.modality.bands)} but {cube} has "
                          f"{list(ds.info[m].bands)}; evaluate on a cube with the same bands")
    seen = 0
    for batch in loader:
        x, valid = batch[m], batch[f"{m}_valid"]
        if limit is not None:
            x, valid = x[: limit - seen], valid[: limit - seen]
        seen += len(x)
        if len(x):
            yield x, valid
        if limit is not None and seen >= limit:
            return


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _jsonable(value: Any) -> Any:
    """Plain Python values, non-finite floats as ``None`` (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@torch.no_grad()
def evaluate_tokenizer(tokenizer: Tokenizer | str | os.PathLike[str], cube: str | os.PathLike[str], *,
                       batch_size: int = 8, device: str = "cpu", limit: int | None = None,
                       decode_steps: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """Reconstruction metrics of a tokenizer on the samples of ``cube`` that have its modality.

    Samples are centre crops of the tokenizer's ``train.crop``, read with ``normalize=False`` (the head
    normalises). The cube is read twice: once for each band's target range (PSNR's peak and SSIM's
    ``data_range``), once to tokenize and decode. All metrics use valid pixels only; SSIM is computed on whole
    crops in which the invalid pixels of the prediction are replaced by the target's (and the target's by the
    band's mean), so they add no error, and its map is averaged over valid pixels.

    Args:
        tokenizer: A :class:`Tokenizer`, or a folder / Hub repo id for ``Tokenizer.from_pretrained``.
        cube: An eo-dataset cube with the tokenizer's modality (same bands).
        batch_size: Samples per batch.
        device: torch device.
        limit: Evaluate at most this many samples (in cube order).
        decode_steps: DDIM steps of a diffusion decoder (default: its config's ``sample_steps``).
        workers: Data loader worker processes (default: the tokenizer's ``train.num_workers`` if set, else one per
            CPU core; :func:`eo_models.training.tokenizer.loader_workers`).

    Returns:
        A JSON-able dict: ``modality``, ``kind``, ``quantizer``, ``decoder``, ``encoder``, ``codebook_size``,
        ``samples``, ``crop_px``, ``tokens_per_sample``, ``codebook_usage``, ``codes_used``, ``perplexity``,
        ``tokenize_ms_per_sample``, ``decode_ms_per_sample``, ``decode_steps``, ``valid_fraction``; continuous:
        ``bands``, ``psnr``/``ssim``/``mae``/``data_range`` (``{band: value}``), ``psnr_mean``, ``ssim_mean``,
        ``mae_mean``, ``mae_units``; categorical: ``accuracy``, ``miou``, ``iou`` (``{class name: value}``);
        multilabel: ``f1``, ``accuracy`` (``{layer: value}``), ``f1_mean``, ``accuracy_mean``. Undefined values
        (no valid pixel, a constant band, an infinite PSNR) are ``None``.

    Raises:
        ConfigError: the cube has the modality with other bands, or no sample has it.
        CubeError: the cube cannot be opened (a :class:`~eo_models.cube.NotACubeError`) or lacks the modality.
        CheckpointError: the tokenizer cannot be loaded.
    """
    tok = load_tokenizer(tokenizer)
    dev = torch.device(device)
    was_training = tok.training
    tok.to(dev).eval()  # eval: a VQ codebook must not move while it is measured
    try:
        return _evaluate(tok, cube, batch_size, dev, limit, decode_steps, workers)
    finally:
        tok.train(was_training)


def _evaluate(tok: Tokenizer, cube: str | os.PathLike[str], batch_size: int, dev: torch.device,
              limit: int | None, decode_steps: int | None, workers: int | None) -> dict[str, Any]:
    cfg, head = tok.cfg, tok.head
    m = cfg.modality
    kw = {} if decode_steps is None else {"steps": decode_steps}
    scores = new_scores(tok, cube, batch_size=batch_size, limit=limit, workers=workers)

    counts = torch.zeros(tok.codebook_size, dtype=torch.long)
    n = pixels = valid_pixels = tokens_per_sample = 0
    t_tok = t_dec = 0.0
    side = timed = batches = 0
    for x, valid in eval_batches(tok, cube, batch_size, limit, workers):
        x, valid = x.to(dev), valid.to(dev)
        _sync(dev)
        t0 = time.perf_counter()
        idx = tok.tokenize(x, valid)
        _sync(dev)
        t1 = time.perf_counter()
        out = tok.detokenize(idx, **kw)
        _sync(dev)
        t2 = time.perf_counter()
        if batches == 1:  # the first batch warms up (allocations, kernels): timed only when it is the only one
            t_tok = t_dec = 0.0
            timed = 0
        t_tok, t_dec, timed, batches = t_tok + t1 - t0, t_dec + t2 - t1, timed + len(x), batches + 1
        counts += torch.bincount(idx.flatten().cpu(), minlength=tok.codebook_size)[: tok.codebook_size]
        tokens_per_sample = idx[0].numel()
        side = x.shape[-1]
        n += len(x)
        pixels += valid.numel()
        valid_pixels += int(valid.sum())
        if isinstance(scores, ContinuousScores):
            scores.update(head.predict(out), target_units(tok, x), valid)
        elif isinstance(scores, CategoricalScores):
            scores.update(out.argmax(1), head.target(x, valid))
        else:
            scores.update(head.predict(out), head.target(x, valid) > 0, valid)

    result: dict[str, Any] = {
        "modality": m.name, "kind": m.kind, "quantizer": cfg.quantizer.type, "decoder": cfg.decoder.type,
        "encoder": cfg.encoder.type, "codebook_size": tok.codebook_size, "samples": n, "crop_px": side,
        "tokens_per_sample": tokens_per_sample, **codebook_stats(counts),
        "tokenize_ms_per_sample": 1000 * t_tok / timed if timed else float("nan"),
        "decode_ms_per_sample": 1000 * t_dec / timed if timed else float("nan"),
        "decode_steps": (decode_steps or cfg.decoder.sample_steps) if cfg.decoder.type == "diffusion" else None,
        "valid_fraction": valid_pixels / pixels if pixels else float("nan"),
    }
    result.update(scores_result(scores, m))
    return _jsonable(result)


Scores = ContinuousScores | CategoricalScores | MultilabelScores


def new_scores(tok: Tokenizer, cube: str | os.PathLike[str], *, batch_size: int = 8, limit: int | None = None,
               workers: int | None = None) -> Scores:
    """The empty accumulator :func:`evaluate_tokenizer` fills for ``tok``'s modality; for a continuous one this
    reads the evaluated samples once for each band's target range (PSNR's peak, SSIM's ``data_range``)."""
    m = tok.cfg.modality
    if m.kind == "categorical":
        return CategoricalScores(len(m.classes))
    if m.kind == "multilabel":
        return MultilabelScores(len(m.bands))
    lo = torch.full((len(m.bands),), math.inf, dtype=torch.float64)
    hi = torch.full((len(m.bands),), -math.inf, dtype=torch.float64)
    for x, valid in eval_batches(tok, cube, batch_size, limit, workers):
        t = target_units(tok, x).double().movedim(1, -1)[valid]  # (N, C) valid pixels
        if len(t):
            lo, hi = torch.minimum(lo, t.amin(0)), torch.maximum(hi, t.amax(0))
    data_range = [float(h - lo_) if math.isfinite(h - lo_) else 0.0 for lo_, h in zip(lo, hi, strict=True)]
    factor = 1.0 if m.transform == "db" else abs(m.scale)
    return ContinuousScores(data_range, fill=m.mean, mae_factor=factor)


def scores_result(scores: Scores, m: Any) -> dict[str, Any]:
    """The metric keys of :func:`evaluate_tokenizer`'s dict from a filled accumulator (``m``: the tokenizer's
    :class:`~eo_models.config.ModalityConfig`)."""
    computed = scores.compute()
    result: dict[str, Any] = {}
    if isinstance(scores, ContinuousScores):
        bands = list(m.bands)
        result.update(bands=bands, mae_units="dB" if m.transform == "db" else (m.units or "stored x scale + offset"),
                      data_range=dict(zip(bands, scores.data_range, strict=True)))
        for key in ("psnr", "ssim", "mae"):
            result[key] = dict(zip(bands, computed[key], strict=True))
            result[f"{key}_mean"] = _mean(computed[key])
    elif isinstance(scores, CategoricalScores):
        names = [name or str(i) for i, name in zip(m.classes, m.class_names or [""] * len(m.classes), strict=True)]
        result.update(accuracy=computed["accuracy"], miou=computed["miou"],
                      iou=dict(zip(names, computed["iou"], strict=True)), classes=list(m.classes))
    else:
        bands = list(m.bands)
        result.update(f1=dict(zip(bands, computed["f1"], strict=True)),
                      accuracy=dict(zip(bands, computed["accuracy"], strict=True)),
                      f1_mean=_mean(computed["f1"]), accuracy_mean=_mean(computed["accuracy"]))
    return result


@torch.no_grad()
def evaluate_reconstruction(tok: Tokenizer, cube: str | os.PathLike[str],
                            reconstruct: Callable[[Tensor, Tensor], Tensor], *, batch_size: int = 8,
                            limit: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """The reconstruction metrics of :func:`evaluate_tokenizer` for any ``reconstruct(x, valid)``, on the very
    samples, crops and valid pixels ``tok`` is evaluated on.

    ``reconstruct`` takes stored values ``(B, C, H, W)`` and the valid mask ``(B, H, W)`` and returns what
    ``Tokenizer.reconstruct`` returns (the head's units; stored class ids; 0/1 layers). Used for the non-learned
    references of :mod:`eo_models.evaluation.references`. Returns the metric keys (no codebook statistics),
    ``samples``, ``crop_px`` and ``decode_ms_per_sample`` (the whole ``reconstruct`` call per sample).
    """
    m, head = tok.cfg.modality, copy.deepcopy(tok.head).cpu()  # references run on the CPU
    scores = new_scores(tok, cube, batch_size=batch_size, limit=limit, workers=workers)
    n = side = 0
    seconds = 0.0
    for x, valid in eval_batches(tok, cube, batch_size, limit, workers):
        t0 = time.perf_counter()
        pred = reconstruct(x, valid)
        seconds += time.perf_counter() - t0
        n, side = n + len(x), x.shape[-1]
        if isinstance(scores, ContinuousScores):
            scores.update(pred, target_units(tok, x), valid)
        elif isinstance(scores, CategoricalScores):
            scores.update(head.target(pred, torch.ones_like(valid)), head.target(x, valid))
        else:
            scores.update(pred, head.target(x, valid) > 0, valid)
    result = {"modality": m.name, "kind": m.kind, "samples": n, "crop_px": side,
              "decode_ms_per_sample": 1000 * seconds / n if n else float("nan"), **scores_result(scores, m)}
    return _jsonable(result)
