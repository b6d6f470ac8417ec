"""Configs of the supervised baselines: one validated, frozen pydantic model, loaded from one YAML file
(``eo_models/configs/baseline-<name>.yaml`` or a path), stored in the saved model's ``config.json``.

``kind``:

- ``late``: MLP late fusion (OmniSat's ``Late_fusion``): one encoder per modality, embeddings concatenated with one
  availability flag per modality, an MLP head; modality dropout in training; a missing modality is zero-filled and
  flagged. With one modality it is the **unimodal** model of that modality.
- ``unet``: a small supervised U-Net over every modality's pixels stacked (zero-filled, with the flags as channels).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eo_models.config import bundled_config_path
from eo_models.errors import ConfigError


class BaselineTrain(BaseModel):
    """How a baseline trains (AdamW, linear warm-up then cosine decay)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: int = Field(10, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)


class BaselineData(BaseModel):
    """What a baseline was trained on, for its model card and the zoo registry (all optional; the experiment fills it
    in from the cube and the tasks).

    Attributes:
        cube: The training cube (its name or path).
        recipe_hash: The training cube's ``recipe_hash``.
        channel_names: ``{modality: channel names}`` of the inputs, in channel order.
        normalisation: How the inputs were made from the cube (one line, e.g. per-band standardisation).
        class_names: The segmentation / composition class names, in index order.
        grid: Cells per side of the task grid the model predicts on.
        label: The segmentation label modality; ``target``: the regression target modality, in ``units``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cube: str = ""
    recipe_hash: str | None = None
    channel_names: dict[str, tuple[str, ...]] = {}
    normalisation: str = ""
    class_names: tuple[str, ...] = ()
    grid: int | None = Field(None, ge=1)
    label: str = ""
    target: str = ""
    units: str = ""


class BaselineConfig(BaseModel):
    """One baseline model: its architecture, its inputs and tasks (filled in from the data), and its training.

    Attributes:
        name: The config's name (``tiny``).
        kind: ``late`` (late fusion; unimodal with one modality) or ``unet``.
        encoder: ``conv`` (two 3 x 3 convolutions per modality) or ``mlp`` (an MLP per task-grid cell).
        dim: Embedding width per modality (late) or first U-Net width.
        head_dim: Hidden width of the heads.
        modality_dropout: Probability of dropping each available modality of a training sample (one always stays).
        modalities: Input modalities, in order; ``channels``: their channel counts.
        classes: Segmentation classes (also the composition labels).
        height_mean, height_std: Standardisation of the regression target (from the training split).
        trained_on: What it was trained on (:class:`BaselineData`: cube, recipe hash, channel and class names).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "tiny"
    kind: Literal["late", "unet"] = "late"
    encoder: Literal["conv", "mlp"] = "conv"
    dim: int = Field(32, ge=1)
    head_dim: int = Field(64, ge=1)
    modality_dropout: float = Field(0.3, ge=0, lt=1)
    modalities: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()
    classes: int = Field(2, ge=1)
    height_mean: float = 0.0
    height_std: float = 1.0
    seed: int = 0
    train: BaselineTrain = BaselineTrain()
    trained_on: BaselineData = BaselineData()

    @model_validator(mode="after")
    def _trained_on_matches(self) -> BaselineConfig:
        d = self.trained_on
        for m, names in d.channel_names.items():
            if m not in self.modalities:
                raise ValueError(f"trained_on.channel_names has {m!r}, not an input modality {list(self.modalities)}")
            n = self.channels[self.modalities.index(m)] if len(self.channels) == len(self.modalities) else len(names)
            if len(names) != n:
                raise ValueError(f"trained_on.channel_names[{m!r}] names {len(names)} channels, the input has {n}")
        if d.class_names and len(d.class_names) != self.classes:
            raise ValueError(f"trained_on.class_names names {len(d.class_names)} classes, classes is {self.classes}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``config.json`` holds); ``trained_on`` only when something is recorded there, so
        configs without it keep their content (and the hashes runs are named by)."""
        out = self.model_dump(mode="json")
        if self.trained_on == BaselineData():
            del out["trained_on"]
        return out

    def what_is_trained(self) -> dict[str, Any]:
        """:meth:`to_dict` less ``trained_on`` (a description of the data, not of the model): two configs that
        differ only there train the same model (runs are named and reused by this)."""
        return {k: v for k, v in self.to_dict().items() if k != "trained_on"}

    @classmethod
    def from_dict(cls, data: Any) -> BaselineConfig:
        """Validated from a mapping; errors as one :class:`ConfigError` line."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                                 for e in exc.errors(include_url=False))
            raise ConfigError(f"baseline config: {problems}") from None


def load_baseline_config(config: str | os.PathLike[str] = "tiny", **overrides: Any) -> BaselineConfig:
    """A bundled config by name (``tiny``: ``eo_models/configs/baseline-tiny.yaml``) or a YAML file, with
    top-level ``overrides`` (``kind="unet"``, ``modalities=(...)``, ``train={...}``).

    Raises:
        ConfigError: no such file or bundled config, not YAML, or invalid values.
    """
    path = bundled_config_path(config, "baseline")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    train = {**(data.pop("train", None) or {}), **(overrides.pop("train", None) or {})}
    return BaselineConfig.from_dict({**data, **overrides, "train": train})
