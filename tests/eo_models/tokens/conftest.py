"""Fixtures of the token tests, made once for the package: micro tokenizers trained for two steps on the demo cube
(s2l2a with FSQ, lulc with VQ), a caption tokenizer, and a token store of all three."""

from __future__ import annotations

from pathlib import Path

import pytest

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
CAPTION_LENGTH = 64  # the demo captions are 23 to 89 tokens long: some are padded, some truncated


@pytest.fixture(scope="package")
def package_one_thread():
    """One torch thread while the package's fixtures are made and used (tokens of the same batch, made twice, must
    be equal: the thread count changes the order of float sums)."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="package")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "micro.yaml"
    path.write_text(MICRO)
    return path


@pytest.fixture(scope="package")
def tokenizers(package_one_thread, demo_cube: Path, micro: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Image tokenizer folders trained for two steps: s2l2a (FSQ, 1000 codes) and lulc (VQ, 64 codes)."""
    pytest.importorskip("vector_quantize_pytorch")
    pytest.importorskip("diffusers")
    from eo_models.training.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    return {"s2l2a": train_tokenizer(demo_cube, "s2l2a", root / "s2l2a", config=micro, progress=False).out,
            "lulc": train_tokenizer(demo_cube, "lulc", root / "lulc", config=micro, quantizer="vq",
                                    progress=False).out}


@pytest.fixture(scope="package")
def caption_tokenizer(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A caption tokenizer folder (WordPiece, 300 tokens, 64 per caption) trained on the demo cube."""
    pytest.importorskip("tokenizers")
    from eo_models.tokenizers.text import train_caption_tokenizer

    out = tmp_path_factory.mktemp("caption") / "caption"
    train_caption_tokenizer(demo_cube, vocab_size=300, max_length=CAPTION_LENGTH).save_pretrained(out)
    return out


@pytest.fixture(scope="package")
def sources(tokenizers: dict[str, Path], caption_tokenizer: Path) -> list[Path]:
    """The tokenizers of the store :func:`clean`, in its order."""
    return [tokenizers["s2l2a"], tokenizers["lulc"], caption_tokenizer]


@pytest.fixture(scope="package")
def clean(package_one_thread, demo_cube: Path, sources: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run without interruptions, blocks of 8 samples: s2l2a, lulc and caption tokens."""
    from eo_models.tokens.store import tokenize_cube

    out = tmp_path_factory.mktemp("tokens") / "tokens.zarr"
    return tokenize_cube(demo_cube, sources, out, batch_size=8, progress=False)
