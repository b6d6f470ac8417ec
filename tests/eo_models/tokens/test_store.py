"""Tokenizing a cube into a Zarr of token ids: layout, equality with Tokenizer.tokenize on the centre crops, per-token
validity, caption tokens, crops for other patch sizes and resolutions, resume after a crash, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

import zarr  # noqa: E402

from eo_dataset.cube.manifest import block_reports, done_blocks, read_manifest  # noqa: E402
from eo_dataset.errors import OutputError  # noqa: E402
from eo_dataset.outputs import foreign_files, zarr_owned  # noqa: E402
from eo_dataset.torch import CubeDataset  # noqa: E402
from eo_models.cli.main import main  # noqa: E402
from eo_models.config import ModalityConfig  # noqa: E402
from eo_models.errors import CheckpointError, ConfigError  # noqa: E402
from eo_models.tokenizers import Tokenizer  # noqa: E402
from eo_models.tokenizers.text import CaptionTokenizer, train_caption_tokenizer  # noqa: E402
from eo_models.tokens.plan import load_modality_tokenizer, vocab_digest, weights_digest  # noqa: E402
from eo_models.tokens.store import FORMAT, token_crop, tokenize_cube  # noqa: E402
from eo_models.training.tokenizer import tokenizer_config  # noqa: E402

from .conftest import CAPTION_LENGTH  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _same_store(a: Path, b: Path) -> None:
    da, db = xr.open_zarr(a), xr.open_zarr(b)
    assert set(da.variables) == set(db.variables)
    for name in da.variables:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert da.attrs == db.attrs


def _fractions(valid: np.ndarray, patch: int) -> np.ndarray:
    """Fraction of True pixels in each ``patch x patch`` cell of ``(B, H, W)`` masks, as float16."""
    b, h, w = valid.shape
    cells = valid.reshape(b, h // patch, patch, w // patch, patch).astype(np.float64)
    return cells.mean(axis=(2, 4)).astype(np.float16)


def test_token_crop() -> None:
    assert token_crop(264, 1, 8) == token_crop(264, 1, 8)
    assert (token_crop(264, 1, 8).size, token_crop(264, 1, 8).grid) == (264, (33, 33))
    assert (token_crop(264, 1, 16).size, token_crop(264, 1, 16).grid) == (256, (16, 16))
    assert (token_crop(264, 3, 8).size, token_crop(264, 3, 8).side, token_crop(264, 3, 8).grid) == (264, 88, (11, 11))
    assert (token_crop(264, 3, 16).size, token_crop(264, 3, 16).side) == (240, 80)
    assert token_crop(264, 2, 16).size == 256  # 20 m: 132 px -> 128
    with pytest.raises(ConfigError, match="less than one token"):
        token_crop(264, 6, 64)


def test_layout(clean: Path, tokenizers: dict[str, Path], caption_tokenizer: Path, demo_cube: Path) -> None:
    cube = xr.open_zarr(demo_cube)
    ds = xr.open_zarr(clean, consolidated=True)  # the finished store has consolidated metadata
    assert foreign_files(clean, zarr_owned(["_build"])) == []  # every file is one a token store has
    assert json.loads((clean / "_build" / "tokens.json").read_text()) == {
        "n_samples": 32, "block_samples": 8, "n_blocks": 4, "modalities": ["s2l2a", "lulc", "caption"]}
    for k in ("sample_id", "lon", "lat", "epsg"):
        assert k in ds.coords
        np.testing.assert_array_equal(ds[k].values, cube[k].values)
    attrs = ds.attrs
    assert attrs["eo_models_tokens"] == FORMAT == 3 and attrs["complete"] is True and attrs["block_samples"] == 8
    assert attrs["cube"] == str(demo_cube) and attrs["recipe_hash"] == cube.attrs["recipe_hash"]
    assert attrs["cube_samples"] == 32 and attrs["eo_models_version"]
    assert attrs["samples_hash"] == read_manifest(demo_cube)["samples_hash"]  # the cube's hash of its sample list
    assert list(attrs["tokenizers"]) == ["s2l2a", "lulc", "caption"]
    assert sorted(attrs["modalities"]) == ["lulc", "s2l2a"]  # the image modalities' cube metadata
    for m, folder in tokenizers.items():
        tok = Tokenizer.from_pretrained(folder)
        meta = attrs["tokenizers"][m]
        assert meta["kind"] == "image" and meta["weights_sha256"] == weights_digest(tok)
        assert meta["config"] == json.loads(json.dumps(tok.cfg.to_dict()))  # the whole config
        assert meta["config"] == json.loads((folder / "config.json").read_text())
        assert meta["codebook_size"] == tok.codebook_size and meta["patch"] == 8 and meta["source"] == str(folder)
        assert (meta["crop_px"], meta["crop_offset_px"], meta["token_grid"]) == (264, [0, 0], [33, 33])
        tokens, valid, available = ds[f"{m}_tokens"], ds[f"{m}_valid"], ds[f"{m}_available"]
        assert tokens.dims == valid.dims == ("sample", f"{m}_ty", f"{m}_tx") and tokens.shape == (32, 33, 33)
        assert tokens.dtype == np.int32 and tokens.encoding["chunks"] == (8, 33, 33)
        assert valid.dtype == np.float16 and valid.encoding["chunks"] == (8, 33, 33)
        assert available.dtype == bool
        np.testing.assert_array_equal(available.values, cube[f"{m}_available"].values)
        t, v, a = tokens.values, valid.values, available.values
        assert (t[~a] == -1).all() and (v[~a] == 0).all()  # -1 and 0 exactly where the modality is missing
        assert (t[a] >= 0).all() and (t[a] < tok.codebook_size).all()
        assert 0 < a.sum() < 32 and len(np.unique(t[a])) > 1
        assert ((v >= 0) & (v <= 1)).all()
        blocks = block_reports(clean, f"tokens/{m}")  # the build record stays: one entry per block
        assert [e["samples"] for e in blocks.values()] == [[0, 8], [8, 16], [16, 24], [24, 32]]
        assert [e["tokenized"] for e in blocks.values()] == [int(a[lo:lo + 8].sum()) for lo in range(0, 32, 8)]
        assert all(e["seconds"] >= 0 for e in blocks.values())
    assert attrs["tokenizers"]["lulc"]["codebook_size"] == 64 and attrs["tokenizers"]["s2l2a"]["codebook_size"] == 1000

    cap = CaptionTokenizer.from_pretrained(caption_tokenizer)
    meta = attrs["tokenizers"]["caption"]
    assert meta == {"kind": "sequence", "config": json.loads((caption_tokenizer / "config.json").read_text()),
                    "vocab_size": cap.vocab_size, "max_length": CAPTION_LENGTH, "vocab_sha256": vocab_digest(cap),
                    "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
                    "source": str(caption_tokenizer)}
    tokens = ds["caption_tokens"]
    assert tokens.dims == ("sample", "caption_len") and tokens.shape == (32, CAPTION_LENGTH)
    assert tokens.dtype == np.int32 and tokens.encoding["chunks"] == (8, CAPTION_LENGTH)
    assert "caption_valid" not in ds  # a caption token is there or not: its validity is ids >= 0
    assert ds["caption_available"].dtype == bool and ds["caption_available"].values.all()  # every demo sample
    assert [e["tokenized"] for e in block_reports(clean, "tokens/caption").values()] == [8, 8, 8, 8]


def test_tokens_equal_tokenize_on_the_centre_crops(clean: Path, tokenizers: dict[str, Path],
                                                   demo_cube: Path) -> None:
    cube, ds = xr.open_zarr(demo_cube), xr.open_zarr(clean)
    for m, folder in tokenizers.items():
        tok = Tokenizer.from_pretrained(folder).eval()
        x, valid = cube[m].values, cube[f"{m}_valid"].values  # 264 px: patch 8 tokenizes the whole sample
        available = cube[f"{m}_available"].values
        stored = ds[f"{m}_tokens"].values
        for lo in range(0, 32, 8):  # the store's blocks, so the batches are the same
            rows = [i for i in range(lo, lo + 8) if available[i]]
            expected = tok.tokenize(torch.from_numpy(x[rows]), torch.from_numpy(valid[rows]))
            np.testing.assert_array_equal(stored[rows], expected.numpy(), err_msg=f"{m} block {lo // 8}")
        # the validity of each token: the fraction of the cube's valid pixels under its 8 x 8 pixels
        fractions = _fractions(valid.astype(bool), 8)
        fractions[~available] = 0
        np.testing.assert_array_equal(ds[f"{m}_valid"].values, fractions, err_msg=m)
        partly = (fractions > 0) & (fractions < 1)
        assert partly.any() or m == "lulc", m  # the demo's clouds make partly valid S2 tokens


def test_caption_tokens_are_the_encoding(clean: Path, caption_tokenizer: Path, demo_cube: Path) -> None:
    """The ids CaptionTokenizer.encode gives ([CLS] ... [SEP], special tokens included), -1 on padding."""
    tok = CaptionTokenizer.from_pretrained(caption_tokenizer)
    captions = [str(c) for c in xr.open_zarr(demo_cube)["caption"].values]
    enc = tok.encode(captions)
    stored = xr.open_zarr(clean)["caption_tokens"].values
    real = enc["attention_mask"].numpy() == 1
    np.testing.assert_array_equal(stored[real], enc["input_ids"].numpy()[real])
    assert (stored[~real] == -1).all()
    assert (stored[:, 0] == tok.token_id("cls")).all()
    lengths = real.sum(axis=1)
    assert lengths.min() < CAPTION_LENGTH and lengths.max() == CAPTION_LENGTH  # some padded, some truncated
    assert (stored[np.arange(32), lengths - 1] == tok.token_id("sep")).all()
    short = int(np.argmin(lengths))  # not truncated: decodes back to the whole caption
    assert tok.decode(torch.from_numpy(stored[short][stored[short] >= 0])) == [tok.normalize(captions[short])]


def test_samples_without_a_caption(demo_cube: Path, caption_tokenizer: Path, tmp_path: Path) -> None:
    """An empty caption: caption_available False, every id -1; only the caption tokenizer is needed."""
    cube = tmp_path / "cube.zarr"
    shutil.copytree(demo_cube, cube)
    captions = zarr.open_array(cube / "caption", mode="r+")
    captions[3] = ""
    captions[10] = "   "
    out = tokenize_cube(cube, [caption_tokenizer], tmp_path / "t.zarr", batch_size=8, progress=False)
    ds = xr.open_zarr(out)
    available = ds["caption_available"].values
    assert np.flatnonzero(~available).tolist() == [3, 10]
    tokens = ds["caption_tokens"].values
    assert (tokens[[3, 10]] == -1).all() and (tokens[available][:, 0] >= 0).all()
    assert [e["tokenized"] for e in block_reports(out, "tokens/caption").values()] == [7, 7, 8, 8]


def test_other_patch_sizes_and_resolutions(demo_cube: Path, micro: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch 16 at 10 m: the centre 256 px; patch 16 at 30 m: the centre 80 px (240 base px). Tokenizer objects are
    taken as they are (untrained here), run in eval mode and left in the mode they came in."""
    toks = {}
    for m in ("s2l2a", "landsat"):
        cfg = tokenizer_config(demo_cube, m, micro)
        cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, patch=16))
        torch.manual_seed(0)
        toks[m] = Tokenizer(cfg.to_dict()).train()
    read: list[int] = []
    get_batch = CubeDataset.get_batch

    def spy(self: CubeDataset, indices: list[int]) -> dict:
        read.extend(indices)
        return get_batch(self, indices)

    monkeypatch.setattr(CubeDataset, "get_batch", spy)
    out = tokenize_cube(demo_cube, list(toks.values()), tmp_path / "t.zarr", batch_size=32, progress=False)
    cube, ds = xr.open_zarr(demo_cube), xr.open_zarr(out)
    avail = {m: cube[f"{m}_available"].values for m in toks}
    assert sorted(read) == sorted([*np.flatnonzero(avail["s2l2a"]), *np.flatnonzero(avail["landsat"])])
    meta = ds.attrs["tokenizers"]
    assert (meta["s2l2a"]["crop_px"], meta["s2l2a"]["crop_offset_px"], meta["s2l2a"]["token_grid"]) == (
        256, [4, 4], [16, 16])
    assert (meta["landsat"]["crop_px"], meta["landsat"]["crop_px_modality"], meta["landsat"]["crop_offset_px"],
            meta["landsat"]["token_grid"]) == (240, 80, [12, 12], [5, 5])
    assert meta["s2l2a"]["source"] == "<Tokenizer object>"
    for m, (lo, hi) in {"s2l2a": (4, 260), "landsat": (4, 84)}.items():
        tok = toks[m]
        assert tok.training  # given back as it came
        rows = np.flatnonzero(avail[m])
        x = torch.from_numpy(cube[m].values[rows][..., lo:hi, lo:hi])
        valid = cube[f"{m}_valid"].values[rows][..., lo:hi, lo:hi]
        expected = tok.eval().tokenize(x, torch.from_numpy(valid))
        np.testing.assert_array_equal(ds[f"{m}_tokens"].values[rows], expected.numpy(), err_msg=m)
        assert (ds[f"{m}_tokens"].values[~avail[m]] == -1).all()
        np.testing.assert_array_equal(ds[f"{m}_valid"].values[rows], _fractions(valid.astype(bool), 16), err_msg=m)
        assert (ds[f"{m}_valid"].values[~avail[m]] == 0).all()


def test_resume_after_a_crash(clean: Path, demo_cube: Path, sources: list[Path], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tokens.zarr"
    real = Tokenizer.tokenize
    calls: list[str] = []

    def crash_on_third(self: Tokenizer, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        calls.append(self.modality)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(self, x, valid)

    monkeypatch.setattr(Tokenizer, "tokenize", crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        tokenize_cube(demo_cube, sources, out, batch_size=8, progress=False)
    assert zarr.open_group(out, mode="r").attrs["complete"] is False
    assert done_blocks(out, "tokens/s2l2a") == {0, 1} and done_blocks(out, "tokens/lulc") == set()
    assert done_blocks(out, "tokens/caption") == set()
    # a block whose entry is lost is done again, whatever its data hold
    (out / "_build" / "tokens" / "s2l2a" / "000001.json").unlink()
    zarr.open_array(out / "s2l2a_tokens", mode="r+")[8:16] = 7
    zarr.open_array(out / "s2l2a_valid", mode="r+")[8:16] = 0.5

    calls.clear()
    encoded: list[int] = []
    encode = CaptionTokenizer.encode

    def count(self: Tokenizer, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        calls.append(self.modality)
        return real(self, x, valid)

    def count_captions(self: CaptionTokenizer, texts: list[str]) -> dict:
        encoded.append(len(texts))
        return encode(self, texts)

    monkeypatch.setattr(Tokenizer, "tokenize", count)
    monkeypatch.setattr(CaptionTokenizer, "encode", count_captions)
    tokenize_cube(demo_cube, sources, out, batch_size=16, progress=False)  # the store keeps its blocks of 8
    assert calls == ["s2l2a"] * 3 + ["lulc"] * 4  # s2l2a blocks 1-3, every lulc block
    assert encoded == [8] * 4
    _same_store(out, clean)
    assert all(done_blocks(out, f"tokens/{m}") == {0, 1, 2, 3} for m in ("s2l2a", "lulc", "caption"))
    assert foreign_files(out, zarr_owned(["_build"])) == []
    calls.clear()
    assert tokenize_cube(demo_cube, sources, out, progress=False) == out  # complete: nothing to do
    assert calls == []
    _same_store(out, clean)


def test_a_store_of_the_old_layout_is_not_resumed(clean: Path, demo_cube: Path, sources: list[Path],
                                                  tmp_path: Path) -> None:
    out = tmp_path / "tokens.zarr"
    shutil.copytree(clean, out)
    group = zarr.open_group(out, mode="r+")
    group.attrs.update({"eo_models_tokens": 2, "complete": False})
    with pytest.raises(ConfigError, match=r"token store of layout 2 .*writes layout 3 and cannot resume it; pass a "
                                          r"new --out"):
        tokenize_cube(demo_cube, sources, out, progress=False)
    assert zarr.open_group(out, mode="r").attrs["eo_models_tokens"] == 2  # left as it was


def test_out_holding_something_else(clean: Path, demo_cube: Path, tokenizers: dict[str, Path],
                                    caption_tokenizer: Path, micro: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens.zarr"
    shutil.copytree(clean, out)
    s2, lulc = tokenizers["s2l2a"], tokenizers["lulc"]
    with pytest.raises(ConfigError, match=r"other tokenizers \(modalities \['caption', 'lulc', 's2l2a'\], now "
                                          r"\['s2l2a'\]\)"):
        tokenize_cube(demo_cube, [s2], out, progress=False)
    other = Tokenizer(tokenizer_config(demo_cube, "lulc", micro).to_dict())  # same modality, other weights
    with pytest.raises(ConfigError, match=r"lulc tokens of another tokenizer .*differs in .*weights_sha256"):
        tokenize_cube(demo_cube, [s2, other, caption_tokenizer], out, progress=False)
    smaller = train_caption_tokenizer(demo_cube, vocab_size=200, max_length=CAPTION_LENGTH)
    with pytest.raises(ConfigError, match=r"caption tokens of another tokenizer .*differs in .*vocab_sha256"):
        tokenize_cube(demo_cube, [s2, lulc, smaller], out, progress=False)
    _same_store(out, clean)  # refused runs leave the store as it was
    zarr.open_group(out, mode="r+").attrs["recipe_hash"] = "0000000000000000"
    with pytest.raises(ConfigError, match=r"tokens of another cube .*differs in \['recipe_hash'\].*another --out"):
        tokenize_cube(demo_cube, [s2, lulc, caption_tokenizer], out, progress=False)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("x")
    with pytest.raises(OutputError, match=r"is not a token store .*\(no zarr.json\); it is left untouched"):
        tokenize_cube(demo_cube, [s2], folder, progress=False)
    assert [p.name for p in folder.iterdir()] == ["todo.txt"]
    with pytest.raises(OutputError, match=r"is an eo-dataset cube, not a token store .*it is left untouched"):
        tokenize_cube(demo_cube, [s2], demo_cube, progress=False)  # a cube is a Zarr store too


def test_an_interrupted_creation_deletes_only_a_token_store(clean: Path, demo_cube: Path, sources: list[Path],
                                                            tmp_path: Path) -> None:
    """A store whose creation did not finish (no _build/tokens.json) is created again: deleted first, but only when
    every file in it is one a token store has."""
    out = tmp_path / "tokens.zarr"
    shutil.copytree(clean, out)
    zarr.open_group(out, mode="r+").attrs["complete"] = False
    (out / "_build" / "tokens.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"also holds other files \(notes.txt\); it is left untouched"):
        tokenize_cube(demo_cube, sources, out, batch_size=8, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and (out / "zarr.json").is_file()
    (out / "notes.txt").unlink()
    tokenize_cube(demo_cube, sources, out, batch_size=8, progress=False)
    _same_store(out, clean)


def test_bad_tokenizer_lists(demo_cube: Path, tokenizers: dict[str, Path], caption_tokenizer: Path, micro: Path,
                             tmp_path: Path) -> None:
    out = tmp_path / "t.zarr"
    s2 = tokenizers["s2l2a"]
    with pytest.raises(ConfigError, match="two tokenizers for modality 's2l2a'"):
        tokenize_cube(demo_cube, [s2, Tokenizer.from_pretrained(s2)], out, progress=False)
    with pytest.raises(ConfigError, match="two tokenizers for modality 'caption'"):
        tokenize_cube(demo_cube, [caption_tokenizer, CaptionTokenizer.from_pretrained(caption_tokenizer)], out,
                      progress=False)
    with pytest.raises(ConfigError, match="no tokenizers given"):
        tokenize_cube(demo_cube, [], out, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        tokenize_cube(demo_cube, [s2], out, batch_size=0, progress=False)
    with pytest.raises(CheckpointError, match="cannot load tokenizer"):
        tokenize_cube(demo_cube, [tmp_path / "nothing"], out, progress=False)
    broken = tmp_path / "broken-caption"
    shutil.copytree(caption_tokenizer, broken)
    (broken / "tokenizer.json").unlink()  # recognised by its config.json, refused by the caption loader
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        tokenize_cube(demo_cube, [broken], out, progress=False)
    cfg = tokenizer_config(demo_cube, "s2l2a", micro)
    hyper = dataclasses.replace(cfg, modality=ModalityConfig(name="hyper", kind="multilabel", bands=("a",)))
    with pytest.raises(ConfigError, match="is for modality 'hyper', which the cube .* does not have"):
        tokenize_cube(demo_cube, [Tokenizer(hyper.to_dict())], out, progress=False)
    ten = dataclasses.replace(cfg, modality=dataclasses.replace(cfg.modality, bands=cfg.modality.bands[:10],
                                                                mean=cfg.modality.mean[:10],
                                                                std=cfg.modality.std[:10]))
    with pytest.raises(ConfigError, match="reads s2l2a bands .* the cube has"):
        tokenize_cube(demo_cube, [Tokenizer(ten.to_dict())], out, progress=False)
    no_captions = tmp_path / "no-captions.zarr"
    shutil.copytree(demo_cube, no_captions)
    zarr.open_group(no_captions, mode="r+").__delitem__("caption")
    zarr.consolidate_metadata(str(no_captions), zarr_format=3)
    with pytest.raises(ConfigError, match=r"reads the text variable 'caption', which the cube .* does not have; "
                                          r"build the cube with a recipe that has a `captions:` section"):
        tokenize_cube(no_captions, [caption_tokenizer], out, progress=False)
    assert not out.exists()


def test_tokenizers_from_a_hub_cache(clean: Path, demo_cube: Path, tokenizers: dict[str, Path],
                                     caption_tokenizer: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub repo ids (offline, from the local cache): each is loaded with the class its config.json names."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    for repo, folder in {"org/s2": tokenizers["s2l2a"], "org/caption": caption_tokenizer}.items():
        snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        shutil.copytree(folder, snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no folder "org" here: the names are repo ids
    assert isinstance(load_modality_tokenizer("org/caption"), CaptionTokenizer)
    assert isinstance(load_modality_tokenizer("org/s2"), Tokenizer)
    out = tokenize_cube(demo_cube, ["org/s2", "org/caption"], tmp_path / "t.zarr", batch_size=8, progress=False)
    ds, ref = xr.open_zarr(out), xr.open_zarr(clean)
    assert {m: t["source"] for m, t in ds.attrs["tokenizers"].items()} == {"s2l2a": "org/s2", "caption": "org/caption"}
    for name in ("s2l2a_tokens", "s2l2a_valid", "caption_tokens", "caption_available"):
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)


def test_cli_tokenize(demo_cube: Path, tokenizers: dict[str, Path], caption_tokenizer: Path, clean: Path,
                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zarr"
    args = ["tokenize", "--cube", str(demo_cube), "--tokenizers", str(tokenizers["s2l2a"]), str(tokenizers["lulc"]),
            str(caption_tokenizer), "--out", str(out), "--batch-size", "16", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"tokens written to {out} (tokens per sample: s2l2a 33 x 33, lulc 33 x 33, caption 64)" in printed
    ds, ref = xr.open_zarr(out), xr.open_zarr(clean)
    assert ds.attrs["complete"] is True and ds.attrs["block_samples"] == 16
    for m in ("s2l2a", "lulc"):
        assert ds[f"{m}_tokens"].encoding["chunks"] == (16, 33, 33)
        np.testing.assert_array_equal(ds[f"{m}_available"].values, ref[f"{m}_available"].values)
        np.testing.assert_array_equal(ds[f"{m}_valid"].values, ref[f"{m}_valid"].values)
        same = ds[f"{m}_tokens"].values == ref[f"{m}_tokens"].values  # other batches: equal but for float ties
        assert same.mean() > 0.99
    np.testing.assert_array_equal(ds["caption_tokens"].values, ref["caption_tokens"].values)
    assert main([*args[:4], str(tmp_path / "nothing"), "--out", str(tmp_path / "x.zarr"), "--quiet"]) == 2
    assert "cannot load tokenizer" in capsys.readouterr().err


def test_cli_tokenize_help_names_captions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tokenize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the caption tokenizer folder (train-text-tokenizer)" in text and "per-token validity" in text


def test_eo_dataset_info_on_a_token_store(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eo-dataset info tokens.zarr` says what the store is (it raised KeyError: 'recipe' before)."""
    from eo_dataset.cli.main import main as eo_dataset_main

    assert eo_dataset_main(["info", str(clean)]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert f"{clean}: a token store of eo-models, 32 samples of cube" in out and "complete" in out
    for m in ("s2l2a", "lulc", "caption"):
        assert m in out
