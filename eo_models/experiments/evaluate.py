"""Per-sample test statistics of a method (:class:`Evaluation`), robustness subsets, seed summaries and paired
bootstrap differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from eo_models.experiments.metrics import (
    confusions,
    f1_counts,
    f1_from,
    iou_from,
    mean_ap,
    miou_from,
    paired_bootstrap,
    rmse,
)

METRICS = ("miou", "f1", "mean_ap", "rmse")
HIGHER_IS_BETTER = {"miou": True, "f1": True, "mean_ap": True, "rmse": False}


@dataclass
class Evaluation:
    """One method's predictions on the test rows, as per-sample statistics.

    Attributes:
        conf: ``(N, K, K)`` segmentation confusions (``None``: the method has no segmentation).
        comp: ``(N, K)`` composition probabilities; ``comp_truth`` multi-hot; ``labelled`` rows that have labels.
        height: ``(N,)`` predictions; ``height_truth`` (``nan`` unknown).
    """

    conf: np.ndarray | None
    comp: np.ndarray
    comp_truth: np.ndarray
    labelled: np.ndarray
    height: np.ndarray
    height_truth: np.ndarray

    @classmethod
    def of(cls, seg: np.ndarray | None, seg_truth: np.ndarray, comp: np.ndarray, comp_truth: np.ndarray,
           labelled: np.ndarray, height: np.ndarray, height_truth: np.ndarray, classes: int) -> Evaluation:
        """From predictions (``seg`` class indices or ``None``) and the truths of the same rows."""
        conf = confusions(seg, seg_truth, classes) if seg is not None else None
        return cls(conf, comp, comp_truth, labelled, height, height_truth)

    def score(self, idx: np.ndarray | None = None, metrics: Sequence[str] = METRICS) -> dict[str, float]:
        """mIoU, micro F1, mAP and RMSE (or only ``metrics`` of them) on rows ``idx`` (default: all)."""
        idx = np.arange(len(self.comp)) if idx is None else idx
        lab = idx[self.labelled[idx]]
        compute = {
            "miou": lambda: miou_from(self.conf[idx].sum(0)) if self.conf is not None else float("nan"),
            "f1": lambda: f1_from(f1_counts(self.comp[lab], self.comp_truth[lab]).sum(0)) if len(lab) else float("nan"),
            "mean_ap": lambda: mean_ap(self.comp[lab], self.comp_truth[lab]) if len(lab) else float("nan"),
            "rmse": lambda: rmse(self.height[idx], self.height_truth[idx])}
        return {k: compute[k]() for k in metrics}

    def per_class_iou(self) -> np.ndarray:
        """IoU per class over all rows (``nan``: class in neither truth nor prediction)."""
        return iou_from(self.conf.sum(0)) if self.conf is not None else np.array([])


def subsets(modalities: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``all``, ``without <m>`` for each modality (from three modalities on: with two it is ``only`` the other) and
    ``only <m>`` for each (with more than one modality)."""
    out = {"all": tuple(modalities)}
    if len(modalities) > 2:
        out.update({f"without {m}": tuple(x for x in modalities if x != m) for m in modalities})
    if len(modalities) > 1:
        out.update({f"only {m}": (m,) for m in modalities})
    return out


def summary(per_seed: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float | list[float]]]:
    """Mean, standard deviation (over seeds, ``ddof=1``; 0 for one seed) and the values per seed of each metric."""
    out: dict[str, dict[str, float | list[float]]] = {}
    for k in METRICS:
        v = np.asarray([s[k] for s in per_seed], np.float64)
        ok = v[np.isfinite(v)]
        out[k] = {"mean": float(ok.mean()) if len(ok) else float("nan"),
                  "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0, "seeds": [float(x) for x in v]}
    return out


def difference(a: Sequence[Evaluation], b: Sequence[Evaluation], metric: str, *, resamples: int, level: float,
               seed: int = 0) -> tuple[float, float, float]:
    """Seed-mean ``metric`` of ``a`` minus that of ``b`` (the same seeds and test rows), with its paired bootstrap
    interval over test samples (one resample of the rows for both sides and every seed)."""
    n = len(a[0].comp)

    def stat(idx: np.ndarray) -> float:
        return float(np.mean([e.score(idx, (metric,))[metric] for e in a])
                     - np.mean([e.score(idx, (metric,))[metric] for e in b]))

    return paired_bootstrap(stat, n, resamples=resamples, seed=seed, level=level)
