"""TerraMind-1.0 backbone conversion (``TerraMind_v1_<size>.pt`` -> :class:`TerraMindBackbone`).

Against the reference (terratorch's source in ``.terratorch``, ``bash .ci/terratorch.sh``; skipped without it, failed
in CI): terratorch's ``TerraMind`` with ``terramind_v1_tiny``'s architecture at a smaller width and depth and random
weights, its state dict saved as TerraMind ships it, converted with ``eo-models convert terramind``; every block's
output of the converted backbone must equal terratorch's ``TerraMindViT`` on the same pixels and token ids, at 224 px
(TerraMind's grid) and 256 px (resized positions). Without the reference: a TerraMind-named state dict made from a
random backbone converts back to the same outputs; sizes, detection and errors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eo_models.backbones.terramind import BackboneInput, TerraMindBackbone, TerraMindConfig
from eo_models.cli.main import main
from eo_models.config import TokenizerConfig
from eo_models.convert.terramind import modality_config, table, tokenizer_config
from eo_models.convert.terramind_backbone import (
    BLOCK_TENSORS,
    EMBEDDINGS,
    backbone_config,
    convert_backbone,
    source_kind,
)
from eo_models.errors import CheckpointError, ConfigError
from eo_models.tokenizers.tokenizer import Tokenizer
from tests.eo_models.convert.test_terramind import need_reference, reference_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).with_name("terramind_backbone_reference.py")
FILE = "TerraMind_v1_tiny.pt"
ENCODER = ["untok_sen2l2a@224", "untok_sen1rtc@224", "tok_sen2l2a@224", "tok_dem@224", "tok_lulc@224",
           "untok_sen2l1c@224"]
SPEC = {"dim": 128, "depth": 2, "heads": 2, "decoder_depth": 1, "seed": 3, "file": FILE, "encoder": ENCODER,
        "decoder": ["tok_sen2l2a@224"]}
VOCAB = 15360  # TerraMind's FSQ levels 8-8-8-6-5
LULC_VOCAB = 4375  # its LULC tokenizer's levels 7-5-5-5-5


def stored_inputs(px: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Stored S2 DN, S1 RTC linear backscatter and token ids of two samples, keyed by TerraMind's names."""
    g = torch.Generator().manual_seed(seed)
    t = px // 16
    return {"untok_sen2l2a@224": torch.randint(1, 10000, (2, 12, px, px), generator=g).float(),
            "untok_sen1rtc@224": torch.rand((2, 2, px, px), generator=g) * 0.5 + 1e-3,
            "tok_sen2l2a@224": torch.randint(0, VOCAB, (2, t, t), generator=g),
            "tok_dem@224": torch.randint(0, VOCAB, (2, t, t), generator=g),
            "tok_lulc@224": torch.randint(0, LULC_VOCAB, (2, t, t), generator=g)}


def ours(inputs: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The same inputs as :meth:`TerraMindBackbone.forward` arguments (same sequence order)."""
    return {"pixels": {"s2l2a": inputs["untok_sen2l2a@224"], "s1rtc": inputs["untok_sen1rtc@224"]},
            "tokens": {"s2l2a": inputs["tok_sen2l2a@224"], "dem": inputs["tok_dem@224"],
                       "lulc": inputs["tok_lulc@224"]}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """terratorch's random TerraMind (``FILE``), the inputs ``in<px>.pt`` and its backbone's outputs ``ref.pt``."""
    need_reference()
    d = tmp_path_factory.mktemp("terramind-backbone")
    runs = {}
    for px in (224, 256):
        torch.save(stored_inputs(px, seed=px), d / f"in{px}.pt")
        runs[str(px)] = str(d / f"in{px}.pt")
    entries = table()["tokenizers"]
    stats = {f"untok_sen{n.lower()[1:]}@224": {"mean": entries[n]["mean"], "std": entries[n]["std"],
                                               "db": entries[n].get("transform") == "db"} for n in ("S2L2A", "S1RTC")}
    (d / "spec.json").write_text(json.dumps({**SPEC, "runs": runs, "stats": stats}))
    r = subprocess.run([sys.executable, str(SCRIPT), str(d / "spec.json"), str(d)], capture_output=True, text=True,
                       timeout=600, env=reference_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def converted(reference: Path) -> Path:
    out = reference / "converted"
    assert main(["convert", "terramind", "--from", str(reference / FILE), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("px", [224, 256])
def test_embeddings_equal_terratorch(reference: Path, converted: Path, px: int) -> None:
    model = TerraMindBackbone.from_pretrained(converted)
    ref = torch.load(reference / "ref.pt", weights_only=True)[str(px)]
    x = torch.load(reference / f"in{px}.pt", weights_only=True)
    model.eval()
    with torch.no_grad():
        out = model(**ours(x), all_layers=True)
    layers = torch.stack(out.layers)
    assert layers.shape == ref.shape == (SPEC["depth"], 2, 5 * (px // 16) ** 2, SPEC["dim"])
    diff = (layers[-1] - ref[-1]).abs().max().item()
    assert diff <= 1e-5, f"max abs diff of the embeddings {diff:.2e}"
    assert torch.allclose(layers, ref, rtol=1e-5, atol=1e-5)
    # the per-input split and the pooled embedding are of that same output
    n = (px // 16) ** 2
    assert torch.equal(out.tokens["s1rtc_pixels"], layers[-1][:, n:2 * n])
    assert out.grids["dem_tokens"] == (px // 16, px // 16)
    assert torch.allclose(out.pooled, ref[-1].mean(1), atol=1e-5)


def test_converted_folder(reference: Path, converted: Path) -> None:
    cfg = TerraMindConfig.from_dict(json.loads((converted / "config.json").read_text()))
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.hidden, cfg.gated, cfg.patch) == (128, 2, 2, 512, False, 16)
    assert cfg.qkv_bias and cfg.proj_bias and cfg.mlp_bias
    assert [(i.name, i.kind) for i in cfg.inputs] == [("s2l2a", "pixels"), ("s1rtc", "pixels"), ("s2l2a", "tokens"),
                                                       ("dem", "tokens"), ("lulc", "tokens")]
    assert cfg.not_converted == ("untok_sen2l1c@224",)
    s1 = cfg.input("s1rtc", "pixels").modality
    assert s1 is not None and s1.transform == "db" and s1.bands == ("vv", "vh")
    assert sorted(p.name for p in converted.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (converted / "README.md").read_text()
    assert "license: apache-2.0" in card and "ibm-esa-geospatial/TerraMind-1.0-tiny" in card
    assert "untok_sen2l1c@224" in card and "Jakubik" in card
    # converting again into the folder it wrote replaces it; a renamed file is told a backbone by its tensors
    renamed = reference / "weights.pt"
    renamed.write_bytes((reference / FILE).read_bytes())
    assert source_kind(renamed) == "backbone"
    assert main(["convert", "terramind", "--from", str(renamed), "--out", str(converted), "--size", "tiny"]) == 0


# -- without the reference -------------------------------------------------------------------------------------------

def small_config(**kw: object) -> TerraMindConfig:
    entries = table()["tokenizers"]
    inputs = (BackboneInput(name="s2l2a", kind="pixels", upstream="untok_sen2l2a@224",
                            modality=modality_config("S2L2A", entries["S2L2A"])),
              BackboneInput(name="s2l2a", kind="tokens", upstream="tok_sen2l2a@224", vocab_size=VOCAB))
    return TerraMindConfig.from_dict({"inputs": inputs, "dim": 64, "depth": 2, "heads": 1, "hidden": 128, **kw})


def terramind_state(model: TerraMindBackbone) -> dict[str, torch.Tensor]:
    """``model``'s weights under TerraMind's names and shapes, plus the tensors a released file has besides."""
    sd = model.state_dict()
    cfg, out = model.cfg, {}
    for i in cfg.inputs:
        up, key = f"{EMBEDDINGS}{i.upstream}.", f"embeddings.{i.key}."
        out[up + "mod_emb"] = sd[key + "modality"].reshape(1, 1, -1)
        out[up + "pos_emb"] = sd[key + "positions"][None]
        out[up + ("proj.weight" if i.kind == "pixels" else "token_emb.weight")] = sd[
            key + ("proj.weight" if i.kind == "pixels" else "table.weight")]
    for b in range(cfg.depth):
        for name in BLOCK_TENSORS:
            if f"blocks.{b}.{name}" in sd:
                out[f"encoder.{b}.{name}"] = sd[f"blocks.{b}.{name}"]
        for n in ("norm1", "norm2"):
            out[f"encoder.{b}.{n}.bias"] = torch.zeros(cfg.dim)
    out["encoder_norm.weight"], out["encoder_norm.bias"] = sd["norm.weight"], torch.zeros(cfg.dim)
    out["decoder.0.self_attn.qkv.weight"] = torch.randn(3 * cfg.dim, cfg.dim)  # left out by the converter
    out["mask_token"] = torch.randn(1, 1, cfg.dim)
    out[f"{EMBEDDINGS}caption.token_emb.weight"] = torch.randn(10, cfg.dim)
    out[f"{EMBEDDINGS}caption.mod_emb"] = torch.randn(1, 1, cfg.dim)
    out[f"{EMBEDDINGS}caption.pos_emb"] = torch.randn(1, 4, cfg.dim)
    return out


@pytest.mark.parametrize("gated", [False, True])
def test_state_dict_round_trip(tmp_path: Path, gated: bool) -> None:
    torch.manual_seed(0)
    bias = not gated  # as TerraMind's sizes: tiny/small GELU with biases, base/large SwiGLU without
    model = TerraMindBackbone(small_config(gated=gated, qkv_bias=bias, proj_bias=bias, mlp_bias=bias).to_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for e in model.embeddings.values():
            e.positions.normal_()
    torch.save(terramind_state(model), tmp_path / "TerraMind_v1_base.pt")
    r = convert_backbone(tmp_path / "TerraMind_v1_base.pt", tmp_path / "out")
    cfg = r.model.cfg
    assert r.name == "base" and (cfg.gated, cfg.qkv_bias, cfg.mlp_bias) == (gated, bias, bias)
    assert cfg.not_converted == ("caption",) and cfg.upstream == "ibm-esa-geospatial/TerraMind-1.0-base"
    back = TerraMindBackbone.from_pretrained(tmp_path / "out")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 10000, (2, 12, 32, 32), generator=g).float()
    ids = torch.randint(0, VOCAB, (2, 2, 2), generator=g)
    a, b = model.embed(pixels={"s2l2a": x}, tokens={"s2l2a": ids}), back.embed(pixels={"s2l2a": x},
                                                                               tokens={"s2l2a": ids})
    assert torch.equal(a.pooled, b.pooled) and a.tokens.keys() == {"s2l2a_pixels", "s2l2a_tokens"}


def test_tokens_from_the_converted_tokenizer() -> None:
    """Ids from an eo-models tokenizer built as a converted TerraMind S2L2A one are the backbone's token input."""
    torch.manual_seed(0)
    entry = table()["tokenizers"]["S2L2A"]
    arch = {"encoder": {"type": "terramind_vit", "patch": 16, "dim": 64, "depth": 1, "heads": 1, "latent_dim": 5},
            "decoder": {"type": "terramind_diffusion", "unet_dims": (32, 32, 32, 32), "layers_per_block": 1},
            "channels": 12}
    cfg: TokenizerConfig = tokenizer_config("S2L2A", entry, arch, sample_steps=1)
    tok = Tokenizer(cfg.to_dict())
    x = torch.randint(1, 10000, (1, 12, 64, 64)).float()
    ids = tok.tokenize(x, torch.ones(1, 64, 64, dtype=torch.bool))
    model = TerraMindBackbone(small_config().to_dict())
    out = model.embed(pixels={"s2l2a": x}, tokens={"s2l2a": ids})
    assert ids.shape == (1, 4, 4) and tok.codebook_size == VOCAB
    assert out.tokens["s2l2a_tokens"].shape == (1, 16, 64) and torch.isfinite(out.pooled).all()


def test_errors(tmp_path: Path) -> None:
    model = TerraMindBackbone(small_config().to_dict())
    with pytest.raises(ConfigError, match="no inputs given"):
        model.embed()
    with pytest.raises(ConfigError, match="no pixels input 's1rtc'"):
        model.embed(pixels={"s1rtc": torch.zeros(1, 2, 16, 16)})
    with pytest.raises(ConfigError, match="multiples of 16"):
        model.embed(pixels={"s2l2a": torch.zeros(1, 12, 20, 20)})
    with pytest.raises(ConfigError, match=r"ids must be in \[0, 15360\)"):
        model.embed(tokens={"s2l2a": torch.full((1, 2, 2), VOCAB)})
    with pytest.raises(ConfigError, match="lacks bands"):
        model.inputs_of({"s2l2a": torch.zeros(1, 3, 16, 16)}, bands={"s2l2a": ["B02", "B03", "B04"]})
    with pytest.raises(ConfigError, match="tokenizer.*backbone"):
        source_kind("x.pt", tokenizer="S2L2A", size="tiny")
    assert source_kind("ibm-esa-geospatial/TerraMind-1.0-large") == "backbone"
    assert source_kind("TerraMind_Tokenizer_S1RTC.pt") == "tokenizer"
    sd = terramind_state(model)
    sd["encoder.0.norm1.bias"] = torch.ones(64)
    torch.save(sd, tmp_path / "TerraMind_v1_tiny.pt")
    with pytest.raises(CheckpointError, match="LayerNorm biases that are not zero"):
        convert_backbone(tmp_path / "TerraMind_v1_tiny.pt", tmp_path / "out")
    with pytest.raises(CheckpointError, match="no tensor 'encoder_norm.weight'"):
        backbone_config({}, "tiny", table()["backbones"]["tiny"])
    # the command line: one line, exit 2, and a folder that is not ours is left alone
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    torch.save(terramind_state(model), tmp_path / "TerraMind_v1_small.pt")
    assert main(["convert", "terramind", "--from", str(tmp_path / "TerraMind_v1_small.pt"), "--out",
                 str(other)]) == 2
    assert (other / "mine.txt").read_text() == "keep"


# -- docs/zoo.md ----------------------------------------------------------------------------------------------------

ZOO = Path(__file__).resolve().parents[3] / "docs" / "zoo.md"


def tiny_weights(path: Path) -> None:
    """A small random TerraMind-named state dict with S2 L2A and S1 RTC pixel inputs and S2 L2A tokens."""
    torch.manual_seed(0)
    entries = table()["tokenizers"]
    s1 = BackboneInput(name="s1rtc", kind="pixels", upstream="untok_sen1rtc@224",
                       modality=modality_config("S1RTC", entries["S1RTC"]))
    cfg = small_config()
    model = TerraMindBackbone(TerraMindConfig.from_dict({**cfg.to_dict(), "inputs": (*cfg.inputs, s1)}).to_dict())
    torch.save(terramind_state(model), path)


def zoo_snippets() -> list[str]:
    section = ZOO.read_text().split("## TerraMind-1.0 backbones in eo_models", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_zoo_snippets_run(demo_cube: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/zoo.md's backbone snippets (embed the demo cube, fine-tune on its land cover) run as written, in a
    folder with demo.zarr and a converted backbone tm-tiny."""
    (tmp_path / "demo.zarr").symlink_to(demo_cube, target_is_directory=True)
    tiny_weights(tmp_path / FILE)
    assert main(["convert", "terramind", "--from", str(tmp_path / FILE), "--out", str(tmp_path / "tm-tiny")]) == 0
    monkeypatch.chdir(tmp_path)
    embed, finetune = zoo_snippets()
    scope: dict = {}
    exec(compile(embed, "docs/zoo.md", "exec"), scope)
    assert scope["out"].pooled.shape == (4, 64) and scope["out"].tokens["s2l2a_pixels"].shape == (4, 196, 64)
    assert "s1rtc_pixels" in scope["out"].tokens and torch.isfinite(scope["out"].pooled).all()
    before = {k: v.clone() for k, v in TerraMindBackbone.from_pretrained("tm-tiny").state_dict().items()}
    scope = {}
    exec(compile(finetune, "docs/zoo.md", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and (scope["target"] >= 0).any()
    tuned = TerraMindBackbone.from_pretrained("tm-tiny-lulc").state_dict()
    assert not torch.equal(tuned["embeddings.s2l2a_pixels.proj.weight"], before["embeddings.s2l2a_pixels.proj.weight"])


def test_finetune_example(demo_cube: Path, tmp_path: Path) -> None:
    """examples/terramind_finetune.py converts, embeds the demo cube, fine-tunes, saves and reloads."""
    example = Path(__file__).resolve().parents[3] / "examples" / "terramind_finetune.py"
    tiny_weights(tmp_path / FILE)
    work = tmp_path / "work"
    run = subprocess.run([sys.executable, str(example), "--cube", str(demo_cube), "--work", str(work),
                          "--weights", str(tmp_path / FILE), "--steps", "2"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "embeddings: (32, 64) pooled" in run.stdout, run.stdout
    assert re.search(r"fine-tuned 2 steps in [\d.]+ s: loss [\d.]+ -> [\d.]+", run.stdout), run.stdout
    assert "reloaded embeddings equal: True" in run.stdout, run.stdout
    assert (work / "tuned" / "model.safetensors").is_file() and (work / "head.safetensors").is_file()


def test_a_missing_modality_is_left_out_per_sample() -> None:
    """``available``: a sample without S1 embeds as if only its S2 were given; one with it as with both."""
    torch.manual_seed(0)
    entries = table()["tokenizers"]
    s1 = BackboneInput(name="s1rtc", kind="pixels", upstream="untok_sen1rtc@224",
                       modality=modality_config("S1RTC", entries["S1RTC"]))
    cfg = small_config()
    model = TerraMindBackbone(TerraMindConfig.from_dict({**cfg.to_dict(), "inputs": (*cfg.inputs, s1)}).to_dict())
    g = torch.Generator().manual_seed(2)
    s2, s1x = torch.randint(1, 10000, (2, 12, 32, 32), generator=g).float(), torch.rand((2, 2, 32, 32), generator=g)
    batch = {"s2l2a": s2, "s1rtc": s1x, "s1rtc_available": torch.tensor([True, False]), "s2l2a_valid":
             torch.ones(2, 32, 32, dtype=torch.bool)}
    both = model.embed(**model.inputs_of(batch))
    alone = model.embed(pixels={"s2l2a": s2[1:]})
    together = model.embed(pixels={"s2l2a": s2[:1], "s1rtc": s1x[:1]})
    assert torch.allclose(both.pooled[1], alone.pooled[0], atol=1e-5)
    assert torch.allclose(both.tokens["s2l2a_pixels"][1], alone.tokens["s2l2a_pixels"][0], atol=1e-5)
    assert torch.allclose(both.pooled[0], together.pooled[0], atol=1e-5)
