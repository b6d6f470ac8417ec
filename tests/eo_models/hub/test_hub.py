"""Tokenizers on the Hugging Face Hub (offline): save_pretrained -> from_pretrained gives identical outputs, from a
folder and from a local Hub cache with HF_HUB_OFFLINE=1; config.json and the model card carry the modality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

from huggingface_hub import PyTorchModelHubMixin  # noqa: E402

from eo_models.tokenizers import Tokenizer  # noqa: E402
from eo_models.training.core import save_with_card  # noqa: E402
from eo_models.training.tokenizer import make_loader, train_tokenizer  # noqa: E402

REV = "0123456789abcdef0123456789abcdef01234567"
VARIANTS = {"fsq-gan": ("s2l2a", "fsq", "gan"), "vq-diffusion": ("lulc", "vq", "diffusion")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny tokenizers trained for two steps: s2l2a FSQ + GAN, lulc VQ + diffusion."""
    root = tmp_path_factory.mktemp("hub")
    out = {}
    for name, (modality, quantizer, decoder) in VARIANTS.items():
        out[name] = train_tokenizer(demo_cube, modality, root / name, quantizer=quantizer, decoder=decoder, steps=2,
                                    batch_size=2, crop=32, progress=False).out
    return out


def _batch(demo_cube: Path, tok: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Four centre crops of 32 px from samples that have the modality."""
    _, _, loader = make_loader(demo_cube, tok.cfg, shuffle=False, crop_mode="center")
    batch = next(iter(loader))
    m = tok.modality
    return batch[m][:4], batch[f"{m}_valid"][:4]


def _same_outputs(a: Tokenizer, b: Tokenizer, x: torch.Tensor, valid: torch.Tensor) -> None:
    assert a.cfg == b.cfg
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    tokens = a.tokenize(x, valid)
    assert torch.equal(tokens, b.tokenize(x, valid))
    assert torch.equal(a.reconstruct(x, valid), b.reconstruct(x, valid))  # diffusion: seeded sampling
    assert torch.equal(a.detokenize(tokens), b.detokenize(tokens))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_and_load_a_folder(variant: str, trained: dict[str, Path], demo_cube: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_pretrained(trained[variant])
    modality, quantizer, decoder = VARIANTS[variant]
    assert not tok.training  # the library puts loaded models in eval mode
    assert (tok.modality, tok.cfg.quantizer.type, tok.cfg.decoder.type) == (modality, quantizer, decoder)
    x, valid = _batch(demo_cube, tok)
    out = tmp_path / "copy"
    tok.save_pretrained(out)
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    _same_outputs(tok, Tokenizer.from_pretrained(out), x, valid)
    _same_outputs(tok, Tokenizer.from_pretrained(str(out)), x, valid)


def test_config_json_carries_the_modality(trained: dict[str, Path], demo_cube: Path) -> None:
    import xarray as xr

    cube = xr.open_zarr(demo_cube)
    s2 = json.loads((trained["fsq-gan"] / "config.json").read_text())
    m = s2["modality"]
    assert m["name"] == "s2l2a" and m["kind"] == "continuous" and m["transform"] == "none"
    assert m["bands"] == [str(b) for b in cube["s2l2a_band"].values]
    assert len(m["mean"]) == len(m["std"]) == 12 and all(s > 0 for s in m["std"])
    assert str(demo_cube) in m["stats_from"] and cube.attrs["recipe_hash"] in m["stats_from"]
    assert s2["quantizer"]["type"] == "fsq" and s2["decoder"]["type"] == "gan" and s2["train"]["steps"] == 2
    lulc = json.loads((trained["vq-diffusion"] / "config.json").read_text())["modality"]
    table = cube.attrs["modalities"]["lulc"]["classes"]
    assert lulc["kind"] == "categorical" and lulc["classes"] == sorted(int(k) for k in table)
    assert lulc["class_names"] == [table[str(i)] for i in lulc["classes"]]


def test_model_card(trained: dict[str, Path], demo_cube: Path, tmp_path: Path) -> None:
    card = (trained["fsq-gan"] / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: eo-models" in card
    assert "# 4M4EO tokenizer: s2l2a" in card and "## Modality" in card
    assert "B01, B02, B03" in card and "B12" in card
    assert "normalisation: (x - mean) / std per band" in card and "| B04 |" in card
    assert str(demo_cube) in card  # the training cube
    assert "FSQ levels [8, 5, 5, 5]" in card and "gan decoder" in card
    lulc = (trained["vq-diffusion"] / "README.md").read_text()
    assert "kind: categorical" in lulc and "| 1 | water |" in lulc and "VQ, 1000 codes" in lulc
    tok = Tokenizer.from_pretrained(trained["fsq-gan"])
    save_with_card(tok, tmp_path / "with-metrics", metrics={"psnr": 21.5, "codebook_usage": 0.3})
    card = (tmp_path / "with-metrics" / "README.md").read_text()
    assert "## Metrics" in card and '"psnr": 21.5' in card


def _hub_cache(folder: Path, root: Path, repo: str) -> Path:
    """A Hugging Face Hub cache holding ``repo`` at revision ``REV`` (branch ``main``) with ``folder``'s files."""
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / REV
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "README.md"):
        shutil.copy2(folder / name, snapshot / name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(REV)  # no newline: huggingface_hub reads the file as is
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_load_from_the_hub_cache_offline(offline, variant: str, trained: dict[str, Path], demo_cube: Path,
                                         tmp_path: Path) -> None:
    repo = f"org/{variant}"
    cache = _hub_cache(trained[variant], tmp_path / "hub", repo)
    tok = Tokenizer.from_pretrained(trained[variant])
    x, valid = _batch(demo_cube, tok)
    for revision in (None, "main", REV):
        _same_outputs(tok, Tokenizer.from_pretrained(repo, cache_dir=cache, revision=revision), x, valid)


def test_missing_repo_offline(offline, trained: dict[str, Path], tmp_path: Path) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = _hub_cache(trained["fsq-gan"], tmp_path / "hub", "org/fsq-gan")
    with pytest.raises(LocalEntryNotFoundError):
        Tokenizer.from_pretrained("org/nothing", cache_dir=cache)
    with pytest.raises(OSError):  # LocalEntryNotFoundError is an OSError (FileNotFoundError) too
        Tokenizer.from_pretrained("org/fsq-gan", cache_dir=cache, revision="v9")


def test_push_to_hub_is_the_library_s() -> None:
    assert "push_to_hub" not in Tokenizer.__dict__ and "save_pretrained" not in Tokenizer.__dict__
    assert Tokenizer.push_to_hub is PyTorchModelHubMixin.push_to_hub
    assert issubclass(Tokenizer, PyTorchModelHubMixin)
