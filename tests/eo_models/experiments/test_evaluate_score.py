"""An :class:`~eo_models.experiments.evaluate.Evaluation` scores one metric (as the bootstrap asks) as it scores all,
and a difference of seed means is the same through either."""

from __future__ import annotations

import numpy as np

from eo_models.experiments.evaluate import METRICS, Evaluation, difference


def _evaluation(rng: np.random.Generator, n: int = 40, k: int = 4, g: int = 3) -> Evaluation:
    truth = rng.integers(-1, k, (n, g, g))
    seg = np.where(rng.random((n, g, g)) < 0.7, np.maximum(truth, 0), rng.integers(0, k, (n, g, g)))
    comp_truth = rng.integers(0, 2, (n, k)).astype(np.float32)
    comp = np.clip(comp_truth + rng.normal(0, 0.4, (n, k)), 0, 1)
    height_truth = rng.normal(10, 3, n)
    return Evaluation.of(seg, truth, comp, comp_truth, rng.random(n) < 0.8, height_truth + rng.normal(0, 1, n),
                         height_truth, k)


def test_one_metric_equals_that_metric_of_all() -> None:
    rng = np.random.default_rng(0)
    e = _evaluation(rng)
    idx = rng.integers(0, 40, 40)
    every = e.score(idx)
    assert set(every) == set(METRICS) and all(np.isfinite(v) for v in every.values())
    for m in METRICS:
        assert e.score(idx, (m,)) == {m: every[m]}
    a, b = [_evaluation(rng) for _ in range(2)], [_evaluation(rng) for _ in range(2)]
    diff, lo, hi = difference(a, b, "miou", resamples=50, level=0.9)
    assert diff == np.mean([x.score()["miou"] for x in a]) - np.mean([x.score()["miou"] for x in b])
    assert lo <= hi
