"""Frozen fusion-encoder features (:func:`~eo_models.experiments.features.fusion_features`) equal a straightforward
reference: each sample alone through the encoder, each available modality's token outputs resampled onto the task
grid and averaged, whatever the batching, the grouping by token count, the rows asked for or the modalities kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import torch.nn.functional as F  # noqa: E402

from eo_models.experiments.features import Features, fusion_features, pixel_features  # noqa: E402
from eo_models.fusion.config import TokenModality, load_fusion_config  # noqa: E402
from eo_models.fusion.model import FusionModel  # noqa: E402
from eo_models.tokens.dataset import TokenDataset, token_specs  # noqa: E402
from eo_models.tokens.store import tokenize_cube  # noqa: E402
from eo_models.training.tokenizer import train_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: One token per 32 px (a ViT patch embedding: cheap on a CPU): 8 x 8 tokens on s2l2a, 2 x 2 on 30 m landsat.
MICRO = """\
name: micro
quantizer: {type: fsq, levels: [8, 5, 5, 5], codebook_size: 64, codebook_dim: 4}
encoder: {type: vit, patch: 32, dim: 16, depth: 1, heads: 2, latent_dim: 8}
decoder: {type: gan, dim: 8, disc_start: 1000, disc_dim: 8}
train: {crop: 96, batch_size: 2, steps: 2, log_every: 1}
"""
FUSION = """\
name: test
model: {dim: 32, encoder_depth: 2, decoder_depth: 1, heads: 2}
"""
MODALITIES = ("s2l2a", "landsat")
GRID = 11


@pytest.fixture(scope="module")
def store(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features")
    (root / "micro.yaml").write_text(MICRO)
    toks = [train_tokenizer(demo_cube, m, root / m, config=root / "micro.yaml", progress=False).out
            for m in MODALITIES]
    return tokenize_cube(demo_cube, toks, root / "tokens.zarr", batch_size=16, progress=False)


@pytest.fixture(scope="module")
def model(store: Path, tmp_path_factory: pytest.TempPathFactory) -> FusionModel:
    path = tmp_path_factory.mktemp("fusion-config") / "test.yaml"
    path.write_text(FUSION)
    specs = token_specs(store)
    torch.manual_seed(0)
    return FusionModel(load_fusion_config(path, [TokenModality.from_spec(specs[m]) for m in MODALITIES])).eval()


@pytest.fixture
def tokens(store: Path) -> TokenDataset:
    """The store with some samples' modalities switched off: batches then mix token counts (and pad)."""
    ds = TokenDataset(store)
    ds.availability[1::3, ds.modalities.index("s2l2a")] = False
    ds.availability[2::5, ds.modalities.index("landsat")] = False
    ds.availability[4] = False  # a sample with neither
    return ds


def reference(model: FusionModel, ds: TokenDataset, modalities: tuple[str, ...], grid: int) -> Features:
    """Each sample alone through the encoder (no batching, no padding, no grouping)."""
    dim = model.cfg.model.dim
    pooled, cells, has = [], [], []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            e = model.embed({k: v[None] for k, v in item.items()}, modalities)
            ups = []
            for m in modalities:
                if bool(e.available[m][0]):
                    ty, tx = model.cfg.modality(m).grid
                    tok = e.tokens[m][0].reshape(ty, tx, dim).permute(2, 0, 1)[None]
                    ups.append(F.interpolate(tok, size=(grid, grid), mode="bilinear", align_corners=False)[0])
            any_ = any(bool(e.available[m][0]) for m in modalities)
            pooled.append(e.pooled[0].numpy() if any_ else np.zeros(dim, np.float32))
            cells.append(torch.stack(ups).mean(0).numpy() if ups else np.zeros((dim, grid, grid), np.float32))
            has.append(any_)
    return Features(np.stack(pooled), np.stack(cells), np.asarray(has))


def assert_same(a: Features, b: Features) -> None:
    assert a.pooled.shape == b.pooled.shape and a.grid.shape == b.grid.shape
    np.testing.assert_array_equal(a.has, b.has)
    np.testing.assert_allclose(a.pooled, b.pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.grid, b.grid, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("subset", [MODALITIES, ("s2l2a",), ("landsat",)])
def test_batched_features_equal_one_sample_at_a_time(model: FusionModel, tokens: TokenDataset,
                                                     subset: tuple[str, ...]) -> None:
    ref = reference(model, tokens, subset, GRID)
    assert ref.has.any() and not ref.has.all()  # some samples lack the subset: zeros, has False
    assert not ref.has[4] and not ref.pooled[4].any() and not ref.grid[4].any()
    for batch_size in (1, 5, 64):
        assert_same(fusion_features(model, tokens, subset, GRID, batch_size=batch_size), ref)


def test_rows_are_the_features_of_those_samples_in_their_order(model: FusionModel, tokens: TokenDataset) -> None:
    ref = reference(model, tokens, MODALITIES, GRID)
    rows = np.array([7, 2, 4, 30, 1, 2])  # any order, repeats, a sample without inputs
    assert_same(fusion_features(model, tokens, MODALITIES, GRID, rows=rows, batch_size=4),
                Features(ref.pooled[rows], ref.grid[rows], ref.has[rows]))
    empty = fusion_features(model, tokens, MODALITIES, GRID, rows=np.array([], int))
    assert empty.pooled.shape == (0, model.cfg.model.dim) and empty.grid.shape == (0, model.cfg.model.dim, GRID, GRID)
    none = fusion_features(model, tokens, ["not-a-modality"], GRID)  # nothing of the model's: zeros everywhere
    assert not none.has.any() and not none.pooled.any() and none.pooled.shape == ref.pooled.shape


def test_pixel_features_of_rows_are_rows_of_the_features() -> None:
    rng = np.random.default_rng(0)
    inputs = {m: rng.normal(size=(6, c, 4, 4)).astype(np.float32) for m, c in (("a", 2), ("b", 3))}
    available = {"a": np.array([1, 1, 0, 1, 0, 1], bool), "b": np.array([1, 0, 1, 1, 0, 0], bool)}
    full = pixel_features(inputs, available, ["a"], ["a", "b"])
    assert full.grid.shape == (6, 2 + 3 + 2, 4, 4) and not full.grid[:, 2:5].any()  # b not among the modalities
    np.testing.assert_array_equal(full.has, available["a"])
    rows = np.array([5, 0, 2])
    part = pixel_features(inputs, available, ["a"], ["a", "b"], rows=rows)
    np.testing.assert_array_equal(part.grid, full.grid[rows])
    np.testing.assert_array_equal(part.pooled, full.pooled[rows])
    np.testing.assert_array_equal(part.has, full.has[rows])
