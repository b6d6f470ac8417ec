"""TerraMind-1.0 tokenizer conversion, checked against terratorch's own modules.

The reference runs from terratorch's source in ``.terratorch`` (``bash .ci/terratorch.sh``; terratorch's own
dependencies need Python 3.12 and torchgeo 0.9, this project pins 0.8.1) in a subprocess
(``terramind_reference.py``): random weights in terratorch's DiVAE, its state dict saved as TerraMind ships it, and
what terratorch computes for given inputs. The tests convert that file with ``eo-models convert terramind`` and
compare. Without that source they skip, saying so; in CI (``CI`` set) they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eo_models.cli.main import main
from eo_models.convert.terramind import (
    PREFIXES,
    architecture,
    convert_tokenizer,
    entry_for,
    read_state_dict,
    tokenizer_config,
)
from eo_models.errors import CheckpointError, ConfigError
from eo_models.tokenizers.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / ".terratorch"  #: terratorch's source, unpacked by .ci/terratorch.sh
SCRIPT = Path(__file__).with_name("terramind_reference.py")
FILE = "TerraMind_Tokenizer_S2L2A.pt"
SPEC = {"channels": 12, "dim": 128, "depth": 2, "unet_channels": 32, "unet_blocks": 1, "steps": 3, "seed": 7,
        "file": FILE}


def need_reference() -> None:
    """Skip without the reference venv, saying how to make it; in CI (``CI`` set) fail instead."""
    if not (REFERENCE / "terratorch" / "__init__.py").is_file():
        reason = (f"terratorch's source (the TerraMind reference) is not in {REFERENCE}; unpack it with "
                  "`bash .ci/terratorch.sh` (CI does)")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def reference_env() -> dict[str, str]:
    """The environment of the reference subprocess: terratorch's source importable, one thread."""
    return {**os.environ, "PYTHONPATH": str(REFERENCE), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with terratorch's random-weight S2L2A-like tokenizer (``FILE``), inputs ``x.pt`` and ``ref.pt``."""
    need_reference()
    d = tmp_path_factory.mktemp("terramind")
    _, entry = entry_for("S2L2A", "")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 10000, (2, 12, 64, 64), generator=g).float()  # stored S2 DN values, 64 px: 4 x 4 tokens
    torch.save(x, d / "x.pt")
    spec = {**SPEC, "levels": entry["levels"], "mean": entry["mean"], "std": entry["std"], "inputs": str(d / "x.pt")}
    (d / "spec.json").write_text(json.dumps(spec))
    r = subprocess.run([sys.executable, str(SCRIPT), str(d / "spec.json"), str(d)], capture_output=True,
                       text=True, timeout=600, env=reference_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def converted(reference: Path) -> Path:
    out = reference / "converted"
    assert main(["convert", "terramind", "--from", str(reference / FILE), "--out", str(out)]) == 0
    return out


def _inputs(reference: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.load(reference / "x.pt", weights_only=True)
    return x, torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.bool)


def test_encoder_latents_and_token_ids_equal_terratorch(reference: Path, converted: Path) -> None:
    tok = Tokenizer.from_pretrained(converted)
    ref = torch.load(reference / "ref.pt", weights_only=True)
    x, valid = _inputs(reference)
    with torch.no_grad():
        latents = tok.encoder(tok.head.inputs(x, valid))
        q = tok.quantizer(latents)
    assert latents.shape == ref["latents"].shape == (2, 5, 4, 4)
    assert (latents - ref["latents"]).abs().max() <= 1e-5
    assert (q.latents - ref["quant"]).abs().max() <= 1e-5
    assert torch.equal(tok.tokenize(x, valid), ref["tokens"])
    assert len(torch.unique(ref["tokens"])) > 8  # random weights spread the ids: the comparison means something


def test_decoder_output_equals_terratorch_for_the_same_seed(reference: Path, converted: Path) -> None:
    tok = Tokenizer.from_pretrained(converted)
    ref = torch.load(reference / "ref.pt", weights_only=True)
    out = tok.detokenize(ref["tokens"], steps=SPEC["steps"], seed=SPEC["seed"])
    assert out.shape == ref["decoded"].shape == (2, 12, 64, 64)
    assert (out - ref["decoded"]).abs().max() <= 1e-5
    assert ref["decoded"].std() > 0.1  # not a constant image
    other = tok.detokenize(ref["tokens"], steps=SPEC["steps"], seed=SPEC["seed"] + 1)
    assert (other - ref["decoded"]).abs().max() > 1e-2  # the seed matters, so equality above is no accident


def test_converted_folder_config_and_card(reference: Path, converted: Path) -> None:
    assert sorted(p.name for p in converted.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["name"] == "terramind-1.0-s2l2a"
    assert cfg["modality"]["bands"] == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                                        "B12"]
    assert cfg["modality"]["mean"][0] == 1390.458 and cfg["modality"]["std"][-1] == 1334.311
    assert cfg["quantizer"] == {**cfg["quantizer"], "type": "sigmoid_fsq", "levels": [8, 8, 8, 6, 5]}
    assert cfg["encoder"] == {**cfg["encoder"], "type": "terramind_vit", "dim": 128, "depth": 2, "heads": 2,
                              "patch": 16, "latent_dim": 5}
    assert cfg["decoder"] == {**cfg["decoder"], "type": "terramind_diffusion", "unet_dims": [32, 64, 64, 64],
                              "layers_per_block": 1}
    card = (converted / "README.md").read_text()
    for text in ("license: apache-2.0", "ibm-esa-geospatial/TerraMind-1.0-Tokenizer-S2L2A", "| B8A | NIR_NARROW |",
                 "revision: unknown (a local file)", "sha256 of the .pt file", "TerraMind: Large-Scale"):
        assert text in card


def test_converting_again_replaces_only_a_converted_folder(reference: Path, converted: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "terramind", "--from", str(reference / FILE), "--out", str(converted)]) == 0
    assert "TerraMind-1.0 S2L2A ->" in capsys.readouterr().out
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["convert", "terramind", "--from", str(reference / FILE), "--out", str(other)]) == 2
    assert "left untouched" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"


# -- without the reference: TerraMind-layout state dicts made from our own modules ---------------------------------
def _terramind_state_dict(seed: int = 0, name: str = "S2L2A") -> dict[str, torch.Tensor]:
    """A state dict laid out as TerraMind's ``name`` tokenizer file (small sizes), from eo_models' own modules."""
    _, entry = entry_for(name, "")
    arch = {"channels": len(entry["bands"]), "encoder": {"type": "terramind_vit", "patch": 16, "dim": 64, "depth": 1,
                                                         "heads": 1, "latent_dim": 5},
            "decoder": {"type": "terramind_diffusion", "unet_dims": (32, 32, 32, 32), "layers_per_block": 1}}
    torch.manual_seed(seed)
    return upstream_state_dict(Tokenizer(tokenizer_config(name, entry, arch).to_dict()))


def upstream_state_dict(tok: Tokenizer) -> dict[str, torch.Tensor]:
    """A converted tokenizer's tensors under TerraMind's names (:data:`PREFIXES` backwards; the head is ours)."""
    back = {v: k for k, v in PREFIXES.items()}
    out = {}
    for key, value in tok.state_dict().items():
        prefix = next((p for p in back if key.startswith(p)), None)
        if prefix is not None:
            out[back[prefix] + key[len(prefix):]] = value.clone()
    return out


def test_architecture_is_read_from_the_shapes() -> None:
    arch = architecture(_terramind_state_dict())
    assert arch["channels"] == 12
    assert arch["encoder"] == {"type": "terramind_vit", "patch": 16, "dim": 64, "depth": 1, "heads": 1,
                               "latent_dim": 5}
    assert arch["decoder"] == {"type": "terramind_diffusion", "unet_dims": (32, 32, 32, 32), "layers_per_block": 1}


def test_bad_inputs_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a pickle")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "junk.pt")
    sd = _terramind_state_dict()
    del sd["quant_proj.weight"]
    with pytest.raises(CheckpointError, match="quant_proj.weight"):
        architecture(sd)
    with pytest.raises(ConfigError, match="cannot tell which TerraMind tokenizer"):
        entry_for(None, "weights.pt")
    torch.save(_terramind_state_dict(), tmp_path / "weights.pt")
    assert main(["convert", "terramind", "--from", str(tmp_path / "weights.pt"), "--out", str(tmp_path / "o"),
                 "--tokenizer", "S1RTC"]) == 2  # 12 channels: not S1's 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "12 channels" in err and "--tokenizer" in err


def test_converted_tokenizer_tokenizes_the_demo_cube(demo_cube: Path, tmp_path: Path) -> None:
    import xarray as xr

    from eo_models.tokens.store import tokenize_cube

    torch.save(_terramind_state_dict(), tmp_path / FILE)
    r = convert_tokenizer(tmp_path / FILE, tmp_path / "tm-s2l2a")
    out = tokenize_cube(demo_cube, [r.out], tmp_path / "tokens.zarr", progress=False)
    ds = xr.open_zarr(out)
    ids = ds["s2l2a_tokens"].values
    avail = xr.open_zarr(demo_cube)["s2l2a_available"].values
    assert avail.any() and ids.shape[1:] == (16, 16)  # the 256 px centre crop of the 264 px samples, 16 px a token
    assert ((ids[avail] >= 0) & (ids[avail] < 8 * 8 * 8 * 6 * 5)).all() and (ids[~avail] == -1).all()
    assert len(set(ids[avail].ravel().tolist())) > 1


def test_the_ndvi_tokenizer_converts_for_the_derived_ndvi(tmp_path: Path) -> None:
    """TerraMind's NDVI tokenizer (a one-band diffusion tokenizer) converts for the recipe's derived ``ndvi``, with
    TerraMind's statistics (0.327 +- 0.322) in the units the cube stores NDVI in (int16 x 10000)."""
    torch.save(_terramind_state_dict(name="NDVI"), tmp_path / "TerraMind_Tokenizer_NDVI.pt")
    r = convert_tokenizer(tmp_path / "TerraMind_Tokenizer_NDVI.pt", tmp_path / "tm-ndvi")  # told by its file name
    m = r.tokenizer.cfg.modality
    assert r.name == "NDVI" and (m.name, m.bands, m.mean, m.std, m.scale) == ("ndvi", ("NDVI",), (3270.0,),
                                                                               (3220.0,), 0.0001)
    from eo_dataset.spec.recipe import load_recipe

    ndvi = load_recipe("4m4eo").modalities["ndvi"]
    assert ndvi.band_names == m.bands and ndvi.collection.scale == m.scale  # the cube's ndvi goes in unchanged
    x = (torch.rand(2, 1, 32, 32) * 2 - 1) * 10000  # stored NDVI
    ids = r.tokenizer.tokenize(x, torch.ones(2, 32, 32, dtype=torch.bool))
    assert ids.shape == (2, 2, 2) and ((ids >= 0) & (ids < 8 * 8 * 8 * 6 * 5)).all()


def test_terramind_v1_s2l2a_full_size_loads_into_the_converted_architecture(tmp_path: Path) -> None:
    """The shapes of terratorch's registered ``terramind_v1_tokenizer_s2l2a`` (the architecture the released
    ``TerraMind_Tokenizer_S2L2A.pt`` loads into, strictly): read into a config, the tokenizer built from it has exactly
    those tensors (ViT-B/16, the 256-wide UNet): real weights will load."""
    need_reference()
    (tmp_path / "spec.json").write_text(json.dumps({"registered": "terramind_v1_tokenizer_s2l2a"}))
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "spec.json"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=reference_env())
    assert r.returncode == 0, r.stderr[-3000:]
    shapes = json.loads((tmp_path / "shapes.json").read_text())
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    arch = architecture(sd)
    assert arch["encoder"] == {"type": "terramind_vit", "patch": 16, "dim": 768, "depth": 12, "heads": 12,
                               "latent_dim": 5}
    assert arch["decoder"] == {"type": "terramind_diffusion", "unet_dims": (256, 512, 512, 512),
                               "layers_per_block": 3}
    _, entry = entry_for("S2L2A", "")
    with torch.device("meta"):
        tok = Tokenizer(tokenizer_config("S2L2A", entry, arch).to_dict())
        ours = {key: list(value.shape) for key, value in upstream_state_dict(tok).items()}
    assert ours == shapes


def test_convert_from_a_repo_in_the_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--ibm-esa-geospatial--TerraMind-1.0-Tokenizer-S2L2A"
    (repo / "snapshots" / rev).mkdir(parents=True)
    torch.save(_terramind_state_dict(), repo / "snapshots" / rev / FILE)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    argv = ["convert", "terramind", "--from", "ibm-esa-geospatial/TerraMind-1.0-Tokenizer-S2L2A", "--cache-dir",
            str(tmp_path / "hub")]
    assert main([*argv, "--out", str(tmp_path / "tm")]) == 0
    assert f"- revision: {rev}" in (tmp_path / "tm" / "README.md").read_text()
    x = torch.rand(1, 12, 32, 32) * 5000
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    ids = Tokenizer.from_pretrained(tmp_path / "tm").tokenize(x, valid)
    assert ids.shape == (1, 2, 2)
    assert main([*argv, "--out", str(tmp_path / "tm2"), "--revision", "v9"]) == 2  # not in the cache: one error line
