"""Tokenizer configs: one validated, frozen pydantic dataclass per section, loaded from one YAML file, stored in the
model's config.json.

A config file (``eo_models/configs/tokenizer-tiny.yaml``) holds the sections ``quantizer``, ``encoder``, ``decoder``
and ``train``, and optionally ``modalities: {name: {section: {...}}}`` with per-modality overrides (land cover's
FSQ levels, say). The modality itself (bands, normalisation statistics, class table) is not in the file: it is
read from the training cube (:func:`eo_models.modality.modality_from_cube`) and travels inside the trained
tokenizer's ``config.json``, so nothing has to be guessed when the tokenizer is used later.

Every section is a pydantic dataclass (:func:`section`): validated whenever it is built (directly, by
``dataclasses.replace``, from a dict with :meth:`Section.from_dict`, from a file), unknown keys and wrong types
refused (ints are ints and flags are booleans; nothing is read from a string but numbers), and still a frozen
dataclass (``dataclasses.replace``/``asdict`` work). Whatever is wrong is raised as one
:class:`~eo_models.errors.ConfigError` line naming the key path (``train.crop: expected a valid integer, found
'64'``; ``encoder: unknown keys ['patchh']; known: [...]``). The modality section, :class:`ModalityConfig`, is a
plain frozen dataclass validated the same way inside :class:`TokenizerConfig`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_type_hints

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from eo_models.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would take True for 1.0
        raise ValueError("expected a number")
    return value


Int = Annotated[int, Strict()]  #: an int, not a float, a bool or a string
Positive = Annotated[int, Strict(), Field(ge=1)]
NonNegative = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, BeforeValidator(_no_bool)]  #: a float or an int (YAML's ``1e-4`` is a string: taken too)
NonNegativeFloat = Annotated[float, BeforeValidator(_no_bool), Field(ge=0)]
Bool = Annotated[bool, Strict()]


@dataclass(frozen=True)
class ModalityConfig:
    """What a tokenizer knows about its modality, taken from the training cube.

    ``kind``: ``continuous`` (normalised ``(x - mean) / std`` per band, after ``transform``), ``categorical``
    (stored class ids in ``classes``; embedded in, cross-entropy out) or ``multilabel`` (0/1 layers; BCE).
    ``mean``/``std`` are in the units after ``transform`` (``db``: ``10 log10(x)``, for SAR backscatter).
    ``embed_dim``: categorical only, the width of the class embedding the encoder reads (a converted TerraMind
    tokenizer: one per class, the embedding a one-hot table in TerraMind's channel order).
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
    embed_dim: int = 8

    def __post_init__(self) -> None:
        if self.kind == "continuous" and (len(self.mean) != len(self.bands) or len(self.std) != len(self.bands)):
            raise ConfigError(f"modality {self.name}: {len(self.bands)} bands but {len(self.mean)} means and "
                              f"{len(self.std)} stds; a continuous modality needs one of each per band")
        if self.kind == "categorical" and len(self.classes) < 2:
            raise ConfigError(f"modality {self.name}: categorical with {len(self.classes)} classes; the cube's "
                              "modality attrs must list its class table ('classes')")
        if self.embed_dim < 1:
            raise ConfigError(f"modality {self.name}: embed_dim {self.embed_dim}; expected a positive class "
                              "embedding width (default 8)")


class Section:
    """Methods of every config section; a section is a frozen pydantic dataclass made by :func:`section`."""

    section: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Validated from a mapping (YAML, ``config.json``); errors as one :class:`ConfigError` line."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.section or 'config'}: expected a mapping, found {type(data).__name__} {data!r}")
        try:
            return cls(**{str(k): v for k, v in data.items()})
        except TypeError as exc:  # a key that is no keyword at all ("self")
            raise ConfigError(f"{cls.section or 'config'}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples stay tuples; ``json`` writes them as lists)."""
        return asdict(self)  # type: ignore[call-overload]


S = TypeVar("S", bound=type)


def section(name: str = "") -> Callable[[S], S]:
    """Make a class a config section: a frozen pydantic dataclass (validated on construction, ``dataclasses.replace``
    included; unknown keys refused) whose validation errors are one :class:`ConfigError` line with the key path,
    prefixed with ``name`` (the section's key in a config file)."""

    def make(cls: S) -> S:
        cls = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(describe(exc, name, cls)) from None

        cls.__init__ = __init__  # type: ignore[misc]
        cls.section = name  # type: ignore[attr-defined]
        return cls

    return make


def describe(exc: ValidationError, prefix: str = "", root: Any = None) -> str:
    """One line for a pydantic error: every problem with its key path (after ``prefix``), unknown keys grouped by
    their section (with the keys the section of ``root``, the dataclass validated, knows)."""
    problems: list[str] = []
    unknown: dict[tuple[str, ...], list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        path = ".".join((prefix,) * bool(prefix) + loc) or "config"
        kind, found = err["type"], err.get("input")
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            unknown.setdefault(loc[:-1], []).append(loc[-1])
            continue
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, ConfigError):  # our own checks word the whole message
            problems.append(str(error))
        elif kind == "literal_error":
            problems.append(f"{path}: expected one of {_choices(err['ctx']['expected'])}, found {found!r}")
        elif kind == "missing_argument" or kind == "missing":
            problems.append(f"{path}: required, not given")
        elif error is not None:
            problems.append(f"{path}: {error}, found {found!r}")
        else:
            problems.append(f"{path}: expected {err['msg'].removeprefix('Input should be ')}, found {found!r}")
    for loc, keys in unknown.items():
        where = ".".join((prefix,) * bool(prefix) + loc) or "config"
        known = _known_keys(root, loc)
        problems.insert(0, f"{where}: unknown keys {sorted(keys)}" + (f"; known: {known}" if known else ""))
    return "; ".join(problems)


def _choices(expected: str) -> list[Any]:
    """pydantic's ``'fsq' or 'vq'`` / ``'a', 'b' or 'c'`` as a list."""
    return [yaml.safe_load(v) for v in expected.replace(" or ", ", ").split(", ")]


def _known_keys(cls: Any, loc: tuple[str, ...]) -> list[str]:
    """The keys of the section at ``loc`` of ``cls``, for the message about unknown ones."""
    for part in loc:
        hints = get_type_hints(cls) if is_dataclass(cls) else {}
        if part not in hints:
            return []
        cls = hints[part]
    return sorted(f.name for f in fields(cls)) if is_dataclass(cls) else []


@section("quantizer")
class QuantizerConfig(Section):
    """``fsq``: finite scalar quantisation with ``levels`` (codebook = their product); ``vq``: an EMA codebook of
    ``codebook_size`` codes (``codebook_dim`` for low-dimensional codes, ``cosine`` for cosine-similarity codes,
    codes used less than ``dead_code_threshold`` times per batch restarted from the batch). ``sigmoid_fsq``:
    TerraMind-1.0's FSQ (:mod:`eo_models.tokenizers.quantizers.sigmoid_fsq`), for converted weights."""

    type: Literal["fsq", "vq", "sigmoid_fsq"] = "fsq"
    levels: tuple[Int, ...] = (8, 5, 5, 5)
    codebook_size: Int = 1000
    codebook_dim: Int | None = None
    cosine: Bool = False
    decay: Float = 0.99
    dead_code_threshold: Float = 2.0
    commitment_weight: Float = 0.25

    def __post_init__(self) -> None:
        if self.type in ("fsq", "sigmoid_fsq") and (not self.levels or min(self.levels) < 3):
            # vector-quantize-pytorch's FSQ rejects a level of 2 (unless preserve_symmetry, which we do not use)
            raise ConfigError(f"quantizer.levels must be integers >= 3, found {list(self.levels)}")
        if self.type == "vq" and self.codebook_size < 2:
            raise ConfigError(f"quantizer.codebook_size must be >= 2, found {self.codebook_size}")

    @property
    def codebook_size_(self) -> int:
        """Number of distinct tokens."""
        return math.prod(self.levels) if self.type in ("fsq", "sigmoid_fsq") else self.codebook_size


@section("encoder")
class EncoderConfig(Section):
    """``conv``: a residual CNN; ``vit``: a ViT over ``patch`` x ``patch`` patches. Either way one token per
    ``patch`` x ``patch`` pixels of the modality, of ``latent_dim`` dimensions before quantisation.
    ``terramind_vit``: TerraMind-1.0's encoder (:mod:`eo_models.tokenizers.terramind_encoder`), for converted
    weights."""

    type: Literal["conv", "vit", "terramind_vit"] = "conv"
    patch: Int = 8
    dim: Positive = 64
    depth: Positive = 2
    heads: Positive = 4
    latent_dim: Positive = 16

    def __post_init__(self) -> None:
        if self.patch < 1 or self.patch & (self.patch - 1):
            raise ConfigError(f"encoder.patch must be a power of two, found {self.patch}")
        if self.type == "vit" and self.dim % self.heads:
            raise ConfigError(f"encoder.dim ({self.dim}) must be divisible by encoder.heads ({self.heads})")


@section("decoder")
class DecoderConfig(Section):
    """``gan``: a CNN decoder trained with the head's loss, a discriminator feature-matching loss and a hinge
    patch-GAN loss once ``disc_start`` steps are done (VQGAN style). ``diffusion``: a diffusers UNet conditioned on
    the quantised latents, DDPM training over ``train_timesteps``, DDIM sampling in ``sample_steps``.
    ``terramind_diffusion``: TerraMind-1.0's patched-UNet diffusion decoder (width ``unet_dims[0]``, multipliers
    ``unet_dims[i] / unet_dims[0]``, ``layers_per_block`` residual blocks per level), for converted weights.
    ``terramind_vit``: TerraMind-1.0's ViT decoder (:mod:`eo_models.tokenizers.decoders.terramind_vit`; ``dim``
    wide, ``layers_per_block`` transformer blocks, ``dim / 64`` heads), for converted weights."""

    type: Literal["gan", "diffusion", "terramind_diffusion", "terramind_vit"] = "gan"
    dim: Positive = 64
    disc_start: NonNegative = 100
    disc_weight: Float = 0.1
    feature_weight: Float = 1.0
    disc_dim: Positive = 32
    disc_layers: Positive = 2
    unet_dims: tuple[Positive, ...] = (32, 64)
    layers_per_block: Positive = 1
    cond_dim: Positive = 16
    train_timesteps: Positive = 1000
    sample_steps: Positive = 10


@section("train")
class TrainConfig(Section):
    """Training on a cube: ``crop`` base pixels per sample (random crops), AdamW, ``steps`` optimiser steps.

    ``accumulate``: micro-batches of ``batch_size`` per optimiser step (gradient accumulation; one step then sees
    ``batch_size x accumulate x devices`` samples). ``precision``: ``32`` (float32), ``bf16`` (bfloat16 mixed
    precision, autocast) or ``16`` (float16 mixed precision with a gradient scaler; GPUs only).

    ``num_workers``: data loader worker processes, ``None`` (the default): one per CPU core; ``--workers`` on the
    command line wins over it (:func:`eo_models.training.tokenizer.loader_workers`). The settings in
    :attr:`RUNTIME` (``steps``, ``num_workers``, ``precision``) are no part of the model: a checkpoint resumes with
    other values of them.
    """

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"steps", "num_workers", "precision"})
    crop: Positive = 64
    batch_size: Positive = 8
    steps: Positive = 100
    accumulate: Positive = 1
    lr: NonNegativeFloat = 3e-4
    disc_lr: NonNegativeFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.0
    log_every: Positive = 10
    checkpoint_every: Positive = 50
    seed: Int = 0
    num_workers: Int | None = None
    precision: Literal["32", "bf16", "16"] = "32"

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, n: Any) -> Any:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"train.num_workers must be an int >= 0 or null (one per CPU core), found {n!r}")
        return n

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # YAML's 32 -> "32"


@section()
class TokenizerConfig(Section):
    """Everything a tokenizer is: its modality, quantizer, encoder, decoder and how it was trained."""

    modality: ModalityConfig
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""

    def with_train(self, **values: Any) -> TokenizerConfig:
        """A copy with other ``train`` values (validated)."""
        return replace(self, train=replace(self.train, **values))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; the modality's ``embed_dim`` only when it is not the default, so configs (and the token
        stores and runs keyed by them) written before that field existed stay byte-identical."""
        out = super().to_dict()
        if out["modality"]["embed_dim"] == ModalityConfig.embed_dim:
            del out["modality"]["embed_dim"]
        return out


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


def bundled_config_path(name_or_path: str | os.PathLike[str], kind: str) -> Path:
    """A config file: a path, or the name of a bundled one of ``kind`` (``configs/<kind>-<name>.yaml``).

    Raises:
        ConfigError: neither a file nor a bundled name (the message lists the bundled names).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{kind}-{os.fspath(name_or_path)}.yaml"
    if candidate.is_file():
        return candidate
    bundled = sorted(p.stem.removeprefix(f"{kind}-") for p in CONFIG_DIR.glob(f"{kind}-*.yaml"))
    raise ConfigError(f"{kind} config {os.fspath(name_or_path)!r} is neither a file nor a bundled config; "
                      f"bundled: {bundled}")


def read_sections(path: Path, sections: Sequence[str], other: Sequence[str] = ("name",)
                  ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A YAML config file's top-level mapping and its ``sections`` as dicts (a missing one is empty); keys other
    than ``sections`` and ``other`` are refused.

    Raises:
        ConfigError: not YAML, not a mapping, a section that is not a mapping, or an unknown key.
    """
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    unknown = sorted(set(raw) - {*sections, *other})
    if unknown:
        expected = ", ".join([*sections, *(o for o in other if o != "name")])
        raise ConfigError(f"{path}: unknown sections {unknown}; expected {expected}")
    out: dict[str, dict[str, Any]] = {}
    for key in sections:
        value = raw.get(key) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: {key}: expected a mapping, found {type(value).__name__} {value!r}")
        out[key] = dict(value)
    return dict(raw), out


def load_sections(name_or_path: str | Path, modality: str, **overrides: Any) -> dict[str, Any]:
    """The config file's sections for one modality (its ``modalities.<name>`` overrides applied), as dicts.

    ``overrides`` (``quantizer="vq"``, ``decoder="diffusion"``, ``steps=50`` ...) replace a section's ``type`` or a
    ``train`` value, as the command line does.
    """
    path = config_path(name_or_path)
    raw, sections = read_sections(path, ("quantizer", "encoder", "decoder", "train"), ("modalities", "name"))

    def mapping(value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: {where}: expected a mapping, found {type(value).__name__} {value!r}")
        return dict(value)

    own = mapping(mapping(raw.get("modalities"), "modalities").get(modality), f"modalities.{modality}")
    for section, values in own.items():
        if section not in sections:
            raise ConfigError(f"{path}: modalities.{modality}.{section} is not a section")
        sections[section].update(mapping(values, f"modalities.{modality}.{section}"))
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
    return TokenizerConfig.from_dict({**data, "modality": modality, "name": sections.get("name", "")})
