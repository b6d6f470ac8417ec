"""The linear probe's segmentation head (a 1 x 1 convolution, trained over the cells laid out as rows) ends where
the same convolution trained directly on the ``(N, D, G, G)`` features does: same initial weights, same loss, same
AdamW steps with linear warm-up then cosine decay."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from eo_models.experiments.features import Features  # noqa: E402
from eo_models.experiments.probes import ProbeSettings, fit_probe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_segmentation_head_equals_a_convolution_trained_directly() -> None:
    rng = np.random.default_rng(0)
    n, d, g, k = 10, 6, 5, 3
    grid = rng.normal(size=(n, d, g, g)).astype(np.float32)
    seg = rng.integers(-1, k, size=(n, g, g))
    feats = Features(grid.mean((2, 3)), grid, np.ones(n, bool))
    comp = rng.integers(0, 2, size=(n, k)).astype(np.float32)
    height = rng.normal(size=n).astype(np.float32)
    s = ProbeSettings(lrs=(0.05,), steps=30, warmup=4, seed=3)
    probe = fit_probe(feats, feats, seg=(seg, seg), composition=(comp, comp), height=(height, height), classes=k,
                      settings=s)

    x = torch.from_numpy(grid)
    mean = x.mean(0, keepdim=True)  # per cell over the training samples
    sd = (x - mean).std((0, 2, 3), keepdim=True, correction=0)
    x = (x - mean) / torch.where(sd > 0, sd, torch.ones_like(sd))
    y = torch.from_numpy(seg).long()
    torch.manual_seed(s.seed)
    head = torch.nn.Conv2d(d, k, 1)
    lr = s.lrs[0]
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=s.weight_decay)
    for step in range(s.steps):
        factor = ((step + 1) / s.warmup if step < s.warmup else
                  0.5 * (1 + math.cos(math.pi * min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup)))))
        for group in opt.param_groups:
            group["lr"] = lr * factor
        loss = F.cross_entropy(head(x), y, ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    trained = probe.heads["seg"]
    assert isinstance(trained, torch.nn.Conv2d) and trained.weight.shape == head.weight.shape
    assert not torch.allclose(trained.weight, torch.nn.Conv2d(d, k, 1).weight)  # it did train
    torch.testing.assert_close(trained.weight, head.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trained.bias, head.bias, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_array_equal(probe.predict(feats)[0], head(x).argmax(1).numpy())
