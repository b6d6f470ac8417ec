"""ONNX export of tokenizer encoders and the fusion encoder: the files run in onnxruntime and give what torch gives
(token ids equal, floats within 1e-4) on batches of other sizes than the traced one, carry the metadata a user
needs, and are refused where they would overwrite something that is not an export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("vector_quantize_pytorch")

from eo_dataset.errors import OutputError  # noqa: E402
from eo_models.cli.main import main  # noqa: E402
from eo_models.config import DecoderConfig, EncoderConfig, ModalityConfig, QuantizerConfig, TokenizerConfig  # noqa: E402
from eo_models.errors import CheckpointError, ConfigError  # noqa: E402
from eo_models.export.onnx import FORMAT, export_onnx, is_export, read_metadata  # noqa: E402
from eo_models.fusion.config import TokenModality, load_fusion_config  # noqa: E402
from eo_models.fusion.model import FusionModel  # noqa: E402
from eo_models.tokenizers.text import SPECIAL_TOKENS, CaptionTokenizerConfig  # noqa: E402
from eo_models.tokenizers.tokenizer import Tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4
S1 = ModalityConfig(name="s1", kind="continuous", bands=("vv", "vh"), mean=(-10.0, -17.0), std=(3.0, 4.0),
                    transform="db", resolution_m=10.0)
LC = ModalityConfig(name="lc", kind="categorical", bands=("lc",), classes=(1, 2, 4, 7),
                    class_names=("water", "trees", "flooded", "built"), resolution_m=10.0)
OSM = ModalityConfig(name="osm", kind="multilabel", bands=("buildings", "roads"))
MODS = [TokenModality(name="a", kind="image", vocab_size=64, grid=(6, 6), tokenizer="tok/a", digest="aaaa"),
        TokenModality(name="b", kind="image", vocab_size=32, grid=(3, 3), tokenizer="tok/b", digest="bbbb"),
        TokenModality(name="cap", kind="sequence", vocab_size=50, length=10, tokenizer="tok/cap", digest="cccc")]


def tokenizer(modality: ModalityConfig, quantizer: str, encoder: str, seed: int = 0) -> Tokenizer:
    torch.manual_seed(seed)
    cfg = TokenizerConfig(modality=modality, quantizer=QuantizerConfig(type=quantizer, levels=(8, 5, 5, 5),
                                                                       codebook_size=64, codebook_dim=4),
                          encoder=EncoderConfig(type=encoder, patch=8, dim=16, latent_dim=8, depth=1, heads=2),
                          decoder=DecoderConfig(dim=8, disc_dim=8))
    return Tokenizer(cfg.to_dict()).eval()


def values(modality: ModalityConfig, b: int, side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored values as a cube holds them (int16 dB-free S1 power as float, class ids, 0/1), a valid mask with a
    fully invalid sample and an invalid border."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, len(modality.bands), side, side)
    if modality.kind == "continuous":
        x = torch.rand(shape, generator=g) * 0.3
    elif modality.kind == "categorical":
        x = torch.tensor([0.0, 1, 2, 4, 7, 9])[torch.randint(0, 6, shape, generator=g)]  # 0 and 9: not classes
    else:
        x = torch.randint(0, 3, shape, generator=g).float()
    valid = torch.ones(b, side, side, dtype=torch.bool)
    valid[:, :3] = False
    valid[0] = False
    return x, valid


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("modality", "quantizer", "encoder"), [(S1, "fsq", "vit"), (LC, "vq", "conv"),
                                                                (OSM, "fsq", "conv")])
def test_tokenizer_encoder_matches_torch(tmp_path: Path, modality: ModalityConfig, quantizer: str,
                                         encoder: str) -> None:
    tok = tokenizer(modality, quantizer, encoder)
    out = tmp_path / "enc.onnx"
    r = export_onnx(tok, out, size=32)
    assert r.path == out and out.is_file() and r.kind == "tokenizer"
    assert r.tokens_equal == (3 * 4 * 4, 3 * 4 * 4) and max(r.max_abs_diff.values()) <= TOL
    s = session(out)
    assert [i.name for i in s.get_inputs()] == ["values", "valid"]
    assert [o.name for o in s.get_outputs()] == ["tokens", "latents"]
    assert s.get_inputs()[0].shape == ["batch", len(modality.bands), 32, 32]
    for b in (1, 5):  # the batch axis is free
        x, valid = values(modality, b, 32, seed=b)
        tokens, latents = s.run(None, {"values": x.numpy(), "valid": valid.numpy()})
        expected = tok.tokenize(x, valid)
        with torch.no_grad():
            z = tok.encoder(tok.head.inputs(x, valid))
        per_sample = (torch.from_numpy(latents) - z).abs().amax(dim=(1, 2, 3))
        print(f"{modality.kind}/{quantizer}/{encoder}, batch {b}: latents max abs diff {per_sample.tolist()}")
        # sample 0 has no valid pixel: a constant input, whose group norms divide by ~0 and magnify rounding
        assert all(float(d) <= TOL for d in per_sample[1:]) and float(per_sample[0]) <= 10 * TOL
        assert tokens.dtype.name == "int64" and tokens.shape == (b, 4, 4)
        assert torch.equal(torch.from_numpy(tokens), expected)


def test_metadata_says_what_to_feed(tmp_path: Path) -> None:
    tok = tokenizer(S1, "fsq", "conv")
    r = export_onnx(tok, tmp_path / "s1.onnx", size=16)
    meta = session(r.path).get_modelmeta().custom_metadata_map
    assert meta == read_metadata(r.path) == r.metadata
    assert meta["format"] == FORMAT and meta["kind"] == "tokenizer" and meta["source"] == "<Tokenizer object>"
    assert meta["modality"] == "s1" and json.loads(meta["bands"]) == ["vv", "vh"]
    norm = json.loads(meta["normalisation"])
    assert (norm["transform"], norm["mean"], norm["std"]) == ("db", [-10.0, -17.0], [3.0, 4.0])
    assert json.loads(meta["input_size"]) == [16, 16] and json.loads(meta["token_grid"]) == [2, 2]
    assert int(meta["codebook_size"]) == tok.codebook_size == 1000 and int(meta["patch"]) == 8
    assert TokenizerConfig.from_dict(json.loads(meta["config"])) == tok.cfg
    assert json.loads(meta["outputs"])["tokens"] == [["batch", 2, 2], "int64"]
    lc = export_onnx(tokenizer(LC, "vq", "conv"), tmp_path / "lc.onnx", size=8).metadata
    assert json.loads(lc["classes"]) == {"1": "water", "2": "trees", "4": "flooded", "7": "built"}


def test_tokenizer_folder_and_default_size(tmp_path: Path) -> None:
    tok = tokenizer(LC, "fsq", "vit")
    tok.save_pretrained(tmp_path / "lc-tok")
    r = export_onnx(tmp_path / "lc-tok", tmp_path / "lc.onnx")
    assert r.metadata["source"] == str(tmp_path / "lc-tok")
    # 264 px samples at 10 m, 8 px per token: the 33 x 33 grid eo-models tokenize makes
    assert json.loads(r.metadata["token_grid"]) == [33, 33] and r.tokens_equal == (3 * 33 * 33, 3 * 33 * 33)
    x, valid = values(LC, 2, 264, seed=3)
    tokens, _ = session(r.path).run(None, {"values": x.numpy(), "valid": valid.numpy()})
    assert torch.equal(torch.from_numpy(tokens), tok.tokenize(x, valid))


def fusion() -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(load_fusion_config("tiny", MODS, recipe_hash="r" * 16)).eval()


def test_fusion_encoder_matches_embed(tmp_path: Path) -> None:
    model = fusion()
    r = export_onnx(model, tmp_path / "fusion.onnx", modalities=["cap", "a"])
    assert r.kind == "fusion" and max(r.max_abs_diff.values()) <= TOL
    s = session(r.path)
    assert [i.name for i in s.get_inputs()] == ["cap", "a"]
    assert [o.name for o in s.get_outputs()] == ["pooled", "cap_tokens", "a_tokens"]
    g = torch.Generator().manual_seed(5)
    for n in (1, 4):
        a = torch.randint(0, 64, (n, 36), generator=g)
        cap = torch.randint(0, 50, (n, 10), generator=g)
        cap[:, 6:] = -1  # past the caption's end
        if n == 4:
            a[1] = -1  # sample 1 lacks a
            a[3], cap[3] = -1, -1  # sample 3 has nothing
        pooled, cap_tokens, a_tokens = s.run(None, {"cap": cap.numpy(), "a": a.numpy()})
        emb = model.embed({"a": a, "cap": cap, "b": torch.zeros(n, 9, dtype=torch.long)}, ["cap", "a"])
        diffs = {k: float((torch.from_numpy(v) - w).abs().max()) for k, v, w in
                 [("pooled", pooled, emb.pooled), ("cap", cap_tokens, emb.tokens["cap"]),
                  ("a", a_tokens, emb.tokens["a"])]}
        print(f"fusion encoder, batch {n}: max abs diff {diffs}")
        assert max(diffs.values()) <= TOL
        assert pooled.shape == (n, model.cfg.model.dim) and a_tokens.shape == (n, 36, model.cfg.model.dim)
    assert float(abs(a_tokens[1]).max()) == 0.0 and float(abs(pooled[3]).max()) == 0.0
    meta = r.metadata
    described = json.loads(meta["modalities"])
    assert [d["name"] for d in described] == ["cap", "a"]
    assert described[1]["token_grid"] == [6, 6] and described[1]["tokenizer_weights_sha256"] == "aaaa"
    assert meta["recipe_hash"] == "r" * 16 and int(meta["dim"]) == model.cfg.model.dim


def test_refusals(tmp_path: Path) -> None:
    tok = tokenizer(OSM, "fsq", "conv")
    # an output that is not an export of ours: untouched
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("my notes")
    with pytest.raises(OutputError, match="not a ONNX file written by eo-models"):
        export_onnx(tok, foreign, size=8)
    assert foreign.read_text() == "my notes"
    with pytest.raises(OutputError, match="is a folder"):
        export_onnx(tok, tmp_path, size=8)
    # an export of ours is replaced
    out = tmp_path / "osm.onnx"
    export_onnx(tok, out, size=8)
    assert is_export(out) and not is_export(foreign)
    assert json.loads(export_onnx(tok, out, size=16).metadata["input_size"]) == [16, 16]
    assert json.loads(read_metadata(out)["input_size"]) == [16, 16]
    with pytest.raises(ConfigError, match="multiple of the tokenizer's patch"):
        export_onnx(tok, tmp_path / "x.onnx", size=12)
    with pytest.raises(ConfigError, match="no modality 'nope'"):
        export_onnx(fusion(), tmp_path / "x.onnx", modalities=["a", "nope"])
    # unknown model kinds
    caption = tmp_path / "caption"
    caption.mkdir()
    cfg = CaptionTokenizerConfig(vocab_size=30, max_length=8, special_tokens=dict(SPECIAL_TOKENS), cube="demo.zarr",
                                 recipe_hash=None, num_captions=3, requested_vocab_size=30)
    (caption / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(ConfigError, match="is a caption tokenizer"):
        export_onnx(caption, tmp_path / "x.onnx")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ConfigError, match=r"neither an image tokenizer nor a fusion model .*\['hidden_size'\]"):
        export_onnx(other, tmp_path / "x.onnx")
    with pytest.raises(CheckpointError, match="no such folder"):
        export_onnx(tmp_path / "missing", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caption", "notes.onnx", "osm.onnx", "other"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fusion().save_pretrained(tmp_path / "fusion")
    out = tmp_path / "fusion.onnx"
    assert main(["export", "--onnx", str(tmp_path / "fusion"), "--modalities", "a,b", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{out}: fusion encoder; inputs a (batch, 36) int64, b (batch, 9) int64 -> outputs pooled" in text
    assert "checked with onnxruntime against torch" in text
    assert [i.name for i in session(out).get_inputs()] == ["a", "b"]
    notes = tmp_path / "notes.onnx"
    notes.write_text("mine")
    assert main(["export", "--onnx", str(tmp_path / "fusion"), "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eo-models: error: --out") and len(err.strip().splitlines()) == 1
    assert main(["export", "--onnx", str(tmp_path / "fusion"), "--size", "64", "--out", str(out)]) == 2
    assert "size 64 given for a fusion model" in capsys.readouterr().err


def test_hub_repo_id_from_the_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    tok = tokenizer(OSM, "fsq", "conv")
    tok.save_pretrained(tmp_path / "saved")
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "cache" / "models--org--osm-tok" / "snapshots" / rev
    snapshot.mkdir(parents=True)
    for f in (tmp_path / "saved").iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no folder "org" here: org/osm-tok is a repo id
    r = export_onnx("org/osm-tok", tmp_path / "osm.onnx", size=16)
    assert r.metadata["source"] == "org/osm-tok" and r.metadata["weights_sha256"] == read_metadata(r.path)[
        "weights_sha256"]
    x, valid = values(OSM, 2, 16, seed=7)
    tokens, _ = session(r.path).run(None, {"values": x.numpy(), "valid": valid.numpy()})
    assert torch.equal(torch.from_numpy(tokens), tok.tokenize(x, valid))
    with pytest.raises(CheckpointError, match="cannot read the config.json of org/absent .*local Hub cache"):
        export_onnx("org/absent", tmp_path / "absent.onnx")
