"""TokenDataset and token_specs over a token store: the token batch contract, in memory and read per batch (also in
DataLoader workers), samplers, and the stores it refuses."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

import zarr  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from eo_dataset.torch import ShardSampler, indices_with  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402
from eo_models.tokenizers import Tokenizer  # noqa: E402
from eo_models.tokenizers.text import CaptionTokenizer  # noqa: E402
from eo_models.tokens.dataset import TokenDataset, TokenSpec, token_specs  # noqa: E402
from eo_models.tokens.plan import vocab_digest, weights_digest  # noqa: E402

from .conftest import CAPTION_LENGTH  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[3]


def test_token_specs(clean: Path, tokenizers: dict[str, Path], caption_tokenizer: Path) -> None:
    specs = token_specs(clean)
    assert list(specs) == ["s2l2a", "lulc", "caption"]
    s2 = specs["s2l2a"]
    assert s2 == TokenSpec("s2l2a", "image", 1000, grid=(33, 33), source=str(tokenizers["s2l2a"]),
                           digest=weights_digest(Tokenizer.from_pretrained(tokenizers["s2l2a"])), crop_px=264,
                           crop_offset_px=(0, 0))
    assert s2.num_tokens == 33 * 33 and specs["lulc"].vocab_size == 64
    cap = CaptionTokenizer.from_pretrained(caption_tokenizer)
    c = specs["caption"]
    assert (c.kind, c.vocab_size, c.length, c.grid, c.num_tokens) == ("sequence", cap.vocab_size, CAPTION_LENGTH,
                                                                      None, CAPTION_LENGTH)
    assert c.digest == vocab_digest(cap) and c.source == str(caption_tokenizer)
    assert c.special_id("cls") == cap.token_id("cls") and c.special_id("pad") == cap.pad_id
    with pytest.raises(KeyError, match="no special token 'cls'"):
        s2.special_id("cls")
    hash(s2)  # frozen: usable as a key


def _expected(clean: Path, i: int) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(clean)
    out = {}
    for m in ("s2l2a", "lulc"):
        out[m] = ds[f"{m}_tokens"].values[i].reshape(-1).astype(np.int64)
        out[f"{m}_valid"] = ds[f"{m}_valid"].values[i].reshape(-1).astype(np.float32)
        out[f"{m}_available"] = np.asarray(ds[f"{m}_available"].values[i])
    out["caption"] = ds["caption_tokens"].values[i].astype(np.int64)
    out["caption_valid"] = (out["caption"] >= 0).astype(np.float32)
    out["caption_available"] = np.asarray(ds["caption_available"].values[i])
    out["index"] = np.asarray(i)
    return out


def test_items(clean: Path) -> None:
    ds = TokenDataset(clean)
    assert len(ds) == 32 and ds.modalities == ["s2l2a", "lulc", "caption"] and ds.in_memory
    assert ds.availability.shape == (32, 3) and ds.shard_samples == 8
    assert "in memory" in repr(ds)
    lacking = int(np.flatnonzero(~ds.availability[:, 0])[0])  # a sample without s2l2a
    for i in (0, lacking, 31):
        item = ds[i]
        assert sorted(item) == sorted(_expected(clean, i))
        for key, want in _expected(clean, i).items():
            np.testing.assert_array_equal(item[key].numpy(), want, err_msg=f"{key} of sample {i}")
        assert item["s2l2a"].dtype == torch.int64 and item["s2l2a"].shape == (33 * 33,)
        assert item["s2l2a_valid"].dtype == torch.float32 and item["s2l2a_available"].dtype == torch.bool
        assert item["s2l2a_available"].shape == () and item["index"].dtype == torch.int64
        assert item["caption"].shape == item["caption_valid"].shape == (CAPTION_LENGTH,)
    item = ds[lacking]
    assert (item["s2l2a"] == -1).all() and (item["s2l2a_valid"] == 0).all() and not item["s2l2a_available"]
    assert int(ds[-1]["index"]) == 31
    with pytest.raises(IndexError, match="out of range"):
        ds[32]


def test_loader_yields_token_batches(clean: Path) -> None:
    """Torch's default collate makes token batches; read per batch from Zarr (also in forked workers), they equal
    the in-memory ones."""
    memory = list(DataLoader(TokenDataset(clean), batch_size=8))
    assert len(memory) == 4
    batch = memory[1]
    assert batch["s2l2a"].shape == (8, 1089) and batch["s2l2a"].dtype == torch.int64
    assert batch["s2l2a_available"].shape == (8,) and batch["s2l2a_available"].dtype == torch.bool
    assert batch["s2l2a_valid"].shape == (8, 1089) and batch["s2l2a_valid"].dtype == torch.float32
    assert batch["caption"].shape == (8, CAPTION_LENGTH) and batch["index"].tolist() == list(range(8, 16))
    zarr_ds = TokenDataset(clean, in_memory=False)
    assert not zarr_ds.in_memory and "read per batch" in repr(zarr_ds)
    assert not TokenDataset(clean, max_memory=1000).in_memory  # decided by size
    order = [5, 3, 4, 30, 0, 17, 9, 8, 31, 2]  # several spans in several chunks, out of order
    expected = {i: _expected(clean, i) for i in order}
    for workers in (0, 2):
        loader = DataLoader(zarr_ds, batch_size=5, sampler=order, num_workers=workers)
        for k, b in enumerate(loader):
            for key in b:
                want = torch.stack([torch.as_tensor(expected[i][key]) for i in order[5 * k:5 * k + 5]])
                assert torch.equal(b[key], want), (workers, key)
    whole = next(iter(DataLoader(zarr_ds, batch_size=32)))
    assert all(torch.equal(whole[k], torch.cat([b[k] for b in memory])) for k in memory[0])


def test_samplers_and_a_subset(clean: Path) -> None:
    ds = TokenDataset(clean, modalities=["caption", "s2l2a"])
    assert ds.modalities == ["caption", "s2l2a"]
    assert sorted(ds[0]) == ["caption", "caption_available", "caption_valid", "index", "s2l2a", "s2l2a_available",
                             "s2l2a_valid"]
    with_s2 = indices_with(ds, require=["s2l2a"])
    np.testing.assert_array_equal(with_s2, np.flatnonzero(xr.open_zarr(clean)["s2l2a_available"].values))
    order = list(ShardSampler(ds, require=["s2l2a"], shuffle=False))
    assert order == with_s2.tolist()
    batch = next(iter(DataLoader(ds, batch_size=4, sampler=order)))
    assert batch["s2l2a_available"].all()
    with pytest.raises(ConfigError, match=r"expected some of the store's \['s2l2a', 'lulc', 'caption'\], each once "
                                          r"\(\['dem'\] are not in it\)"):
        TokenDataset(clean, modalities=["dem"])
    with pytest.raises(ConfigError, match="each once"):
        TokenDataset(clean, modalities=["s2l2a", "s2l2a"])


def test_refused_stores(clean: Path, demo_cube: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a token store \(nothing there\); write one with 'eo-models "
                                          r"tokenize"):
        TokenDataset(tmp_path / "nothing.zarr")
    with pytest.raises(ConfigError, match=r"is not a token store \(no zarr.json in it\)"):
        TokenDataset(tmp_path)
    with pytest.raises(ConfigError, match="is an eo-dataset cube store, not a token store"):
        TokenDataset(demo_cube)
    out = tmp_path / "tokens.zarr"
    shutil.copytree(clean, out)
    zarr.open_group(out, mode="r+").attrs["complete"] = False
    with pytest.raises(ConfigError, match=r"unfinished token store \(complete: false\); finish it by rerunning"):
        TokenDataset(out)
    assert list(token_specs(out)) == ["s2l2a", "lulc", "caption"]  # what an unfinished store will hold
    zarr.open_group(out, mode="r+").attrs.update({"complete": True, "eo_models_tokens": 2})
    with pytest.raises(ConfigError, match=r"token store of layout 2, this eo-models reads layout 3 .*tokenize the "
                                          r"cube again into a new --out"):
        TokenDataset(out)
    with pytest.raises(ConfigError, match="layout 2"):
        token_specs(out)


def test_the_docs_snippet_runs(clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/tokenizers.md's "Reading a token store" block runs as written, in a folder with tokens.zarr."""
    text = (REPO / "docs" / "tokenizers.md").read_text()
    section = text.split("### Reading a token store", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "tokens.zarr").symlink_to(clean, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/tokenizers.md", "exec"), scope)
    assert scope["batch"]["s2l2a"].shape == (8, 33 * 33) and scope["specs"]["caption"].kind == "sequence"
