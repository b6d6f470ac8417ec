"""The pieces of the evaluation harness: spatial splits by whole cells, metrics against hand-computed values,
kNN weights, the linear probe's LR choice on val, and tasks read from the demo cube with labels never inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from eo_models.errors import ConfigError  # noqa: E402
from eo_models.experiments.evaluate import Evaluation, subsets, summary  # noqa: E402
from eo_models.experiments.features import Features  # noqa: E402
from eo_models.experiments.metrics import (  # noqa: E402
    confusions,
    f1_counts,
    f1_from,
    majority_miou,
    mean_ap,
    miou_from,
    paired_bootstrap,
    uniform_miou,
)
from eo_models.experiments.probes import ProbeSettings, fit_probe, knn_predict  # noqa: E402
from eo_models.experiments.splits import group_of, label_fraction, split_samples  # noqa: E402
from eo_models.experiments.tasks import load_tasks  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_splits_keep_whole_cells_apart_and_are_seeded() -> None:
    ids = [f"{r}U_{c}R_{a}_{b}" for r in range(10, 16) for c in (3, 4) for a in range(4) for b in range(4)]
    s = split_samples(ids, seed=3)
    cells = {p: {group_of(ids[i]) for i in getattr(s, p)} for p in ("train", "val", "test")}
    assert not (cells["train"] & cells["val"]) and not (cells["train"] & cells["test"]) and not (
        cells["val"] & cells["test"])
    assert len(s.train) + len(s.val) + len(s.test) == len(ids) and len(s.val) and len(s.test)
    assert all(len(c) % 16 == 0 for c in [s.train, s.val, s.test])  # whole cells of 16 sub-cells
    assert np.array_equal(split_samples(ids, seed=3).test, s.test)
    assert group_of("532U_89R_3_1", "quadrant") == "532U_89R_q10"
    with pytest.raises(ConfigError, match="need >= 3"):
        split_samples([i for i in ids if i.startswith("10U")])  # two cells
    sub = label_fraction(s.train, 0.2, seed=0)
    assert len(sub) == round(0.2 * len(s.train)) and set(sub) <= set(s.train)


def test_metrics_match_hand_computed_values() -> None:
    truth = np.array([[[0, 0], [1, -1]]])
    pred = np.array([[[0, 1], [1, 1]]])
    conf = confusions(pred, truth, 2).sum(0)
    assert conf.tolist() == [[1, 1], [0, 1]]  # the -1 cell ignored
    assert miou_from(conf) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert majority_miou(truth, np.array([0, 0, 1]), 2) == pytest.approx((2 / 3) / 2)
    assert uniform_miou(np.array([0, 1]), 2) == pytest.approx(1 / 3)  # tp 0.5, union 1.5 for each class
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
    truth_ml = np.array([[1, 0], [0, 1], [1, 1]], float)
    assert f1_from(f1_counts(scores, truth_ml).sum(0)) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert mean_ap(scores, truth_ml) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    diff, lo, hi = paired_bootstrap(lambda idx: float(np.mean(idx >= 0)), 20, resamples=50)
    assert diff == lo == hi == 1.0


def test_knn_weights_favour_the_nearest() -> None:
    train = np.array([[1, 0], [0, 1], [0.9, 0.1]], np.float32)
    labels = np.array([10.0, 0.0, 10.0])
    pred = knn_predict(train, labels, np.array([[1, 0.05]], np.float32), k=3)
    assert 9.9 < pred[0] <= 10.0  # exp(sim/0.07): the orthogonal neighbour weighs ~e^-14


def test_linear_probe_learns_a_separable_task_and_picks_its_lr_on_val() -> None:
    rng = np.random.default_rng(0)
    n, d, g = 64, 4, 3
    grid = rng.normal(size=(n, d, g, g)).astype(np.float32)
    seg = (grid[:, 0] > 0).astype(np.int64)
    pooled = grid.mean((2, 3))
    comp = np.stack([pooled[:, 1] > 0, pooled[:, 1] <= 0], 1).astype(np.float32)
    height = (3 * pooled[:, 2] + 5).astype(np.float32)
    f = Features(pooled, grid, np.ones(n, bool))
    tr, va = np.arange(48), np.arange(48, 64)
    part = lambda idx: Features(pooled[idx], grid[idx], f.has[idx])  # noqa: E731
    p = fit_probe(part(tr), part(va), seg=(seg[tr], seg[va]), composition=(comp[tr], comp[va]),
                  height=(height[tr], height[va]), classes=2, settings=ProbeSettings(lrs=(1e-5, 0.1), steps=150))
    s, c, h = p.predict(part(va))
    assert (s == seg[va]).mean() > 0.9 and ((c > 0.5) == comp[va]).mean() > 0.9
    assert np.sqrt(np.mean((h - height[va]) ** 2)) < 0.5
    assert p.lrs["seg"] == 0.1  # 1e-5 cannot learn in 150 steps: val chose the other


def test_evaluation_subsets_and_summary() -> None:
    assert list(subsets(["a", "b", "c"])) == ["all", "without a", "without b", "without c", "only a", "only b",
                                               "only c"]
    assert list(subsets(["a", "b"])) == ["all", "only a", "only b"]
    e = Evaluation.of(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int), np.ones((2, 3)), np.ones((2, 3)),
                      np.array([True, False]), np.array([1.0, 2.0]), np.array([1.0, np.nan]), 3)
    s = e.score()
    assert s["miou"] == 1.0 and s["f1"] == 1.0 and s["rmse"] == 0.0
    out = summary([s, {**s, "miou": 0.5}])
    assert out["miou"]["mean"] == 0.75 and out["miou"]["std"] == pytest.approx(np.std([1, 0.5], ddof=1))


def test_tasks_from_the_demo_cube_never_take_a_label_as_input(demo_cube: Path) -> None:
    d = load_tasks(demo_cube, label="lulc", target="canopy", grid=22)
    assert "lulc" not in d.inputs and "canopy" not in d.inputs and d.modalities
    assert d.seg.shape == (len(d), 22, 22) and d.seg.max() < len(d.seg_classes)
    assert (d.seg[~d.has_labels] == -1).all() and d.composition[d.has_labels].sum(1).min() >= 1
    assert np.isfinite(d.height).any() and np.nanmin(d.height) >= 0
    for m, x in d.inputs.items():
        assert x.shape[2:] == (22, 22) and not x[~d.available[m]].any()  # missing: zeros
    with pytest.raises(ConfigError, match="cannot be inputs"):
        load_tasks(demo_cube, label="lulc", target="canopy", inputs=["s2l2a", "lulc"])
    with pytest.raises(ConfigError, match="expected a categorical"):
        load_tasks(demo_cube, label="s2l2a", target="canopy")
    with pytest.raises(ConfigError, match="does not split"):
        load_tasks(demo_cube, label="lulc", target="canopy", grid=7)
