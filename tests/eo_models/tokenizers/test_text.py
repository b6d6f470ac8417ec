"""The caption tokenizer: trained on the demo cube's captions, round trips, its validated config, hub save/load
(offline) and push (HfApi's upload methods replaced by recorders: nothing leaves the machine)."""

from __future__ import annotations

import json
import re
import string
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from huggingface_hub import HfApi, ModelCard, ModelHubMixin, RepoUrl  # noqa: E402

from eo_models.errors import CheckpointError, ConfigError  # noqa: E402
from eo_models.tokenizers.text import (  # noqa: E402
    CaptionTokenizer,
    CaptionTokenizerConfig,
    check_save_folder,
    train_caption_tokenizer,
)

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def captions(demo_cube: Path) -> list[str]:
    return [str(c) for c in xr.open_zarr(demo_cube)["caption"].values]


@pytest.fixture(scope="module")
def tok(demo_cube: Path) -> CaptionTokenizer:
    return train_caption_tokenizer(demo_cube)


def _plain(text: str) -> str:
    """Lowercase, accents stripped, all whitespace removed: what must survive a round trip."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if unicodedata.category(c) != "Mn" and not c.isspace())


def test_trained_on_the_cube_captions(tok: CaptionTokenizer, demo_cube: Path, captions: list[str]) -> None:
    cfg = tok.config
    assert cfg.num_captions == sum(1 for c in captions if c.strip()) > 0
    assert cfg.cube == str(demo_cube) and cfg.modality == "caption"
    assert cfg.recipe_hash == xr.open_zarr(demo_cube).attrs["recipe_hash"]
    assert cfg.vocab_size == tok.vocab_size == len(tok.tokenizer.get_vocab()) <= 2000
    assert [tok.token_id(r) for r in ("pad", "unk", "cls", "sep", "mask")] == [0, 1, 2, 3, 4]
    assert tok.pad_id == 0


def test_round_trip_every_demo_caption(tok: CaptionTokenizer, captions: list[str]) -> None:
    batch = tok.encode(captions)
    assert (batch["input_ids"] != tok.token_id("unk")).all()
    assert (batch["attention_mask"].sum(1) < tok.max_length).all()  # nothing truncated
    for text, back in zip(captions, tok.decode(batch["input_ids"]), strict=True):
        assert back == tok.normalize(text)
        assert _plain(back) == _plain(text)
        assert back == back.lower() and "  " not in back


def test_padding_and_attention_mask(tok: CaptionTokenizer, captions: list[str]) -> None:
    batch = tok.encode(["Trees.", captions[0]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, 128) and ids.dtype == mask.dtype == torch.long
    assert mask[0].tolist() == [1, 1, 1, 1] + [0] * 124  # [CLS] trees . [SEP]
    assert (ids[mask == 0] == tok.pad_id).all() and (ids[:, 0] == tok.token_id("cls")).all()
    last = mask.sum(1) - 1
    assert (ids[torch.arange(2), last] == tok.token_id("sep")).all()
    one = tok.encode(captions[0])
    assert one["input_ids"].shape == (1, 128) and torch.equal(one["input_ids"][0], ids[1])
    assert tok.decode(ids[1]) == tok.decode(ids[1:]) == tok.decode(ids[1].tolist())
    assert tok.encode([])["input_ids"].shape == (0, 128)


def test_long_captions_are_truncated(demo_cube: Path, tok: CaptionTokenizer, captions: list[str]) -> None:
    long = " ".join(captions)
    batch = tok.encode(long)
    ids, mask = batch["input_ids"][0], batch["attention_mask"][0]
    assert ids.shape == (128,) and bool(mask.all())
    assert ids[0] == tok.token_id("cls") and ids[-1] == tok.token_id("sep")
    back = tok.decode(ids)[0]
    assert 0 < len(back) < len(tok.normalize(long)) and _plain(tok.normalize(long)).startswith(_plain(back))

    short = train_caption_tokenizer(demo_cube, max_length=8)
    assert short.encode(captions)["input_ids"].shape == (len(captions), 8)
    assert short.encode(captions)["attention_mask"].all()


def test_unknown_words(tok: CaptionTokenizer) -> None:
    vocab = tok.tokenizer.get_vocab()
    unseen = [c for c in string.ascii_lowercase if c not in vocab and "##" + c not in vocab]
    if unseen:  # a word of letters never seen: [UNK], dropped by decode
        ids = tok.encode(f"Trees {''.join(unseen) * 2} water")["input_ids"][0]
        assert tok.token_id("unk") in ids.tolist()
        assert tok.decode(ids) == ["trees water"]
    # a word never seen, of letters seen: subword pieces that decode back to it
    word = "reliefwaterlandscapes"
    assert word not in vocab
    enc = tok.tokenizer.encode(word)
    pieces = [t for t, m in zip(enc.tokens, enc.attention_mask, strict=True) if m][1:-1]  # no [CLS] [SEP] [PAD]
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:]) and "[UNK]" not in pieces
    assert tok.decode(tok.encode(word.upper())["input_ids"]) == [word]


def test_training_is_deterministic(tok: CaptionTokenizer, demo_cube: Path) -> None:
    # the tokenizers trainer alone numbers pieces by hash-map order: two trainings in one process used to differ
    again = train_caption_tokenizer(demo_cube)
    assert again.tokenizer.get_vocab() == tok.tokenizer.get_vocab()
    assert again.tokenizer.to_str() == tok.tokenizer.to_str()
    few = train_caption_tokenizer(demo_cube, samples=slice(0, 4), vocab_size=60)
    assert few.config.num_captions <= 4 and few.config.samples == [0, 4, None] and few.vocab_size < tok.vocab_size


def test_save_and_load_a_folder(tok: CaptionTokenizer, tmp_path: Path, captions: list[str]) -> None:
    out = tmp_path / "captions"
    assert tok.save_pretrained(out) is None  # the library's save_pretrained: a commit URL only when it pushes
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "tokenizer.json"]
    card = (out / "README.md").read_text()
    assert "caption" in card and f"{tok.vocab_size} tokens" in card and "from_pretrained" in card
    assert json.loads((out / "config.json").read_text())["vocab_size"] == tok.vocab_size
    loaded = CaptionTokenizer.from_pretrained(out)
    assert loaded.config == tok.config
    assert torch.equal(loaded.encode(captions)["input_ids"], tok.encode(captions)["input_ids"])
    assert CaptionTokenizer.from_pretrained(str(out)).vocab_size == tok.vocab_size


def test_saving_again_replaces_the_three_files(tok: CaptionTokenizer, tmp_path: Path) -> None:
    out = tmp_path / "captions"
    out.mkdir()
    for name in ("README.md", "config.json", "tokenizer.json"):
        (out / name).write_text("stale")
    tok.save_pretrained(out)
    again = tmp_path / "again"
    CaptionTokenizer.from_pretrained(out).save_pretrained(again)  # a loaded tokenizer writes the same bytes
    for name in ("README.md", "config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes() != b"stale", name


def test_model_card(tok: CaptionTokenizer, tmp_path: Path) -> None:
    card = tok.generate_model_card()
    assert isinstance(card, ModelCard)
    assert card.data.library_name == "eo-models" and card.data.license == "apache-2.0"
    assert card.data.tags == ["earth-observation", "tokenizer", "4m4eo", "caption", "wordpiece"]
    assert card.text.startswith("# 4M4EO tokenizer: caption\n")
    assert "special: [PAD], [UNK], [CLS], [SEP], [MASK]" in card.text and str(tok.config.cube) in card.text
    tok.save_pretrained(tmp_path / "captions")
    assert (tmp_path / "captions" / "README.md").read_text() == str(card)


def test_config_is_validated(tok: CaptionTokenizer) -> None:
    good = tok.config.to_dict()
    assert CaptionTokenizerConfig.from_dict(good) == tok.config
    assert CaptionTokenizerConfig.from_dict({k: v for k, v in good.items() if k not in ("samples", "model")}) == \
        tok.config  # keys with a default may be left out
    cube_left_out = {k: v for k, v in good.items() if k != "cube"}
    cases = {
        "unknown keys ['colour'], missing keys []": good | {"colour": "red"},
        "unknown keys ['colour'], missing keys ['cube']; expected the keys ['cube', ": cube_left_out | {"colour": 1},
        "max_length: expected a valid integer, found '64'": good | {"max_length": "64"},
        "vocab_size: expected a valid integer, found True": good | {"vocab_size": True},
        "max_length: expected greater than or equal to 3, found 2": good | {"max_length": 2},
        "lowercase: expected a valid boolean, found 'yes'": good | {"lowercase": "yes"},
        "special_tokens.pad: expected a valid string, found 0": good | {"special_tokens": good["special_tokens"]
                                                                         | {"pad": 0}},
        "special_tokens: expected the roles ['cls', 'mask', 'pad', 'sep', 'unk'], found ['pad']":
            good | {"special_tokens": {"pad": "[PAD]"}},
        "samples.1: expected a valid integer, found 'a'": good | {"samples": [0, "a", None]},
        "found modality 's2l2a', expected 'caption' (is this another modality's tokenizer?":
            good | {"modality": "s2l2a"},
        "found model 'bpe', expected 'wordpiece'": good | {"model": "bpe"},
        "expected a mapping with string keys (a JSON object), found list": [good],
    }
    for message, data in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            CaptionTokenizerConfig.from_dict(data)
        assert str(info.value).startswith("caption tokenizer config: ") and "\n" not in str(info.value)
        assert str(info.value).count("caption tokenizer config") == 1, str(info.value)
    with pytest.raises(ConfigError, match=re.escape("unknown keys ['colour']")):  # built directly: the same checks
        CaptionTokenizerConfig(**good, colour="red")
    with pytest.raises(ConfigError, match="num_captions: expected a valid integer, found 1.5"):
        CaptionTokenizerConfig(**good | {"num_captions": 1.5})


def test_check_save_folder(tok: CaptionTokenizer, tmp_path: Path) -> None:
    from eo_dataset.errors import OutputError

    assert check_save_folder(tmp_path / "new") == tmp_path / "new"
    tok.save_pretrained(tmp_path / "ours")
    assert check_save_folder(tmp_path / "ours") == tmp_path / "ours"
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    (tmp_path / "ours" / "config.json").write_text(json.dumps(cfg | {"model": "bpe"}))
    with pytest.raises(OutputError, match="is not a caption tokenizer folder"):
        check_save_folder(tmp_path / "ours")


def _hub_cache(tok: CaptionTokenizer, root: Path) -> Path:
    """A Hugging Face Hub cache holding ``org/captions`` at revision ``REV`` (branch ``main``)."""
    repo = root / "models--org--captions"
    tok.save_pretrained(repo / "snapshots" / REV)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)  # no newline: huggingface_hub reads the file as is
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import


def test_load_from_the_hub_cache_offline(offline, tok: CaptionTokenizer, tmp_path: Path,
                                         captions: list[str]) -> None:
    cache = _hub_cache(tok, tmp_path / "hub")
    for revision in (None, "main", REV):
        loaded = CaptionTokenizer.from_pretrained("org/captions", cache_dir=cache, revision=revision)
        assert loaded.config == tok.config
        assert torch.equal(loaded.encode(captions)["input_ids"], tok.encode(captions)["input_ids"])


def test_missing_repo_or_folder(offline, tok: CaptionTokenizer, tmp_path: Path) -> None:
    cache = _hub_cache(tok, tmp_path / "hub")
    with pytest.raises(CheckpointError, match="org/nothing.*HF_HUB_OFFLINE"):
        CaptionTokenizer.from_pretrained("org/nothing", cache_dir=cache)
    with pytest.raises(CheckpointError, match="revision 'v9'"):
        CaptionTokenizer.from_pretrained("org/captions", cache_dir=cache, revision="v9")
    with pytest.raises(CheckpointError, match="no such folder"):  # a path: the Hub is not asked
        CaptionTokenizer.from_pretrained(tmp_path / "no" / "such" / "folder", cache_dir=cache)


def test_a_hub_repo_that_is_not_a_caption_tokenizer(offline, tok: CaptionTokenizer, tmp_path: Path) -> None:
    cache = _hub_cache(tok, tmp_path / "hub")
    config = cache / "models--org--captions" / "snapshots" / REV / "config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps(cfg | {"modality": "s2l2a"}))
    with pytest.raises(CheckpointError, match="config.json: caption tokenizer config: found modality 's2l2a'"):
        CaptionTokenizer.from_pretrained("org/captions", cache_dir=cache)
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read config.json of caption tokenizer 'org/captions'"):
        CaptionTokenizer.from_pretrained("org/captions", cache_dir=cache)


def test_broken_folders(tok: CaptionTokenizer, tmp_path: Path) -> None:
    out = tmp_path / "a"
    tok.save_pretrained(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        CaptionTokenizer.from_pretrained(out)
    out = tmp_path / "b"
    tok.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(cfg | {"modality": "s2l2a"}))
    with pytest.raises(CheckpointError, match="modality 's2l2a'"):
        CaptionTokenizer.from_pretrained(out)
    (out / "config.json").write_text(json.dumps(cfg | {"vocab_size": 3}))
    with pytest.raises(CheckpointError, match="different tokenizers"):
        CaptionTokenizer.from_pretrained(out)
    for text, message in ((json.dumps(cfg | {"vocab_size": "3"}), "vocab_size: expected a valid integer, found '3'"),
                          (json.dumps(cfg | {"colour": 1}), r"unknown keys \['colour'\]"),
                          (json.dumps([cfg]), "expected a mapping"), ("{not json", "cannot read .*config.json")):
        (out / "config.json").write_text(text)
        with pytest.raises(CheckpointError, match=message):
            CaptionTokenizer.from_pretrained(out)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="cannot read .*tokenizer.json with tokenizers"):
        CaptionTokenizer.from_pretrained(out)


@pytest.fixture
def hub_api(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """``HfApi.create_repo`` and ``HfApi.upload_folder`` replaced by recorders: the calls, with the uploaded files."""
    calls: list[dict] = []

    def create_repo(self: HfApi, repo_id: str, **kwargs: object) -> RepoUrl:
        calls.append({"create_repo": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self: HfApi, *, repo_id: str, folder_path: str | Path, **kwargs: object) -> str:
        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        calls.append({"upload_folder": repo_id, "files": files, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/{REV}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub(offline, hub_api: list[dict], tok: CaptionTokenizer, tmp_path: Path,
                     captions: list[str]) -> None:
    """The library's push_to_hub and save_pretrained(push_to_hub=True): save_pretrained's three files, in one
    commit, to a repo created if missing; what is pushed loads back."""
    assert issubclass(CaptionTokenizer, ModelHubMixin)
    for name in ("save_pretrained", "push_to_hub"):
        assert name not in CaptionTokenizer.__dict__ and getattr(CaptionTokenizer, name) is getattr(ModelHubMixin, name)
    url = f"https://huggingface.co/org/captions/commit/{REV}"
    assert tok.push_to_hub("org/captions", private=True, branch="dev", commit_message="vocab 2000") == url
    create, upload = hub_api
    assert create == {"create_repo": "org/captions", "private": True, "exist_ok": True}
    assert upload["upload_folder"] == "org/captions" and upload["repo_type"] == "model"
    assert upload["revision"] == "dev" and upload["commit_message"] == "vocab 2000" and not upload["create_pr"]
    tok.save_pretrained(tmp_path / "saved")
    assert upload["files"] == {p.name: p.read_bytes() for p in (tmp_path / "saved").iterdir()}
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name, data in upload["files"].items():
        (pushed / name).write_bytes(data)
    loaded = CaptionTokenizer.from_pretrained(pushed)
    assert loaded.config == tok.config
    assert torch.equal(loaded.encode(captions)["input_ids"], tok.encode(captions)["input_ids"])

    hub_api.clear()
    assert tok.save_pretrained(tmp_path / "both", push_to_hub=True, repo_id="org/captions") == url
    assert [c.get("create_repo") or c["upload_folder"] for c in hub_api] == ["org/captions"] * 2
    assert hub_api[1]["files"] == upload["files"] == {p.name: p.read_bytes() for p in (tmp_path / "both").iterdir()}


def test_cube_without_captions(tmp_path: Path) -> None:
    xr.Dataset({"dem": ("sample", np.arange(3.0))}).to_zarr(tmp_path / "nocap.zarr")
    with pytest.raises(ConfigError, match="no `caption` variable"):
        train_caption_tokenizer(tmp_path / "nocap.zarr")
    xr.Dataset({"caption": ("sample", np.array(["", "  ", ""], dtype=object))}).to_zarr(tmp_path / "empty.zarr")
    with pytest.raises(ConfigError, match="no non-empty caption"):
        train_caption_tokenizer(tmp_path / "empty.zarr")
    with pytest.raises(ConfigError, match="missing.zarr is not an eo-dataset cube: there is nothing at that path"):
        train_caption_tokenizer(tmp_path / "missing.zarr")


@pytest.mark.parametrize("kwargs", [{"vocab_size": 0}, {"max_length": 2}, {"min_frequency": -1},
                                    {"samples": [0, 1]}])
def test_bad_arguments(demo_cube: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        train_caption_tokenizer(demo_cube, **kwargs)


def test_cli_writes_its_own_folders_only(demo_cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train-text-tokenizer --out: a new folder, then the same folder again (its files replaced); a folder with
    another tool's config.json is refused and left as it was."""
    from eo_models.cli.main import main

    out = tmp_path / "caption"
    args = ["train-text-tokenizer", "--cube", str(demo_cube), "--vocab-size", "200", "--out", str(out)]
    assert main(args) == 0 and main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "tokenizer.json"]
    capsys.readouterr()
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    (other / "vocab.txt").write_text("[PAD]\n")
    assert main([*args[:-1], str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a caption tokenizer folder" in err and "left untouched" in err
    assert (other / "config.json").read_text() == '{"model_type": "bert"}'
    assert sorted(p.name for p in other.iterdir()) == ["config.json", "vocab.txt"]
