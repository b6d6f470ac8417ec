"""Tokenizer parts: quantizer round trips, decoder shapes and overfitting, modality heads, the cube's modalities and
the base config (shapes and one step on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

import torch.nn.functional as F  # noqa: E402

from eo_dataset.torch import band_stats  # noqa: E402
from eo_models.config import (  # noqa: E402
    DecoderConfig,
    EncoderConfig,
    ModalityConfig,
    QuantizerConfig,
    TokenizerConfig,
)
from eo_models.errors import ConfigError  # noqa: E402
from eo_models.modality import modality_from_cube  # noqa: E402
from eo_models.tokenizers import CategoricalHead, ContinuousHead, MultilabelHead, Tokenizer, make_head  # noqa: E402
from eo_models.tokenizers.encoder import make_encoder  # noqa: E402
from eo_models.tokenizers.heads import IGNORE  # noqa: E402
from eo_models.tokenizers.quantizers.fsq import FSQuantizer  # noqa: E402
from eo_models.tokenizers.quantizers.vq import VectorQuantizer  # noqa: E402
from eo_models.tokenizers.tokenizer import make_decoder, make_quantizer  # noqa: E402
from eo_models.training.tokenizer import tokenizer_config  # noqa: E402

CONTINUOUS = ModalityConfig(name="s2", kind="continuous", bands=("a", "b", "c"), mean=(100.0, 200.0, 300.0),
                            std=(10.0, 20.0, 30.0))
CATEGORICAL = ModalityConfig(name="lc", kind="categorical", bands=("lc",), classes=(1, 2, 4, 7),
                             class_names=("water", "trees", "flooded", "built"))
MULTILABEL = ModalityConfig(name="osm", kind="multilabel", bands=("buildings", "roads"))
MODALITIES = {"continuous": CONTINUOUS, "categorical": CATEGORICAL, "multilabel": MULTILABEL}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(modality: ModalityConfig, decoder: str = "gan", quantizer: str = "fsq") -> TokenizerConfig:
    """A very small tokenizer (8 px per token)."""
    return TokenizerConfig(modality=modality, quantizer=QuantizerConfig(type=quantizer, levels=(8, 5, 5, 5),
                                                                         codebook_size=64, codebook_dim=4),
                           encoder=EncoderConfig(patch=8, dim=16, latent_dim=8),
                           decoder=DecoderConfig(type=decoder, dim=16, disc_start=10**6, unet_dims=(16, 32),
                                                 cond_dim=8, sample_steps=3))


def _data(kind: str, b: int = 2, side: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored values of a modality kind and a valid mask with the top rows invalid."""
    g = torch.Generator().manual_seed(seed)
    if kind == "continuous":
        x = torch.randn(b, 3, side, side, generator=g) * torch.tensor([10.0, 20.0, 30.0]).view(-1, 1, 1)
        x = (x + torch.tensor([100.0, 200.0, 300.0]).view(-1, 1, 1)).to(torch.int16)
    elif kind == "categorical":
        x = torch.tensor([1, 2, 4, 7], dtype=torch.uint8)[torch.randint(0, 4, (b, 1, side, side), generator=g)]
    else:
        x = (torch.rand(b, 2, side, side, generator=g) > 0.5).to(torch.uint8)
    valid = torch.ones(b, side, side, dtype=torch.bool)
    valid[:, :4] = False
    return x, valid


# -- quantizers ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (7, 5, 5, 5, 5), (3, 4)])
def test_fsq_round_trip(levels: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    q = FSQuantizer(16, QuantizerConfig(levels=levels))
    assert q.codebook_size == int(np.prod(levels))
    z = torch.randn(2, 16, 5, 7) * 3
    out = q(z)
    assert out.latents.shape == z.shape and out.indices.shape == (2, 5, 7) and out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < q.codebook_size
    assert torch.equal(q.decode_indices(out.indices), out.latents)  # exactly: the codes are a function of the ids
    assert float(out.loss) == 0.0
    every = q.decode_indices(torch.arange(q.codebook_size).view(1, 1, -1))  # (1, D, 1, K)
    assert torch.unique(every[0, :, 0].T, dim=0).shape[0] == q.codebook_size  # one latent per id, all distinct


def test_fsq_gradients_pass_straight_through() -> None:
    q = FSQuantizer(8, QuantizerConfig(levels=(8, 5, 5, 5)))
    z = torch.randn(1, 8, 2, 2, requires_grad=True)
    q(z).latents.sum().backward()
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)


@pytest.mark.parametrize("variant", [{}, {"codebook_dim": 4}, {"cosine": True}, {"cosine": True, "codebook_dim": 4}],
                         ids=["euclidean", "low-dim", "cosine", "cosine-low-dim"])
def test_vq_round_trip(variant: dict) -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(16, QuantizerConfig(type="vq", codebook_size=64, **variant))
    assert q.codebook_size == 64
    z = torch.randn(2, 16, 4, 6)
    q.train()
    q(z)  # one EMA update
    q.eval()
    out = q(z)
    assert out.indices.shape == (2, 4, 6) and out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < 64
    torch.testing.assert_close(q.decode_indices(out.indices), out.latents)


def test_vq_nearest_code_and_ema_only_in_training() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(8, QuantizerConfig(type="vq", codebook_size=32, dead_code_threshold=0.0)).eval()
    z = torch.randn(1, 8, 3, 3)
    codebook = q.vq.codebook.detach().clone().reshape(32, 8)
    before = codebook.clone()
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(out.indices.reshape(-1), torch.cdist(flat, codebook).argmin(1))
    assert torch.equal(q.vq.codebook.reshape(32, 8), before)  # eval: the codebook does not move
    q.train()
    q(z)
    assert not torch.equal(q.vq.codebook.reshape(32, 8), before)  # training: EMA update


def test_vq_restarts_dead_codes() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(4, QuantizerConfig(type="vq", codebook_size=16, dead_code_threshold=2.0, decay=0.5)).train()
    z = torch.randn(1, 4, 8, 8) + 50.0  # far from every initial code: all but a few codes are dead
    for _ in range(3):
        q(z)
    codebook = q.vq.codebook.reshape(16, 4)
    assert bool((codebook.mean(1) > 10).all())  # dead codes were replaced by vectors of the batch


def test_quantizer_config_errors() -> None:
    with pytest.raises(ConfigError, match="levels"):
        QuantizerConfig(levels=(8, 2))
    with pytest.raises(ConfigError, match="codebook_size"):
        QuantizerConfig(type="vq", codebook_size=1)


# -- decoders --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["gan", "diffusion"])
@pytest.mark.parametrize("kind", list(MODALITIES))
def test_decoder_shapes(decoder: str, kind: str) -> None:
    torch.manual_seed(0)
    tok = Tokenizer(_config(MODALITIES[kind], decoder).to_dict()).eval()
    x, valid = _data(kind, b=2, side=32)
    ids = tok.tokenize(x, valid)
    assert ids.shape == (2, 4, 4)
    out = tok.detokenize(ids)
    assert out.shape == (2, tok.head.out_channels, 32, 32) and out.dtype == torch.float32
    rec = tok.reconstruct(x, valid)
    if kind == "continuous":
        assert rec.shape == (2, 3, 32, 32) and rec.is_floating_point()
    elif kind == "categorical":
        assert rec.shape == (2, 1, 32, 32) and set(rec.unique().tolist()) <= set(CATEGORICAL.classes)
    else:
        assert rec.shape == (2, 2, 32, 32) and rec.dtype == torch.uint8 and set(rec.unique().tolist()) <= {0, 1}
    loss, logs, out, target = tok.training_loss(x, valid, step=0)
    assert loss.ndim == 0 and torch.isfinite(loss) and out.shape == (2, tok.head.out_channels, 32, 32)
    assert "rec" in logs and "quant" in logs


def test_diffusion_decode_is_seeded() -> None:
    torch.manual_seed(0)
    tok = Tokenizer(_config(CONTINUOUS, "diffusion").to_dict()).eval()
    ids = tok.tokenize(*_data("continuous"))
    assert torch.equal(tok.detokenize(ids, seed=3), tok.detokenize(ids, seed=3))
    assert not torch.equal(tok.detokenize(ids, seed=3), tok.detokenize(ids, seed=4))
    assert tok.detokenize(ids, steps=2).shape == (2, 3, 32, 32)


def test_gan_adversarial_losses_after_disc_start() -> None:
    torch.manual_seed(0)
    cfg = _config(CONTINUOUS, "gan")
    cfg = TokenizerConfig(modality=cfg.modality, quantizer=cfg.quantizer, encoder=cfg.encoder,
                          decoder=DecoderConfig(type="gan", dim=16, disc_start=1, disc_dim=8))
    tok = Tokenizer(cfg.to_dict())
    x, valid = _data("continuous")
    _, logs, _, _ = tok.training_loss(x, valid, step=0)
    assert set(logs) == {"rec", "quant"}
    loss, logs, out, target = tok.training_loss(x, valid, step=1)
    assert {"feat", "adv"} <= set(logs)
    dloss = tok.decoder.discriminator_loss(out, tok.head, target, valid)
    assert dloss.ndim == 0 and float(dloss.detach()) >= 0
    disc = {id(p) for p in tok.decoder.discriminator.parameters()}
    assert disc and not disc & {id(p) for p in tok.generator_parameters()}


@pytest.mark.parametrize("decoder", ["gan", "diffusion"])
@pytest.mark.parametrize("kind", list(MODALITIES))
def test_loss_decreases_on_a_fixed_batch(decoder: str, kind: str) -> None:
    """Overfit one tiny batch; the loss is measured with fixed noise and timesteps so the comparison is not noise."""
    torch.manual_seed(0)
    tok = Tokenizer(_config(MODALITIES[kind], decoder).to_dict())
    x, valid = _data(kind)
    opt = torch.optim.Adam(tok.generator_parameters(), lr=3e-3)

    def fixed_loss() -> float:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(123)
            return float(tok.training_loss(x, valid, step=0)[0])

    before = fixed_loss()
    for step in range(30):
        loss = tok.training_loss(x, valid, step)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < (0.9 if decoder == "gan" else 0.95) * before, (before, after)


# -- heads -----------------------------------------------------------------------------------------------------------
def test_continuous_head_normalises_with_the_config_stats() -> None:
    head = make_head(CONTINUOUS)
    assert isinstance(head, ContinuousHead) and head.in_channels == head.out_channels == 3
    x = torch.tensor([110.0, 160.0, 330.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    x[0, :, 1, 1] = float("nan")  # a fill value
    valid = torch.tensor([[[True, True], [True, False]]])
    t = head.target(x, valid)
    torch.testing.assert_close(t[0, :, 0, 0], torch.tensor([1.0, -2.0, 1.0]))
    assert torch.equal(t[0, :, 1, 1], torch.zeros(3))  # invalid pixels are 0, NaN included
    assert torch.equal(head.inputs(x, valid), t)
    torch.testing.assert_close(head.predict(t)[0, :, 0, 0], torch.tensor([110.0, 160.0, 330.0]))
    out = t.clone()
    out[0, :, 1, 1] = 1e6  # errors on invalid pixels do not count
    assert float(head.loss(out, t, valid)) == 0.0
    assert float(head.loss(t + 0.5, t, valid)) == pytest.approx(0.5)  # masked L1


def test_s1_is_modelled_in_db(demo_cube: Path) -> None:
    m = modality_from_cube(demo_cube, "s1rtc")
    assert m.kind == "continuous" and m.transform == "db" and m.units == "dB" and m.bands == ("vv", "vh")
    assert all(-40 < mu < 10 for mu in m.mean) and all(s > 0 for s in m.std)  # dB, not linear power
    head = make_head(m)
    x = torch.full((1, 2, 2, 2), 0.01)  # -20 dB
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    expected = (torch.tensor([-20.0, -20.0]) - torch.tensor(m.mean)) / torch.tensor(m.std)
    torch.testing.assert_close(head.target(x, valid)[0, :, 0, 0], expected)
    torch.testing.assert_close(head.predict(head.target(x, valid))[0, :, 0, 0], torch.tensor([-20.0, -20.0]))
    assert torch.isfinite(head.target(torch.zeros(1, 2, 2, 2), valid)).all()  # 0 linear is clipped, not -inf


def test_categorical_head_maps_class_ids() -> None:
    head = make_head(CATEGORICAL)
    assert isinstance(head, CategoricalHead) and head.out_channels == 4
    x = torch.tensor([[[[1, 2, 4, 7, 3, 0, 200, 7]]]], dtype=torch.uint8)  # 3, 0, 200: not classes
    valid = torch.ones(1, 1, 8, dtype=torch.bool)
    valid[0, 0, 7] = False
    assert head.target(x, valid).tolist() == [[[0, 1, 2, 3, IGNORE, IGNORE, IGNORE, IGNORE]]]
    emb = head.inputs(x, valid)
    assert emb.shape == (1, head.in_channels, 1, 8)
    assert torch.equal(emb[..., 4], emb[..., 7])  # unknown and invalid share the "no data" embedding
    logits = torch.zeros(1, 4, 1, 3)
    logits[0, [3, 0, 2], 0, [0, 1, 2]] = 5.0
    assert head.predict(logits).tolist() == [[[[7, 1, 4]]]]  # stored class ids, not 0..K-1


def test_categorical_loss_is_cross_entropy_not_a_regression() -> None:
    head = make_head(CATEGORICAL)
    x = torch.tensor([1, 2, 4, 7, 3], dtype=torch.uint8).view(1, 1, 1, 5)
    valid = torch.ones(1, 1, 5, dtype=torch.bool)
    target = head.target(x, valid)
    perfect = F.one_hot(target.clamp(min=0), 4).permute(0, 3, 1, 2).float() * 50
    assert float(head.loss(perfect, target, valid)) < 1e-6
    logits = torch.randn(1, 4, 1, 5)
    expected = F.cross_entropy(logits, torch.tensor([[[0, 1, 2, 3, -100]]]), ignore_index=-100)
    torch.testing.assert_close(head.loss(logits, target, valid), expected)
    # the same data under other class ids: the same loss (a regression on ids would change with their values)
    other = make_head(ModalityConfig(name="lc", kind="categorical", bands=("lc",), classes=(10, 20, 40, 70)))
    x2 = torch.tensor([10, 20, 40, 70, 30], dtype=torch.uint8).view(1, 1, 1, 5)
    torch.testing.assert_close(other.loss(logits, other.target(x2, valid), valid), expected)
    nothing = torch.zeros(1, 1, 5, dtype=torch.bool)
    zero = head.loss(logits.requires_grad_(), head.target(x, nothing), nothing)
    assert float(zero.detach()) == 0.0 and zero.requires_grad  # no valid pixel: 0, still differentiable


def test_multilabel_head_is_masked_bce() -> None:
    head = make_head(MULTILABEL)
    assert isinstance(head, MultilabelHead) and head.in_channels == head.out_channels == 2
    x, valid = _data("multilabel", b=1, side=8)
    target = head.target(x, valid)
    assert set(target.unique().tolist()) <= {0.0, 1.0} and float(target[:, :, :4].abs().sum()) == 0
    logits = torch.randn(1, 2, 8, 8)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    torch.testing.assert_close(head.loss(logits, target, valid), bce[valid].mean())
    assert head.predict(logits).dtype == torch.uint8
    assert torch.equal(head.predict(logits), (logits > 0).to(torch.uint8))
    assert set(head.inputs(x, valid)[:, :, 4:].unique().tolist()) <= {-1.0, 1.0}


def test_modality_from_cube_for_every_demo_modality(demo_cube: Path) -> None:
    cube = xr.open_zarr(demo_cube)
    want = {"s2l2a": ("continuous", 12, 10.0), "s1rtc": ("continuous", 2, 10.0), "landsat": ("continuous", 6, 30.0),
            "dem": ("continuous", 1, 30.0), "canopy": ("continuous", 1, 10.0), "lulc": ("categorical", 1, 10.0),
            "osm": ("multilabel", 9, 10.0)}
    assert set(want) == set(cube.attrs["modalities"])
    for name, (kind, nbands, res) in want.items():
        m = modality_from_cube(demo_cube, name)
        assert (m.name, m.kind, len(m.bands), m.resolution_m) == (name, kind, nbands, res), name
        assert m.bands == tuple(str(b) for b in cube[f"{name}_band"].values)
        assert str(demo_cube) in m.stats_from and cube.attrs["recipe_hash"] in m.stats_from
        assert type(make_head(m)).__name__ == {"continuous": "ContinuousHead", "categorical": "CategoricalHead",
                                               "multilabel": "MultilabelHead"}[kind]
        if kind == "continuous" and name != "s1rtc":
            _, mean, std = band_stats(cube.attrs, name)
            assert m.transform == "none"
            np.testing.assert_allclose(m.mean, mean)
            np.testing.assert_allclose(m.std, std)
    lulc = modality_from_cube(demo_cube, "lulc")
    table = cube.attrs["modalities"]["lulc"]["classes"]
    assert lulc.classes == tuple(sorted(int(k) for k in table)) == (1, 2, 4, 5, 7, 8, 9, 10, 11)
    assert lulc.class_names == tuple(table[str(i)] for i in lulc.classes)
    with pytest.raises(ConfigError, match="no modality 'nope'"):
        modality_from_cube(demo_cube, "nope")


def test_modality_config_errors() -> None:
    with pytest.raises(ConfigError, match="3 bands but 1 means"):
        ModalityConfig(name="x", kind="continuous", bands=("a", "b", "c"), mean=(0.0,), std=(1.0,))
    with pytest.raises(ConfigError, match="class table"):
        ModalityConfig(name="x", kind="categorical", bands=("a",), classes=(1,))


# -- the base config -------------------------------------------------------------------------------------------------
def test_base_config(demo_cube: Path) -> None:
    """The base configs' settings, and ViT-B encoder + FSQ 8-8-8-6-5 forward/backward at 256 px (16 x 16 tokens),
    the decoder at 32 px (a fast check of the parts; the whole tokenizer's step is the next test, about 45 s)."""
    cfg = tokenizer_config(demo_cube, "s2l2a", "base")
    assert (cfg.encoder.type, cfg.encoder.patch, cfg.encoder.dim, cfg.encoder.depth) == ("vit", 16, 768, 12)
    assert (cfg.decoder.type, cfg.train.crop, cfg.train.precision) == ("diffusion", 256, "bf16")
    assert cfg.quantizer.levels == (8, 8, 8, 6, 5) and cfg.quantizer.codebook_size_ == 15360
    lulc = tokenizer_config(demo_cube, "lulc", "base")
    assert lulc.quantizer.levels == (7, 5, 5, 5, 5) and lulc.quantizer.codebook_size_ == 4375
    assert make_quantizer(lulc.encoder.latent_dim, lulc.quantizer).codebook_size == 4375
    landsat = tokenizer_config(demo_cube, "landsat", "base")
    assert landsat.train.crop // 3 % landsat.encoder.patch == 0

    torch.manual_seed(0)
    head = make_head(cfg.modality)
    encoder = make_encoder(head.in_channels, cfg.encoder)
    params = sum(p.numel() for p in encoder.parameters())
    assert 80e6 < params < 95e6, params  # ViT-B: ~86M, plus a 12-band patch embedding
    quantizer = make_quantizer(cfg.encoder.latent_dim, cfg.quantizer)
    assert quantizer.codebook_size == 15360
    x = torch.randint(1, 10000, (1, 12, 256, 256), dtype=torch.int32)
    valid = torch.ones(1, 256, 256, dtype=torch.bool)
    q = quantizer(encoder(head.inputs(x, valid)))
    assert q.latents.shape == (1, 32, 16, 16) and q.indices.shape == (1, 16, 16)
    assert 0 <= int(q.indices.min()) and int(q.indices.max()) < 15360
    (q.latents.square().mean() + q.loss).backward()
    assert encoder.embed.weight.grad is not None and torch.isfinite(encoder.embed.weight.grad).all()

    decoder = make_decoder(cfg.encoder.latent_dim, head.out_channels, cfg.encoder.patch, cfg.decoder)
    small = quantizer(torch.randn(1, 32, 2, 2)).latents  # 2 x 2 tokens -> 32 px
    target = head.target(x[..., :32, :32], valid[..., :32, :32])
    loss, logs, out = decoder.generator_loss(small, head, target, valid[..., :32, :32], step=0)
    assert out.shape == (1, 12, 32, 32) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in decoder.unet.conv_out.parameters())


def test_base_tokenizer_one_full_step(demo_cube: Path) -> None:
    """The whole base tokenizer (ViT-B/16, FSQ 8-8-8-6-5, the base diffusion UNet): one AdamW step on one 64 px
    Sentinel-2 patch of the demo cube, on a CPU, in float32 (the config's bf16 is for GPUs). Every layer runs; the
    patch is small only to keep the CPU test short (a 256 px patch, the config's crop, took 50 s here)."""
    from eo_dataset.torch import CubeDataset

    cfg = tokenizer_config(demo_cube, "s2l2a", "base")
    ds = CubeDataset(demo_cube, ["s2l2a"], crop=64, crop_mode="center", normalize=False)
    i = int(np.flatnonzero(ds.availability[:, 0])[0])
    batch = ds.get_batch([i])
    torch.manual_seed(0)
    tok = Tokenizer(cfg.to_dict())
    opt = torch.optim.AdamW(tok.generator_parameters(), lr=1e-4)
    before = tok.encoder.embed.weight.detach().clone()
    loss, logs, out, target = tok.training_loss(batch["s2l2a"], batch["s2l2a_valid"], step=0)
    assert out.shape == (1, 12, 64, 64) and torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(before, tok.encoder.embed.weight)
    assert tok.tokenize(batch["s2l2a"], batch["s2l2a_valid"]).shape == (1, 4, 4)  # one token per 16 x 16 px
