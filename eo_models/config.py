"""Tokenizer configs: one frozen dataclass per part, loaded from one YAML file, stored in the model's config.json.

A config file (``eo_models/configs/tokenizer-tiny.yaml``) holds the sections ``quantizer``, ``encoder``, ``decoder``
and ``train``, and optionally ``modalities: {name: {section: {...}}}`` with per-modality overrides (land cover's
FSQ levels, say). The modality itself (bands, normalisation statistics, class table) is not in the file: it is
read from the training cube (:func:`eo_models.modality.modality_from_cube`) and travels inside the trained
tokenizer's ``config.json``, so nothing has to be guessed when the tokenizer is used later.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from eo_models.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModalityConfig:
    """What a tokenizer knows about its modality, taken from the training cube.

    ``kind``: ``continuous`` (normalised ``(x - mean) / std`` per band, after ``transform``), ``categorical``
    (stored class ids in ``classes``; embedded in, cross-entropy out) or ``multilabel`` (0/1 layers; BCE).
    ``mean``/``std`` are in the units after ``transform`` (``db``: ``10 log10(x)``, for SAR backscatter).
    """

    name: str
    kind: Literal["continuous", "categorical", "multilabel"]
    bands: tuple[str, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    transform: Literal["none", "db"] = "none"
    classes: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    units: str = ""
    scale: float = 1.0
    offset: float = 0.0
    resolution_m: float = 10.0
    stats_from: str = ""

    def __post_init__(self) -> None:
        if self.kind == "continuous" and (len(self.mean) != len(self.bands) or len(self.std) != len(self.bands)):
            raise ConfigError(f"modality {self.name}: {len(self.bands)} bands but {len(self.mean)} means and "
                              f"{len(self.std)} stds; a continuous modality needs one of each per band")
        if self.kind == "categorical" and len(self.classes) < 2:
            raise ConfigError(f"modality {self.name}: categorical with {len(self.classes)} classes; the cube's "
                              "modality attrs must list its class table ('classes')")


@dataclass(frozen=True)
class QuantizerConfig:
    """``fsq``: finite scalar quantisation with ``levels`` (codebook = their product); ``vq``: an EMA codebook of
    ``codebook_size`` codes (``codebook_dim`` for low-dimensional codes, ``cosine`` for cosine-similarity codes,
    codes used less than ``dead_code_threshold`` times per batch restarted from the batch)."""

    type: Literal["fsq", "vq"] = "fsq"
    levels: tuple[int, ...] = (8, 5, 5, 5)
    codebook_size: int = 1000
    codebook_dim: int | None = None
    cosine: bool = False
    decay: float = 0.99
    dead_code_threshold: float = 2.0
    commitment_weight: float = 0.25

    def __post_init__(self) -> None:
        if self.type == "fsq" and (not self.levels or min(self.levels) < 3):
            # vector-quantize-pytorch's FSQ rejects a level of 2 (unless preserve_symmetry, which we do not use)
            raise ConfigError(f"quantizer.levels must be integers >= 3, found {list(self.levels)}")
        if self.type == "vq" and self.codebook_size < 2:
            raise ConfigError(f"quantizer.codebook_size must be >= 2, found {self.codebook_size}")

    @property
    def codebook_size_(self) -> int:
        """Number of distinct tokens."""
        return math.prod(self.levels) if self.type == "fsq" else self.codebook_size


@dataclass(frozen=True)
class EncoderConfig:
    """``conv``: a residual CNN; ``vit``: a ViT over ``patch`` x ``patch`` patches. Either way one token per
    ``patch`` x ``patch`` pixels of the modality, of ``latent_dim`` dimensions before quantisation."""

    type: Literal["conv", "vit"] = "conv"
    patch: int = 8
    dim: int = 64
    depth: int = 2
    heads: int = 4
    latent_dim: int = 16

    def __post_init__(self) -> None:
        if self.patch < 1 or self.patch & (self.patch - 1):
            raise ConfigError(f"encoder.patch must be a power of two, found {self.patch}")
        if self.type == "vit" and self.dim % self.heads:
            raise ConfigError(f"encoder.dim ({self.dim}) must be divisible by encoder.heads ({self.heads})")


@dataclass(frozen=True)
class DecoderConfig:
    """``gan``: a CNN decoder trained with the head's loss, a discriminator feature-matching loss and a hinge
    patch-GAN loss once ``disc_start`` steps are done (VQGAN style). ``diffusion``: a diffusers UNet conditioned on
    the quantised latents, DDPM training over ``train_timesteps``, DDIM sampling in ``sample_steps``."""

    type: Literal["gan", "diffusion"] = "gan"
    dim: int = 64
    disc_start: int = 100
    disc_weight: float = 0.1
    feature_weight: float = 1.0
    disc_dim: int = 32
    disc_layers: int = 2
    unet_dims: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    cond_dim: int = 16
    train_timesteps: int = 1000
    sample_steps: int = 10


@dataclass(frozen=True)
class TrainConfig:
    """Training on a cube: ``crop`` base pixels per sample (random crops), AdamW, ``steps`` optimiser steps.

    ``num_workers``: data loader worker processes, ``None`` (the default): one per CPU core; ``--workers`` on the
    command line wins over it (:func:`eo_models.training.tokenizer.loader_workers`). It is no part of the model:
    a checkpoint resumes with other workers.
    """

    crop: int = 64
    batch_size: int = 8
    steps: int = 100
    lr: float = 3e-4
    disc_lr: float = 1e-4
    weight_decay: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 50
    seed: int = 0
    num_workers: int | None = None
    precision: Literal["32", "bf16"] = "32"

    def __post_init__(self) -> None:
        n = self.num_workers
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"train.num_workers must be an int >= 0 or null (one per CPU core), found {n!r}")


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything a tokenizer is: its modality, quantizer, encoder, decoder and how it was trained."""

    modality: ModalityConfig
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenizerConfig:
        """From :meth:`to_dict`'s output (or a config.json)."""
        return _build(cls, data, "")


def _build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping, nested dataclasses and tuples included; unknown keys are an error."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, found {type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown keys {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint, path = hints[key], f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, path)
        elif get_origin(hint) is tuple and value is not None:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{path}: expected a list, found {value!r}")
            value = tuple(value)
        elif get_origin(hint) is Literal and value not in get_args(hint):
            raise ConfigError(f"{path}: expected one of {list(get_args(hint))}, found {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def config_path(name_or_path: str | Path) -> Path:
    """A config file: a path, or the name of a bundled one (``tiny``, ``base``: ``configs/tokenizer-<name>.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}", CONFIG_DIR / f"tokenizer-{name_or_path}.yaml",
                      CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    bundled = sorted(p.stem.removeprefix("tokenizer-") for p in CONFIG_DIR.glob("tokenizer-*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a bundled config; bundled: {bundled}")


def load_sections(name_or_path: str | Path, modality: str, **overrides: Any) -> dict[str, Any]:
    """The config file's sections for one modality (its ``modalities.<name>`` overrides applied), as dicts.

    ``overrides`` (``quantizer="vq"``, ``decoder="diffusion"``, ``steps=50`` ...) replace a section's ``type`` or a
    ``train`` value, as the command line does.
    """
    path = config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    sections = {k: dict(raw.get(k) or {}) for k in ("quantizer", "encoder", "decoder", "train")}
    unknown = sorted(set(raw) - {*sections, "modalities", "name"})
    if unknown:
        raise ConfigError(f"{path}: unknown sections {unknown}; expected quantizer, encoder, decoder, train, "
                          "modalities")
    for section, values in ((raw.get("modalities") or {}).get(modality) or {}).items():
        if section not in sections:
            raise ConfigError(f"{path}: modalities.{modality}.{section} is not a section")
        sections[section].update(values)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("quantizer", "decoder", "encoder"):
            sections[key]["type"] = value
        else:
            sections["train"][key] = value
    sections["name"] = raw.get("name", path.stem)
    return sections


def make_config(sections: Mapping[str, Any], modality: ModalityConfig) -> TokenizerConfig:
    """A validated :class:`TokenizerConfig` from :func:`load_sections`' output and the modality."""
    data = {k: v for k, v in sections.items() if k != "name"}
    return _build(TokenizerConfig, {**data, "modality": modality, "name": sections.get("name", "")}, "")
