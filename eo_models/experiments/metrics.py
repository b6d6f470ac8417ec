"""Scores of the three tasks, and paired bootstrap intervals over test samples.

Every score is computed from *per-sample* statistics (a confusion matrix per sample for segmentation, counts per
sample for composition, a squared error per sample for regression), so a bootstrap resamples samples and recomputes
the score exactly as it is reported.

- segmentation: mIoU over the classes present in the truth or the prediction, and IoU per class;
- composition: micro F1 at threshold 0.5, and mAP (mean over classes with at least one positive of the average
  precision of their ranking);
- regression: RMSE over samples with a target.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def confusions(pred: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """``(N, K, K)`` confusion matrices (truth row, prediction column) of ``pred``/``truth (N, ...)``; ``truth < 0``
    is ignored."""
    n = len(truth)
    t = truth.reshape(n, -1)
    p = pred.reshape(n, -1)
    keep = t >= 0
    code = np.where(keep, t * classes + np.clip(p, 0, classes - 1), classes * classes)
    out = np.zeros((n, classes * classes + 1), np.int64)
    for i in range(n):
        out[i] = np.bincount(code[i], minlength=classes * classes + 1)
    return out[:, :-1].reshape(n, classes, classes)


def iou_from(conf: np.ndarray) -> np.ndarray:
    """IoU per class from a summed ``(K, K)`` confusion matrix (``nan`` for classes in neither truth nor
    prediction)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_from(conf: np.ndarray) -> float:
    """Mean IoU over the classes present (truth or prediction) of a summed confusion matrix."""
    iou = iou_from(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def f1_from(counts: np.ndarray) -> float:
    """Micro F1 from summed ``(3,)`` counts (tp, fp, fn)."""
    tp, fp, fn = (float(c) for c in counts)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def f1_counts(scores: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-sample ``(N, 3)`` true positives, false positives and false negatives of multi-label predictions."""
    pred = scores >= threshold
    t = truth > 0.5
    return np.stack([(pred & t).sum(1), (pred & ~t).sum(1), (~pred & t).sum(1)], 1)


def mean_ap(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mean over classes with at least one positive of the average precision of ranking by ``scores``."""
    aps = []
    for k in range(truth.shape[1]):
        t = truth[:, k] > 0.5
        if not t.any():
            continue
        order = np.argsort(-scores[:, k], kind="stable")
        hits = t[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(precision[hits].mean()))
    return float(np.mean(aps)) if aps else float("nan")


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error over the finite targets."""
    keep = np.isfinite(truth)
    return float(np.sqrt(np.mean((pred[keep] - truth[keep]) ** 2))) if keep.any() else float("nan")


def scores(seg_conf: np.ndarray, comp_scores: np.ndarray, comp_truth: np.ndarray, height_pred: np.ndarray,
           height_truth: np.ndarray) -> dict[str, float]:
    """The headline scores of one evaluation from its per-sample statistics."""
    conf = seg_conf.sum(0)
    return {"miou": miou_from(conf), "f1": f1_from(f1_counts(comp_scores, comp_truth).sum(0)),
            "mean_ap": mean_ap(comp_scores, comp_truth), "rmse": rmse(height_pred, height_truth)}


def paired_bootstrap(stat: Callable[[np.ndarray], float], n: int, *, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """``stat(indices)`` on all ``n`` samples and its ``level`` percentile interval over ``resamples`` bootstrap
    resamples of the sample indices (the same resample for both sides of a paired difference: ``stat`` computes the
    difference)."""
    rng = np.random.default_rng(seed)
    full = stat(np.arange(n))
    draws = np.asarray([stat(rng.integers(0, n, n)) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return full, float("nan"), float("nan")
    lo, hi = np.percentile(draws, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return full, float(lo), float(hi)


def majority_miou(truth: np.ndarray, train_truth: np.ndarray, classes: int) -> float:
    """Chance level of segmentation: the mIoU of predicting the training split's majority class everywhere."""
    major = int(np.bincount(train_truth[train_truth >= 0].ravel(), minlength=classes).argmax())
    return miou_from(confusions(np.full_like(truth, major), truth, classes).sum(0))


def uniform_miou(truth: np.ndarray, classes: int) -> float:
    """Chance level of segmentation: the expected mIoU of predicting a class drawn uniformly at random in every cell
    (the expected confusion matrix: each true cell spread evenly over the ``classes`` predictions)."""
    counts = np.bincount(truth[truth >= 0].ravel(), minlength=classes).astype(np.float64)
    return miou_from(np.repeat(counts[:, None] / classes, classes, axis=1))
