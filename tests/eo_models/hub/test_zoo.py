"""The model zoo: the registry (catalogs/models.yaml), cards, ``eo-models list / pull / push --dry-run``, and every
artifact kind round-tripping save -> push --dry-run -> Hub cache -> from_pretrained (HF_HUB_OFFLINE=1) with identical
outputs. The network is never touched: pulls read a local folder laid out as the Hub cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

from huggingface_hub import ModelCard  # noqa: E402

from eo_models.backbones.terramind import BackboneInput, TerraMindBackbone, TerraMindConfig  # noqa: E402
from eo_models.baselines.config import load_baseline_config  # noqa: E402
from eo_models.baselines.model import BaselineModel  # noqa: E402
from eo_models.cli.main import main  # noqa: E402
from eo_models.convert.terramind import modality_config, table  # noqa: E402
from eo_models.errors import CheckpointError, ConfigError  # noqa: E402
from eo_models.fusion.config import TokenModality, load_fusion_config  # noqa: E402
from eo_models.fusion.model import FusionModel, Packed  # noqa: E402
from eo_models.hub.artifacts import KINDS, kind_of_folder  # noqa: E402
from eo_models.hub.card import CardContent, build_card, check_card, render_card  # noqa: E402
from eo_models.hub.pull import pull, sha256_of  # noqa: E402
from eo_models.hub.push import check_staged, stage  # noqa: E402
from eo_models.hub.registry import default_registry_path, load_registry, parse_registry  # noqa: E402
from eo_models.tokenizers.text import CaptionTokenizer, train_caption_tokenizer  # noqa: E402
from eo_models.tokenizers.tokenizer import Tokenizer  # noqa: E402
from eo_models.training.tokenizer import tokenizer_config  # noqa: E402

REV = "89abcdef0123456789abcdef0123456789abcdef"
OTHER = "0" * 40

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved folder per artifact kind (untrained, tiny), each with a train/ folder and a stray file beside."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_config(demo_cube, "s2l2a", "tiny").to_dict())
    caption = train_caption_tokenizer(demo_cube, vocab_size=200, max_length=16)
    mods = [TokenModality(name="a", kind="image", vocab_size=64, grid=(4, 4), tokenizer="org/a", digest="aaaa"),
            TokenModality(name="b", kind="sequence", vocab_size=32, length=6, tokenizer="org/b", digest="bbbb")]
    fusion = FusionModel(load_fusion_config("tiny", mods, recipe_hash="f" * 16))
    s2 = modality_config("S2L2A", table()["tokenizers"]["S2L2A"])
    backbone = TerraMindBackbone(TerraMindConfig.from_dict({
        "inputs": [BackboneInput(name="s2l2a", kind="pixels", modality=s2),
                   BackboneInput(name="s2l2a", kind="tokens", vocab_size=64)],
        "dim": 32, "depth": 1, "heads": 1, "hidden": 64, "upstream": "org/terramind"}).to_dict())
    baseline = BaselineModel(load_baseline_config(
        "tiny", modalities=("a", "b"), channels=(3, 2), classes=2, dim=4, head_dim=4,
        trained_on={"recipe_hash": "e" * 16, "channel_names": {"a": ["x", "y", "z"]}, "class_names": ["p", "q"]}))
    out = {}
    for kind, model in (("tokenizer", tok), ("caption-tokenizer", caption), ("fusion", fusion),
                        ("backbone", backbone), ("baseline", baseline)):
        folder = root / kind
        if kind == "caption-tokenizer":
            model.save_pretrained(folder)
        else:
            model.save_pretrained(folder, model_card_kwargs={"metrics": {"psnr": 20.5, "usage": 0.25}})
        (folder / "train").mkdir()
        (folder / "train" / "metrics.csv").write_text("step,loss\n1,0.5\n")
        (folder / "weights.pt").write_bytes(b"pickle")
        out[kind] = folder
    return out


def same_outputs(kind: str, a, b) -> None:
    """The two artifacts are the same: config, tensors, and what they compute."""
    if kind == "caption-tokenizer":
        assert a.config == b.config
        texts = ["Trees cover 40% of it.", "water and built-up land"]
        ea, eb = a.encode(texts), b.encode(texts)
        assert all(torch.equal(ea[k], eb[k]) for k in ea) and a.decode(ea["input_ids"]) == b.decode(eb["input_ids"])
        return
    assert a.cfg == b.cfg
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    g = torch.Generator().manual_seed(1)
    if kind == "tokenizer":
        x = torch.rand(2, len(a.cfg.modality.bands), 32, 32, generator=g) * 3000
        valid = torch.ones(2, 32, 32, dtype=torch.bool)
        tokens = a.tokenize(x, valid)
        assert torch.equal(tokens, b.tokenize(x, valid))
        assert torch.equal(a.detokenize(tokens), b.detokenize(tokens))
        return
    if kind == "backbone":
        x = torch.rand(2, len(a.cfg.inputs[0].modality.bands), 32, 32, generator=g) * 3000
        ids = torch.randint(0, 64, (2, 2, 2), generator=g)
        assert torch.equal(a.embed({"s2l2a": x}, {"s2l2a": ids}).pooled, b.embed({"s2l2a": x}, {"s2l2a": ids}).pooled)
        return
    if kind == "baseline":
        x = {"a": torch.randn(2, 3, 4, 4, generator=g), "b": torch.randn(2, 2, 4, 4, generator=g)}
        av = {"a": torch.tensor([True, False]), "b": torch.tensor([True, True])}
        with torch.no_grad():
            oa, ob = a.eval()(x, av), b.eval()(x, av)
        assert all(torch.equal(getattr(oa, f), getattr(ob, f)) for f in ("seg", "composition", "height", "embedding"))
        return
    slots = torch.arange(a.slots).expand(2, -1)
    ids = torch.randint(0, 32, slots.shape, generator=g)
    packed = Packed(slot=slots, ids=ids, pad=torch.zeros_like(slots, dtype=torch.bool))
    with torch.no_grad():
        assert torch.equal(a.eval().encode(packed), b.eval().encode(packed))


def hub_cache(folder: Path, root: Path, repo: str, commit: str = REV, branch: str = "main") -> Path:
    """A Hugging Face Hub cache holding ``folder``'s files as ``repo`` at ``commit`` (branch ``branch``)."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / branch).write_text(commit)  # no newline: huggingface_hub reads the file as is
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import


def write_registry(path: Path, *entries: dict) -> Path:
    path.write_text(yaml.safe_dump({"models": list(entries)}, sort_keys=False))
    return path


# -- the round trip, every kind ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_save_push_dry_run_pull_load(offline, kind: str, saved: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = saved[kind]
    original = KINDS[kind].load(folder)
    dry = tmp_path / "upload"
    assert main(["push", str(folder), "--repo", f"org/{kind}", "--dry-run", "--out", str(dry)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in dry.rglob("*")) == sorted(KINDS[kind].files)  # no train/, no weights.pt
    assert "left out of the upload: train/metrics.csv, weights.pt" in out and str(dry) in out
    for name in KINDS[kind].files:
        assert f"  {name}  " in out and sha256_of(dry / name)[:12] in out
        assert (dry / name).read_bytes() == (folder / name).read_bytes()

    repo = f"org/{kind}"
    cache = hub_cache(dry, tmp_path / "hub", repo)
    for revision in (None, "main", REV):
        same_outputs(kind, original, KINDS[kind].load(repo, cache_dir=cache, revision=revision))

    entry = check_staged(dry, KINDS[kind]).registry_entry(repo, REV)
    assert entry["kind"] == kind and entry["license"] == "apache-2.0" and entry["revision"] == REV
    registry = write_registry(tmp_path / "models.yaml", entry)
    assert main(["pull", repo, "--cache-dir", str(cache), "--registry", str(registry)]) == 0
    lines = capsys.readouterr().out.splitlines()
    snapshot = cache / f"models--org--{kind}" / "snapshots" / REV
    assert lines[-1] == str(snapshot) and "every file's sha256 verified" in lines[-2]
    assert sum("sha256 verified" in line for line in lines[:-2]) == len(KINDS[kind].files)
    same_outputs(kind, original, KINDS[kind].load(lines[-1]))


def test_registry_entries_describe_the_artifacts(saved: dict[str, Path], demo_cube: Path) -> None:
    import xarray as xr

    cube = xr.open_zarr(demo_cube)
    described = {k: v.describe(kind_of_folder(saved[k])[1]) for k, v in KINDS.items()}
    tok = described["tokenizer"]
    assert tok.modalities == ("s2l2a",) and tok.bands["s2l2a"] == tuple(str(b) for b in cube["s2l2a_band"].values)
    assert tok.recipe_hash == cube.attrs["recipe_hash"]
    assert described["caption-tokenizer"].recipe_hash == cube.attrs["recipe_hash"]
    assert described["fusion"].modalities == ("a", "b") and described["fusion"].recipe_hash == "f" * 16
    assert described["backbone"].modalities == ("s2l2a",) and len(described["backbone"].bands["s2l2a"]) == 12
    assert described["baseline"].modalities == ("a", "b") and described["baseline"].recipe_hash == "e" * 16
    assert described["baseline"].bands == {"a": ("x", "y", "z")}


# -- cards ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_every_card_is_a_hub_card_with_licence_tags_and_library(kind: str, saved: dict[str, Path]) -> None:
    card = check_card(saved[kind] / "README.md")
    assert card.data.library_name == "eo-models" and card.data.license == "apache-2.0"
    assert "earth-observation" in card.data.tags and "## Use" in card.text and "from_pretrained" in card.text
    if kind == "backbone":  # converted, not trained here: the card names the upstream model instead of metrics
        assert card.text.startswith("# terramind-1.0 backbone, converted") and "org/terramind" in card.text
        return
    assert card.text.startswith("# 4M4EO ")
    if kind != "caption-tokenizer":
        assert card.data.metrics == ["psnr", "usage"] and '"psnr": 20.5' in card.text
    assert card.data.to_dict().get("recipe_hash") == KINDS[kind].describe(kind_of_folder(saved[kind])[1]).recipe_hash


def test_card_content_renders_every_field() -> None:
    content = CardContent(title="# A model", summary="Does things.", tags=("x", "y"),
                          sections=(("Bands", ("- B02, B03",)),), usage=("import eo_models",),
                          metrics={"acc": 0.5, "loss": float("nan")}, license="cc-by-4.0",
                          datasets=("ibm-esa-geospatial/TerraMesh",), recipe_hash="abc123",
                          footer=("Cite the paper.",))
    text = render_card(content)
    card = ModelCard(text)
    assert build_card(content).data.to_dict() == card.data.to_dict()
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["datasets"] == ["ibm-esa-geospatial/TerraMesh"]
    assert data["metrics"] == ["acc", "loss"] and data["recipe_hash"] == "abc123" and data["tags"] == ["x", "y"]
    body = card.text
    assert body.index("# A model") < body.index("## Bands") < body.index("## Metrics") < body.index("## Use")
    assert '"loss": "nan"' in body and body.rstrip().endswith("Cite the paper.")


def test_check_card_refuses_other_cards(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nlicense: mit\nlibrary_name: timm\n---\n# Another model\n")
    with pytest.raises(CheckpointError, match="library_name 'timm'"):
        check_card(tmp_path / "README.md")
    with pytest.raises(CheckpointError, match="no model card"):
        check_card(tmp_path / "nothing.md")


# -- the registry --------------------------------------------------------------------------------------------------

def test_the_bundled_registry_is_valid_and_claims_no_unchecked_hash(capsys: pytest.CaptureFixture[str]) -> None:
    reg = load_registry()
    assert default_registry_path().name == "models.yaml" and reg.models
    for m in reg.models:
        assert all(f.sha256 is None for f in m.files) or m.revision is not None
        assert m.source.type in ("project", "terramind")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(m.id in out for m in reg.models)
    assert out.count("not verified") == sum(not m.verified for m in reg.models)


def entry(**over) -> dict:
    e = {"id": "org/m", "kind": "fusion", "modalities": ["a"], "license": "apache-2.0", "revision": REV,
         "files": [{"name": "config.json", "sha256": "a" * 64}], "source": {"type": "project"}}
    return {**e, **over}


@pytest.mark.parametrize(("bad", "message"), [
    ({"kind": "vae"}, "models.0.kind"),
    ({"files": [{"name": "config.json", "sha256": "ABC"}]}, "models.0.files.0.sha256"),
    ({"revision": None}, "sha256 values need the revision"),
    ({"files": []}, "models.0.files"),
    ({"bands": {"b": ["B02"]}}, "not in modalities"),
    ({"source": {"type": "terramind"}}, "needs the upstream repo"),
    ({"id": "not a repo"}, "models.0.id"),
    ({"colour": "red"}, "models.0.colour"),
])
def test_registry_errors_name_the_key(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_registry({"models": [entry(**bad)]})


def test_registry_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ids listed twice"):
        parse_registry({"models": [entry(), entry()]})
    with pytest.raises(ConfigError, match="cannot read the model registry"):
        load_registry(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="is not in the model registry"):
        parse_registry({"models": [entry()]}).get("org/other")


# -- pull: errors and honesty ----------------------------------------------------------------------------------------

@pytest.fixture
def cached_fusion(offline, saved: dict[str, Path], tmp_path: Path) -> tuple[Path, dict]:
    """The fusion model in a Hub cache at REV (branch main) and its correct registry entry."""
    staged = stage(saved["fusion"], tmp_path / "upload")
    cache = hub_cache(staged.folder, tmp_path / "hub", "org/fusion")
    return cache, staged.registry_entry("org/fusion", REV)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_pull_hash_mismatch_is_an_error(cached_fusion, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache, good = cached_fusion
    bad = {**good, "files": [{**f, "sha256": "0" * 64} if f["name"] == "model.safetensors" else f
                             for f in good["files"]]}
    rc, out, err = run(["pull", "org/fusion", "--cache-dir", str(cache), "--registry",
                        str(write_registry(tmp_path / "r.yaml", bad))], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "hash mismatch for model.safetensors" in err and "pull again" in err


def test_pull_missing_file_is_an_error(cached_fusion, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache, good = cached_fusion
    more = {**good, "files": [*good["files"], {"name": "extra.safetensors", "sha256": "1" * 64}]}
    rc, _, err = run(["pull", "org/fusion", "--cache-dir", str(cache), "--registry",
                      str(write_registry(tmp_path / "r.yaml", more))], capsys)
    assert rc == 2 and "lacks extra.safetensors" in err and err.count("\n") == 1


def test_pull_unknown_or_uncached(cached_fusion, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache, good = cached_fusion
    registry = str(write_registry(tmp_path / "r.yaml", good, {**good, "id": "org/elsewhere"}))
    rc, _, err = run(["pull", "org/unknown", "--cache-dir", str(cache), "--registry", registry], capsys)
    assert rc == 2 and "'org/unknown' is not in the model registry (it lists: org/fusion, org/elsewhere)" in err
    rc, _, err = run(["pull", "org/elsewhere", "--cache-dir", str(cache), "--registry", registry], capsys)
    assert rc == 2 and "cannot pull org/elsewhere at revision" in err and "HF_HUB_OFFLINE=1" in err
    rc, _, err = run(["pull", "org/fusion", "--revision", "v9", "--cache-dir", str(cache), "--registry", registry],
                     capsys)
    assert rc == 2 and "cannot pull org/fusion at revision 'v9'" in err


def test_pull_never_claims_what_it_did_not_check(cached_fusion, tmp_path: Path) -> None:
    cache, good = cached_fusion
    unhashed = parse_registry({"models": [{**good, "revision": None,
                                           "files": [{**f, "sha256": None} for f in good["files"]]}]})
    p = pull("org/fusion", cache_dir=cache, registry=unhashed)
    assert not p.verified and p.commit == REV
    assert all(not f.verified and f.why == "no sha256 in the registry" for f in p.files)
    assert all(f.sha256 == sha256_of(p.path / f.name) for f in p.files)
    # --revision main, and the registry's hashes are for another commit than main's: not verified either
    other = parse_registry({"models": [{**good, "revision": OTHER}]})
    with pytest.raises(CheckpointError, match=f"at revision '{OTHER}'"):  # its own revision is not in the cache
        pull("org/fusion", cache_dir=cache, registry=other)
    p = pull("org/fusion", revision="main", cache_dir=cache, registry=other)
    assert not p.verified and all(f"for commit {OTHER}, this is {REV}" in f.why for f in p.files)
    assert pull("org/fusion", cache_dir=cache, registry=parse_registry({"models": [good]})).verified


# -- push: what is refused ---------------------------------------------------------------------------------------------

def test_push_dry_run_refuses_bad_folders(saved: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    rc, _, err = run(["push", str(saved["fusion"]), "--repo", "org/f", "--dry-run", "--out", str(busy)], capsys)
    assert rc == 2 and err.count("\n") == 1 and (busy / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]

    pickled = tmp_path / "pickled"
    shutil.copytree(saved["fusion"], pickled)
    (pickled / "model.safetensors").unlink()
    rc, _, err = run(["push", str(pickled), "--repo", "org/f", "--dry-run", "--out", str(tmp_path / "o1")], capsys)
    assert rc == 2 and "lacks model.safetensors" in err and not (tmp_path / "o1").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 768}))
    rc, _, err = run(["push", str(foreign), "--repo", "org/f", "--dry-run", "--out", str(tmp_path / "o2")], capsys)
    assert rc == 2 and "config of no eo_models artifact" in err and "fusion:" in err

    rc, _, err = run(["push", str(tmp_path / "nope"), "--repo", "org/f", "--dry-run"], capsys)
    assert rc == 2 and "no such folder" in err

    corrupt = tmp_path / "corrupt"
    shutil.copytree(saved["fusion"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    rc, _, err = run(["push", str(corrupt), "--repo", "org/f", "--dry-run", "--out", str(tmp_path / "o3")], capsys)
    assert rc == 2 and "not a safetensors file" in err


def test_check_staged_refuses_stray_and_missing_files(saved: dict[str, Path], tmp_path: Path) -> None:
    staged = stage(saved["tokenizer"], tmp_path / "up").folder
    (staged / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"stray files \['pytorch_model.bin'\]"):
        check_staged(staged, KINDS["tokenizer"])
    (staged / "pytorch_model.bin").unlink()
    (staged / "README.md").unlink()
    with pytest.raises(CheckpointError, match=r"missing \['README.md'\]"):
        check_staged(staged, KINDS["tokenizer"])


@pytest.mark.parametrize("cls", [Tokenizer, CaptionTokenizer, FusionModel])
def test_a_path_that_is_no_folder_fails_at_once(cls, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        cls.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no such folder"):
        cls.from_pretrained("./missing/model")
