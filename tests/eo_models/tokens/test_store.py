"""Tokenizing a cube into a Zarr of token ids: layout, equality with Tokenizer.tokenize on the centre crops, crops
for other patch sizes and resolutions, resume after a crash, errors, CLI."""

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
from eo_models.tokens.store import token_crop, tokenize_cube  # noqa: E402
from eo_models.training.tokenizer import tokenizer_config, train_tokenizer  # noqa: E402

# A ViT encoder: its strided patch embedding makes tokenizing whole 264 px samples cheap on a CPU.
MICRO = """\
name: micro
quantizer: {type: fsq, levels: [8, 5, 5, 5], codebook_size: 64, codebook_dim: 4}
encoder: {type: vit, patch: 8, dim: 16, depth: 1, heads: 2, latent_dim: 8}
decoder: {type: gan, dim: 8, disc_start: 1000, disc_dim: 8}
train: {crop: 32, batch_size: 2, steps: 2, log_every: 1}
modalities:
  landsat:
    train: {crop: 48}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "micro.yaml"
    path.write_text(MICRO)
    return path


@pytest.fixture(scope="module")
def tokenizers(demo_cube: Path, micro: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tokenizer folders trained for two steps: s2l2a (FSQ, 1000 codes) and lulc (VQ, 64 codes)."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {"s2l2a": train_tokenizer(demo_cube, "s2l2a", root / "s2l2a", config=micro, progress=False).out,
            "lulc": train_tokenizer(demo_cube, "lulc", root / "lulc", config=micro, quantizer="vq",
                                    progress=False).out}


@pytest.fixture(scope="module")
def clean(demo_cube: Path, tokenizers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run without interruptions, blocks of 8 samples."""
    out = tmp_path_factory.mktemp("tokens") / "tokens.zarr"
    return tokenize_cube(demo_cube, [tokenizers["s2l2a"], tokenizers["lulc"]], out, batch_size=8, progress=False)


def _same_store(a: Path, b: Path) -> None:
    da, db = xr.open_zarr(a), xr.open_zarr(b)
    assert set(da.variables) == set(db.variables)
    for name in da.variables:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert da.attrs == db.attrs


def test_token_crop() -> None:
    assert token_crop(264, 1, 8) == token_crop(264, 1, 8)
    assert (token_crop(264, 1, 8).size, token_crop(264, 1, 8).grid) == (264, (33, 33))
    assert (token_crop(264, 1, 16).size, token_crop(264, 1, 16).grid) == (256, (16, 16))
    assert (token_crop(264, 3, 8).size, token_crop(264, 3, 8).side, token_crop(264, 3, 8).grid) == (264, 88, (11, 11))
    assert (token_crop(264, 3, 16).size, token_crop(264, 3, 16).side) == (240, 80)
    assert token_crop(264, 2, 16).size == 256  # 20 m: 132 px -> 128
    with pytest.raises(ConfigError, match="less than one token"):
        token_crop(264, 6, 64)


def test_layout(clean: Path, tokenizers: dict[str, Path], demo_cube: Path) -> None:
    cube = xr.open_zarr(demo_cube)
    ds = xr.open_zarr(clean, consolidated=True)  # the finished store has consolidated metadata
    assert foreign_files(clean, zarr_owned(["_build"])) == []  # every file is one a token store has
    assert json.loads((clean / "_build" / "tokens.json").read_text()) == {
        "n_samples": 32, "block_samples": 8, "n_blocks": 4, "modalities": ["s2l2a", "lulc"]}
    for k in ("sample_id", "lon", "lat", "epsg"):
        assert k in ds.coords
        np.testing.assert_array_equal(ds[k].values, cube[k].values)
    attrs = ds.attrs
    assert attrs["eo_models_tokens"] == 2 and attrs["complete"] is True and attrs["block_samples"] == 8
    assert attrs["cube"] == str(demo_cube) and attrs["recipe_hash"] == cube.attrs["recipe_hash"]
    assert attrs["cube_samples"] == 32 and attrs["eo_models_version"]
    assert attrs["samples_hash"] == read_manifest(demo_cube)["samples_hash"]  # the cube's hash of its sample list
    assert sorted(attrs["tokenizers"]) == ["lulc", "s2l2a"]
    for m, folder in tokenizers.items():
        tok = Tokenizer.from_pretrained(folder)
        meta = attrs["tokenizers"][m]
        assert meta["config"] == json.loads(json.dumps(tok.cfg.to_dict()))  # the whole config
        assert meta["config"] == json.loads((folder / "config.json").read_text())
        assert meta["codebook_size"] == tok.codebook_size and meta["patch"] == 8 and meta["source"] == str(folder)
        assert (meta["crop_px"], meta["crop_offset_px"], meta["token_grid"]) == (264, [0, 0], [33, 33])
        tokens, available = ds[f"{m}_tokens"], ds[f"{m}_available"]
        assert tokens.dims == ("sample", f"{m}_ty", f"{m}_tx") and tokens.shape == (32, 33, 33)
        assert tokens.dtype == np.int32 and tokens.encoding["chunks"] == (8, 33, 33)
        assert available.dtype == bool
        np.testing.assert_array_equal(available.values, cube[f"{m}_available"].values)
        t, a = tokens.values, available.values
        assert (t[~a] == -1).all()  # -1 exactly where the modality is missing
        assert (t[a] >= 0).all() and (t[a] < tok.codebook_size).all()
        assert 0 < a.sum() < 32 and len(np.unique(t[a])) > 1
        blocks = block_reports(clean, f"tokens/{m}")  # the build record stays: one entry per block
        assert [e["samples"] for e in blocks.values()] == [[0, 8], [8, 16], [16, 24], [24, 32]]
        assert [e["tokenized"] for e in blocks.values()] == [int(a[lo:lo + 8].sum()) for lo in range(0, 32, 8)]
        assert all(e["seconds"] >= 0 for e in blocks.values())
    assert attrs["tokenizers"]["lulc"]["codebook_size"] == 64 and attrs["tokenizers"]["s2l2a"]["codebook_size"] == 1000


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
        valid = torch.from_numpy(cube[f"{m}_valid"].values[rows][..., lo:hi, lo:hi])
        expected = tok.eval().tokenize(x, valid)
        np.testing.assert_array_equal(ds[f"{m}_tokens"].values[rows], expected.numpy(), err_msg=m)
        assert (ds[f"{m}_tokens"].values[~avail[m]] == -1).all()


def test_resume_after_a_crash(clean: Path, demo_cube: Path, tokenizers: dict[str, Path], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tokens.zarr"
    sources = [tokenizers["s2l2a"], tokenizers["lulc"]]
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
    # a block whose entry is lost is done again, whatever its data hold
    (out / "_build" / "tokens" / "s2l2a" / "000001.json").unlink()
    zarr.open_array(out / "s2l2a_tokens", mode="r+")[8:16] = 7

    calls.clear()

    def count(self: Tokenizer, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        calls.append(self.modality)
        return real(self, x, valid)

    monkeypatch.setattr(Tokenizer, "tokenize", count)
    tokenize_cube(demo_cube, sources, out, batch_size=16, progress=False)  # the store keeps its blocks of 8
    assert calls == ["s2l2a"] * 3 + ["lulc"] * 4  # s2l2a blocks 1-3, every lulc block
    _same_store(out, clean)
    assert all(done_blocks(out, f"tokens/{m}") == {0, 1, 2, 3} for m in ("s2l2a", "lulc"))
    assert foreign_files(out, zarr_owned(["_build"])) == []
    calls.clear()
    assert tokenize_cube(demo_cube, sources, out, progress=False) == out  # complete: nothing to do
    assert calls == []
    _same_store(out, clean)


def test_out_holding_something_else(clean: Path, demo_cube: Path, tokenizers: dict[str, Path], micro: Path,
                                    tmp_path: Path) -> None:
    out = tmp_path / "tokens.zarr"
    shutil.copytree(clean, out)
    s2, lulc = tokenizers["s2l2a"], tokenizers["lulc"]
    with pytest.raises(ConfigError, match=r"other tokenizers \(modalities \['lulc', 's2l2a'\], now \['s2l2a'\]\)"):
        tokenize_cube(demo_cube, [s2], out, progress=False)
    other = Tokenizer(tokenizer_config(demo_cube, "lulc", micro).to_dict())  # same modality, other weights
    with pytest.raises(ConfigError, match=r"lulc tokens of another tokenizer .*differs in .*weights_sha256"):
        tokenize_cube(demo_cube, [s2, other], out, progress=False)
    _same_store(out, clean)  # refused runs leave the store as it was
    zarr.open_group(out, mode="r+").attrs["recipe_hash"] = "0000000000000000"
    with pytest.raises(ConfigError, match=r"tokens of another cube .*differs in \['recipe_hash'\].*another --out"):
        tokenize_cube(demo_cube, [s2, lulc], out, progress=False)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("x")
    with pytest.raises(OutputError, match=r"is not a token store .*\(no zarr.json\); it is left untouched"):
        tokenize_cube(demo_cube, [s2], folder, progress=False)
    assert [p.name for p in folder.iterdir()] == ["todo.txt"]
    with pytest.raises(OutputError, match=r"is a Zarr store but not a token store .*it is left untouched"):
        tokenize_cube(demo_cube, [s2], demo_cube, progress=False)  # a cube is a Zarr store too


def test_an_interrupted_creation_deletes_only_a_token_store(clean: Path, demo_cube: Path,
                                                            tokenizers: dict[str, Path], tmp_path: Path) -> None:
    """A store whose creation did not finish (no _build/tokens.json) is created again: deleted first, but only when
    every file in it is one a token store has."""
    out = tmp_path / "tokens.zarr"
    shutil.copytree(clean, out)
    zarr.open_group(out, mode="r+").attrs["complete"] = False
    (out / "_build" / "tokens.json").unlink()
    (out / "notes.txt").write_text("mine")
    sources = [tokenizers["s2l2a"], tokenizers["lulc"]]
    with pytest.raises(OutputError, match=r"also holds other files \(notes.txt\); it is left untouched"):
        tokenize_cube(demo_cube, sources, out, batch_size=8, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and (out / "zarr.json").is_file()
    (out / "notes.txt").unlink()
    tokenize_cube(demo_cube, sources, out, batch_size=8, progress=False)
    _same_store(out, clean)


def test_bad_tokenizer_lists(demo_cube: Path, tokenizers: dict[str, Path], micro: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.zarr"
    s2 = tokenizers["s2l2a"]
    with pytest.raises(ConfigError, match="two tokenizers for modality 's2l2a'"):
        tokenize_cube(demo_cube, [s2, Tokenizer.from_pretrained(s2)], out, progress=False)
    with pytest.raises(ConfigError, match="no tokenizers given"):
        tokenize_cube(demo_cube, [], out, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        tokenize_cube(demo_cube, [s2], out, batch_size=0, progress=False)
    with pytest.raises(CheckpointError, match="cannot load tokenizer"):
        tokenize_cube(demo_cube, [tmp_path / "nothing"], out, progress=False)
    cfg = tokenizer_config(demo_cube, "s2l2a", micro)
    hyper = dataclasses.replace(cfg, modality=ModalityConfig(name="hyper", kind="multilabel", bands=("a",)))
    with pytest.raises(ConfigError, match="modality 'hyper', which the cube .* does not have"):
        tokenize_cube(demo_cube, [Tokenizer(hyper.to_dict())], out, progress=False)
    ten = dataclasses.replace(cfg, modality=dataclasses.replace(cfg.modality, bands=cfg.modality.bands[:10],
                                                                mean=cfg.modality.mean[:10],
                                                                std=cfg.modality.std[:10]))
    with pytest.raises(ConfigError, match="reads s2l2a bands .* the cube has"):
        tokenize_cube(demo_cube, [Tokenizer(ten.to_dict())], out, progress=False)
    assert not out.exists()


def test_cli_tokenize(demo_cube: Path, tokenizers: dict[str, Path], clean: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zarr"
    args = ["tokenize", "--cube", str(demo_cube), "--tokenizers", str(tokenizers["s2l2a"]), str(tokenizers["lulc"]),
            "--out", str(out), "--batch-size", "16", "--quiet"]
    assert main(args) == 0
    assert f"tokens written to {out}" in capsys.readouterr().out
    ds, ref = xr.open_zarr(out), xr.open_zarr(clean)
    assert ds.attrs["complete"] is True and ds.attrs["block_samples"] == 16
    for m in ("s2l2a", "lulc"):
        assert ds[f"{m}_tokens"].encoding["chunks"] == (16, 33, 33)
        np.testing.assert_array_equal(ds[f"{m}_available"].values, ref[f"{m}_available"].values)
        same = ds[f"{m}_tokens"].values == ref[f"{m}_tokens"].values  # other batches: equal but for float ties
        assert same.mean() > 0.99
    assert main([*args[:4], str(tmp_path / "nothing"), "--out", str(tmp_path / "x.zarr"), "--quiet"]) == 2
    assert "cannot load tokenizer" in capsys.readouterr().err


def test_eo_dataset_info_on_a_token_store(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eo-dataset info tokens.zarr` says what the store is (it raised KeyError: 'recipe' before)."""
    from eo_dataset.cli.main import main as eo_dataset_main

    assert eo_dataset_main(["info", str(clean)]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert f"{clean}: a token store of eo-models, 32 samples of cube" in out and "complete" in out
    for m in ("s2l2a", "lulc"):
        assert m in out
