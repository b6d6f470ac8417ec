"""OnlineTokens: token batches made on the fly from cube batches equal what the token store holds for the same
samples (ids, availability, validity), with frozen tokenizers, whatever autocast is on; what it refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xarray as xr

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

from torch.utils.data import DataLoader  # noqa: E402

from eo_dataset.torch import CubeDataset  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402
from eo_models.tokenizers import Tokenizer  # noqa: E402
from eo_models.tokens.dataset import TokenDataset, token_specs  # noqa: E402
from eo_models.tokens.online import OnlineTokens  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def online(demo_cube: Path, sources: list[Path]) -> OnlineTokens:
    return OnlineTokens(demo_cube, sources)


def test_what_it_needs_from_the_cube(online: OnlineTokens, clean: Path, demo_cube: Path) -> None:
    assert online.modalities == ["s2l2a", "lulc"]  # the caption comes with every CubeDataset batch
    assert online.dataset_kwargs == {"modalities": ["s2l2a", "lulc"], "crop": None, "normalize": False}
    assert online.specs == token_specs(clean)  # the same sources: the same specs as the store's
    assert online.recipe_hash == xr.open_zarr(demo_cube).attrs["recipe_hash"]
    cube = online.dataset()
    assert isinstance(cube, CubeDataset) and cube.modalities == ["s2l2a", "lulc"] and cube.crop is None
    assert not cube.normalize
    for plan in online.plans.values():  # frozen
        if isinstance(plan.tok, Tokenizer):
            assert not plan.tok.training and not any(p.requires_grad for p in plan.tok.parameters())


def test_on_the_fly_tokens_equal_the_store(online: OnlineTokens, clean: Path) -> None:
    """Batches of 8 samples in cube order (the store's blocks, so the tokenizers see the same batches): every key
    of the token batch equals what a TokenDataset of the store yields."""
    cube = online.dataset()
    stored = list(DataLoader(TokenDataset(clean), batch_size=8))
    made = [online(b) for b in DataLoader(cube, batch_size=8, collate_fn=cube.collate_fn)]
    assert len(made) == len(stored) == 4
    for k, (got, want) in enumerate(zip(made, stored, strict=True)):
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, (k, key)
            assert torch.equal(got[key], want[key]), f"batch {k}: {key}"
    every = {key: torch.cat([b[key] for b in made]) for key in made[0]}
    assert not every["s2l2a_available"].all() and (every["s2l2a"][~every["s2l2a_available"]] == -1).all()
    partly = (every["s2l2a_valid"] > 0) & (every["s2l2a_valid"] < 1)
    assert partly.any()  # the demo's clouds: validity is a fraction, not a flag
    assert (every["caption_valid"] == (every["caption"] >= 0).float()).all()


def test_autocast_and_odd_batches(online: OnlineTokens, clean: Path) -> None:
    """Under bf16 autocast (as in mixed-precision training) tokens are made in float32 all the same; a batch
    holding only samples without a modality gives -1 and 0 for it."""
    cube = online.dataset()
    batch = cube.get_batch(list(range(8)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = online(batch)
    want = next(iter(DataLoader(TokenDataset(clean), batch_size=8)))
    assert all(torch.equal(got[k], want[k]) for k in want)
    store = TokenDataset(clean)
    lacking = [int(i) for i in (~store.availability[:, 0]).nonzero()[0]]  # samples without s2l2a
    got = online(cube.get_batch(lacking))
    assert not got["s2l2a_available"].any() and (got["s2l2a"] == -1).all() and (got["s2l2a_valid"] == 0).all()
    want = store.__getitems__(lacking)
    assert torch.equal(got["caption"], torch.stack([w["caption"] for w in want]))
    assert got["index"].tolist() == lacking


def test_refusals(online: OnlineTokens, demo_cube: Path, caption_tokenizer: Path) -> None:
    with pytest.raises(ConfigError, match=r"\['crop', 'normalize'\] are set by the tokenizers"):
        online.dataset(crop=96, normalize=True)
    cropped = CubeDataset(demo_cube, ["s2l2a", "lulc"], crop=96, crop_mode="center", normalize=False)
    with pytest.raises(ConfigError, match=r"s2l2a comes as \(96, 96\) px, expected whole samples of 264 x 264 px"):
        online(cropped.get_batch([0, 1]))
    only_s2 = CubeDataset(demo_cube, ["s2l2a"], normalize=False)
    with pytest.raises(ConfigError, match=r"the batch has no \['lulc', 'lulc_valid', 'lulc_available'\]; make it "
                                          r"with OnlineTokens.dataset\(\)"):
        online(only_s2.get_batch([0]))
    with pytest.raises(ConfigError, match="only a caption tokenizer .* add an image tokenizer"):
        OnlineTokens(demo_cube, [caption_tokenizer])


def test_the_docs_snippet_runs(demo_cube: Path, tokenizers: dict[str, Path], caption_tokenizer: Path,
                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/tokenizers.md's "Tokenizing on the fly" block runs as written, beside demo.zarr and eo-tokenizers/."""
    text = (REPO / "docs" / "tokenizers.md").read_text()
    section = text.split("### Tokenizing on the fly", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "demo.zarr").symlink_to(demo_cube, target_is_directory=True)
    (tmp_path / "eo-tokenizers").mkdir()
    (tmp_path / "eo-tokenizers" / "s2l2a-fsq-gan").symlink_to(tokenizers["s2l2a"], target_is_directory=True)
    (tmp_path / "eo-tokenizers" / "caption").symlink_to(caption_tokenizer, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/tokenizers.md", "exec"), scope)
    assert scope["tokens"]["s2l2a"].shape == (8, 33 * 33) and scope["tokens"]["caption_available"].all()
