"""Fusion model configs: what the model is (its token modalities and architecture), how it masks and how it trains.

A config file (``eo_models/configs/fusion-tiny.yaml``, ``-small``, ``-base``) holds the sections ``model``,
``masking`` and ``train``. The token modalities (names, vocabularies, token grids and the tokenizers that make the
tokens) are not in the file: they come from the token store or the tokenizers the model is trained on
(:class:`TokenModality`), and travel inside the trained model's ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from eo_models.config import (
    Bool,
    Float,
    Int,
    NonNegativeFloat,
    Positive,
    Section,
    bundled_config_path,
    read_sections,
    section,
)
from eo_models.errors import ConfigError
from eo_models.fusion.masking import MaskingConfig


@section("modalities")
class TokenModality(Section):
    """One token modality of the model: ``image`` tokens on a ``grid`` (rows, columns) over the sample's footprint,
    or a ``sequence`` (the caption) of ``length`` tokens; ``vocab_size`` ids; the tokenizer that makes them
    (``tokenizer``: where it was loaded from, a folder or a Hub repo id; ``digest``: of its weights or vocabulary).
    """

    name: str
    kind: Literal["image", "sequence"]
    vocab_size: Positive
    grid: tuple[Int, Int] = (0, 0)
    length: Int = 0
    tokenizer: str = ""
    digest: str = ""

    def __post_init__(self) -> None:
        if self.kind == "image" and min(self.grid) < 1:
            raise ConfigError(f"modality {self.name}: an image modality needs a token grid of at least 1 x 1, found "
                              f"{list(self.grid)}")
        if self.kind == "sequence" and self.length < 1:
            raise ConfigError(f"modality {self.name}: a sequence modality needs a length >= 1, found {self.length}")

    @property
    def tokens(self) -> int:
        """Tokens per sample."""
        return self.grid[0] * self.grid[1] if self.kind == "image" else self.length

    @classmethod
    def from_spec(cls, spec: Any) -> TokenModality:
        """From a :class:`eo_models.tokens.dataset.TokenSpec` (or anything with its attributes)."""
        grid = tuple(getattr(spec, "grid", None) or (0, 0))
        return cls(name=spec.name, kind=spec.kind, vocab_size=int(spec.vocab_size), grid=(int(grid[0]), int(grid[1])),
                   length=int(getattr(spec, "length", 0) or 0), tokenizer=str(getattr(spec, "source", "") or ""),
                   digest=str(getattr(spec, "digest", "") or ""))


@section("model")
class ArchConfig(Section):
    """The transformer: ``dim`` wide, ``encoder_depth`` + ``decoder_depth`` pre-norm blocks of ``heads`` heads,
    SwiGLU feed-forward of ``mlp_ratio`` (its hidden width: ``2/3 * mlp_ratio * dim`` rounded up to a multiple of
    8), no biases, LayerNorm without bias. ``tied_outputs``: the output projection of each modality is its input
    embedding. ``pixel_inputs`` (TerraMind's dual-scale input) is not built yet: the config refuses it."""

    dim: Positive = 128
    encoder_depth: Positive = 2
    decoder_depth: Positive = 2
    heads: Positive = 4
    mlp_ratio: Float = 4.0
    tied_outputs: Bool = False
    pixel_inputs: Bool = False

    def __post_init__(self) -> None:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads}) into an even "
                              "head width")
        if self.dim % 4:
            raise ConfigError(f"model.dim must be a multiple of 4 (2-D sin-cos positions), found {self.dim}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"model.mlp_ratio must be > 0, found {self.mlp_ratio}")
        if self.pixel_inputs:
            raise ConfigError("model.pixel_inputs (pixel-patch inputs beside the tokens) is not available yet; set it "
                              "to false")

    @property
    def hidden(self) -> int:
        """The SwiGLU hidden width."""
        return int(math.ceil(2 * self.mlp_ratio * self.dim / 3 / 8) * 8)


@section("train")
class FusionTrainConfig(Section):
    """Training: AdamW (``lr``, ``weight_decay``, betas 0.9/0.95), linear warm-up over ``warmup`` steps then a cosine
    decay to ``min_lr`` at ``steps``, gradients clipped at ``clip`` (0: off), an exponential moving average of the
    weights with decay ``ema`` (0: off; the EMA weights are the ones saved). ``steps``, ``num_workers`` and
    ``precision`` are no part of the model (:attr:`RUNTIME`): a checkpoint resumes with other values."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"steps", "num_workers", "precision"})
    batch_size: Positive = 8
    steps: Positive = 200
    accumulate: Positive = 1
    lr: NonNegativeFloat = 1e-3
    min_lr: NonNegativeFloat = 1e-5
    warmup: Int = 20
    weight_decay: NonNegativeFloat = 0.05
    clip: NonNegativeFloat = 1.0
    ema: NonNegativeFloat = 0.0
    log_every: Positive = 10
    checkpoint_every: Positive = 50
    seed: Int = 0
    num_workers: Int | None = 0
    precision: Literal["32", "bf16", "16"] = "32"

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ConfigError(f"train.warmup must be >= 0, found {self.warmup}")
        if self.ema >= 1:
            raise ConfigError(f"train.ema must be in [0, 1) (0: off), found {self.ema}")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # YAML's 32 -> "32"


@section()
class FusionConfig(Section):
    """Everything a fusion model is: its token modalities, architecture, masking and training, and the cube the
    tokens came from (``recipe_hash``)."""

    modalities: tuple[TokenModality, ...]
    model: ArchConfig = field(default_factory=ArchConfig)
    masking: MaskingConfig = field(default_factory=lambda: MaskingConfig(input_tokens=128, target_tokens=128))
    train: FusionTrainConfig = field(default_factory=FusionTrainConfig)
    name: str = ""
    recipe_hash: str = ""

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ConfigError("a fusion model needs at least one token modality")
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ConfigError(f"modalities named twice: {sorted({n for n in names if names.count(n) > 1})}")

    @property
    def names(self) -> tuple[str, ...]:
        """The modalities' names, in the model's order."""
        return tuple(m.name for m in self.modalities)

    def modality(self, name: str) -> TokenModality:
        """The modality called ``name``; ConfigError naming the model's modalities otherwise."""
        for m in self.modalities:
            if m.name == name:
                return m
        raise ConfigError(f"the fusion model has no modality {name!r}; it has {list(self.names)}")

    def with_train(self, **values: Any) -> FusionConfig:
        """A copy with other ``train`` values (validated)."""
        return replace(self, train=replace(self.train, **values))


def fusion_config_path(name_or_path: str | Path) -> Path:
    """A fusion config file: a path, or a bundled name (``tiny``, ``small``, ``base``: ``configs/fusion-NAME.yaml``).
    """
    return bundled_config_path(name_or_path, "fusion")


def load_fusion_config(name_or_path: str | Path, modalities: list[TokenModality] | tuple[TokenModality, ...], *,
                       recipe_hash: str = "", **train: Any) -> FusionConfig:
    """A validated :class:`FusionConfig` from a config file and the token modalities (``train`` values given as
    keywords, ``None`` ones left out, replace the file's, as the command line does)."""
    path = fusion_config_path(name_or_path)
    raw, sections = read_sections(path, ("model", "masking", "train"))
    sections["train"].update({k: v for k, v in train.items() if v is not None})
    return FusionConfig.from_dict({**sections, "modalities": tuple(modalities), "name": raw.get("name", path.stem),
                                   "recipe_hash": recipe_hash})
