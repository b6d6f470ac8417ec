"""The fusion model on synthetic token batches: parameter count in closed form, availability (no token of a missing
modality reaches the encoder or the loss), invariance to padding and modality order, learning, generation,
embeddings, save/load, the tokenizer check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from eo_models.errors import CheckpointError, ConfigError  # noqa: E402
from eo_models.fusion.config import TokenModality, load_fusion_config  # noqa: E402
from eo_models.fusion.generation import Schedule, filter_logits, generate  # noqa: E402
from eo_models.fusion.layers import block_parameters  # noqa: E402
from eo_models.fusion.model import FusionModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODS = [TokenModality(name="a", kind="image", vocab_size=64, grid=(6, 6), tokenizer="tok/a", digest="aaaa"),
        TokenModality(name="b", kind="image", vocab_size=32, grid=(3, 3), tokenizer="tok/b", digest="bbbb"),
        TokenModality(name="cap", kind="sequence", vocab_size=50, length=10, tokenizer="tok/cap", digest="cccc")]


def config(**train):
    return load_fusion_config("tiny", MODS, recipe_hash="r" * 16, **train)


def batch(n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 64, (n, 36), generator=g)
    b = a.reshape(n, 6, 6)[:, ::2, ::2].reshape(n, 9) % 32  # b is a function of a
    cap = torch.randint(0, 50, (n, 10), generator=g)
    cap[:, 7:] = -1
    yes = torch.ones(n, dtype=torch.bool)
    return {"a": a, "b": b, "cap": cap, "a_available": yes, "b_available": torch.tensor([True, True, False, True])[:n],
            "cap_available": yes}


def full(b: dict, name: str) -> torch.Tensor:
    return torch.ones_like(b[name], dtype=torch.bool)


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_parameter_count_in_closed_form(name: str) -> None:
    cfg = load_fusion_config(name, MODS)
    with torch.device("meta"):
        model = FusionModel(cfg)
    a = cfg.model
    vocab = sum(m.vocab_size for m in MODS)
    expected = (vocab * a.dim * (1 if a.tied_outputs else 2) + len(MODS) * a.dim + a.dim + 2 * a.dim
                + a.encoder_depth * block_parameters(a.dim, a.hidden, decoder=False)
                + a.decoder_depth * block_parameters(a.dim, a.hidden, decoder=True))
    assert model.num_parameters() == expected
    if name == "base":  # the 4M-B / TerraMind-B trunk: 12 + 12 blocks of 768, SwiGLU 2048
        assert (a.dim, a.encoder_depth, a.decoder_depth, a.hidden) == (768, 12, 12, 2048)


def test_missing_modalities_never_reach_encoder_or_loss() -> None:
    model = FusionModel(config())
    b = batch()
    seen = []
    encode = model.encode

    def spy(packed):
        seen.append(packed)
        return encode(packed)

    model.encode = spy
    everything = {m: full(b, m) for m in ("a", "b", "cap")}
    out = model(b, {"b": everything["b"]}, {"a": everything["a"], "cap": everything["cap"]})
    packed = seen[0]
    modality = model.slot_modality[packed.slot]
    # sample 2 lacks b: not one of its encoder inputs is a b token, it has none at all
    assert not bool(((modality[2] == 1) & ~packed.pad[2]).any())
    assert int((~packed.pad[2]).sum()) == 0
    assert int((~packed.pad[0]).sum()) == 9
    # targets: a (36 per sample) and the caption's 7 real tokens
    assert out.targets == {"a": 4 * 36, "cap": 4 * 7}
    out = model(b, {"a": everything["a"]}, {"b": everything["b"]})
    assert out.targets == {"b": 3 * 9}  # sample 2's b is never a target, even when asked for


def test_loss_invariant_to_padding_and_modality_order() -> None:
    torch.manual_seed(0)
    model = FusionModel(config()).eval()
    big = batch(4)
    one = {k: v[:1] for k, v in big.items()}
    inputs = {"a": torch.zeros(4, 36, dtype=torch.bool)}
    inputs["a"][0, :5] = True  # sample 0: 5 inputs; sample 1: 30 (padding for sample 0)
    inputs["a"][1, :30] = True
    targets = {"b": torch.zeros(4, 9, dtype=torch.bool)}
    targets["b"][0] = True
    alone = model(one, {"a": inputs["a"][:1]}, {"b": targets["b"][:1]})
    padded = model(big, inputs, targets)
    assert alone.targets == padded.targets == {"b": 9}
    torch.testing.assert_close(alone.loss, padded.loss)
    reordered = dict(reversed(list(big.items())))
    torch.testing.assert_close(model(reordered, inputs, targets).loss, padded.loss)


def test_learns_and_generates_the_targets() -> None:
    torch.manual_seed(0)
    model = FusionModel(config())
    b = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(250):
        g = torch.Generator().manual_seed(step)
        keep = torch.rand(4, 36, generator=g) < 0.5
        out = model(b, {"a": keep}, {"a": ~keep, "b": full(b, "b"), "cap": full(b, "cap")})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else float(out.loss.detach())
    assert float(out.loss) < 0.05 * first
    cond = {"a": b["a"], "a_available": b["a_available"]}
    for steps in (1, 4):
        for order in ("maskgit", "roar"):
            g = generate(model, cond, ["b", "cap"], schedule=Schedule(steps=steps, order=order, temperature=0.0),
                         stop={"cap": []})
            has = b["b_available"]
            assert float((g["b"][has] == b["b"][has]).float().mean()) > 0.95
            assert torch.equal(g["cap"][:, :7], b["cap"][:, :7])  # token by token, causal


def test_generation_schedules_and_stop() -> None:
    s = Schedule(steps=8)
    remaining = [s.masked_after(k, 100) for k in range(1, 9)]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0 and remaining[0] < 100
    assert Schedule(steps=4, tokens="linear").masked_after(2, 100) == 50
    assert Schedule(temperature=2.0, temperature_schedule="linear", steps=4).temperature_at(2) == 1.0
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top-p 0.5: the first token already holds 64 % of the mass
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    with pytest.raises(ConfigError, match="order"):
        Schedule(order="random")
    model = FusionModel(config()).eval()
    b = batch()
    g = generate(model, {"a": b["a"]}, ["cap"], schedule=Schedule(temperature=0.0),
                 stop={"cap": list(range(50))})  # every id stops: one token, then -1
    assert (g["cap"][:, 0] >= 0).all() and (g["cap"][:, 1:] == -1).all()
    with pytest.raises(ConfigError, match="both conditioning and target"):
        generate(model, b, ["a"], conditioning=["a"])
    with pytest.raises(ConfigError, match="no modality 'x'"):
        generate(model, b, ["x"])


def test_embeddings() -> None:
    model = FusionModel(config())
    b = batch()
    e = model.embed(b, ["a", "b"])
    assert e.pooled.shape == (4, 128) and set(e.tokens) == {"a", "b"}
    assert e.tokens["a"].shape == (4, 36, 128) and e.tokens["b"].shape == (4, 9, 128)
    assert e.available["b"].tolist() == [True, True, False, True]
    assert float(e.tokens["b"][2].abs().sum()) == 0.0  # a missing modality has no token outputs
    # pooled is the mean of the sample's token outputs
    torch.testing.assert_close(e.pooled[2], e.tokens["a"][2].mean(0))
    torch.testing.assert_close(e.pooled[0], torch.cat([e.tokens["a"][0], e.tokens["b"][0]]).mean(0))


def test_save_load_identical_logits_and_tokenizer_check(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = FusionModel(config()).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = FusionModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.cfg == model.cfg
    b = batch()
    masks = ({"a": full(b, "a")}, {"b": full(b, "b"), "cap": full(b, "cap")})
    torch.testing.assert_close(model(b, *masks).loss, loaded(b, *masks).loss, rtol=0, atol=0)
    assert "4M4EO fusion model" in (tmp_path / "m" / "README.md").read_text()

    @dataclasses.dataclass
    class Spec:
        digest: str
        vocab_size: int
        source: str = "elsewhere"

    loaded.check_tokens({"a": Spec("aaaa", 64), "b": Spec("bbbb", 32)})
    with pytest.raises(ConfigError, match="trained on tokens of tok/a"):
        loaded.check_tokens({"a": Spec("zzzz", 64)})
    with pytest.raises(CheckpointError, match="no such folder"):
        FusionModel.from_pretrained(tmp_path / "nope")


def test_offline_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model in the Hub cache layout loads by repo id with HF_HUB_OFFLINE=1 (no network)."""
    from huggingface_hub import constants

    model = FusionModel(config()).eval()
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--fusion-tiny" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    (cache / "models--org--fusion-tiny" / "refs").mkdir()
    (cache / "models--org--fusion-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    loaded = FusionModel.from_pretrained("org/fusion-tiny", cache_dir=cache)
    assert loaded.cfg == model.cfg


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="pixel_inputs"):
        load_fusion_config("tiny", MODS).__class__.from_dict({**config().to_dict(),
                                                              "model": {"pixel_inputs": True}})
    with pytest.raises(ConfigError, match="named twice"):
        load_fusion_config("tiny", [MODS[0], MODS[0]])
    with pytest.raises(ConfigError, match="bundled"):
        load_fusion_config("huge", MODS)
    with pytest.raises(ConfigError, match="tokens per sample"):
        FusionModel(config())({"a": torch.zeros(2, 5, dtype=torch.long)}, {}, {})
