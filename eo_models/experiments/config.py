"""The config of an experiment: one validated pydantic model, loaded from ``eo_models/configs/experiment-<name>.yaml``
or a YAML path, written into ``results.json``."""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eo_models.config import bundled_config_path
from eo_models.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TasksConfig(_Strict):
    """Which modalities are labels, the inputs, the task grid and the presence threshold."""

    label: str
    target: str
    inputs: tuple[str, ...] | None = None
    grid: int = Field(22, ge=1)
    presence: float = Field(0.05, gt=0, lt=1)


class SplitConfig(_Strict):
    """Spatial split: unit, fractions (train, val, test), seed."""

    unit: Literal["cell", "quadrant"] = "cell"
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0


class StageConfig(_Strict):
    """A model config (bundled name or YAML path) and an optional override of its steps."""

    config: str = "tiny"
    steps: int | None = Field(None, ge=1)


class TokenizerStage(StageConfig):
    """The tokenizers' config, steps, and training crop in base pixels (``None``: the config's); a multiple of 6
    serves 10, 20, 30 and 60 m modalities alike."""

    crop: int | None = Field(96, ge=1)


class ProbeConfig(_Strict):
    """Linear-probe sweep and schedule, label fractions, kNN neighbours and temperature."""

    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    steps: int = Field(200, ge=1)
    warmup: int = Field(20, ge=0)
    fractions: tuple[float, ...] = (1.0, 0.2, 0.05)
    knn: tuple[int, ...] = (5, 20)
    temperature: float = Field(0.07, gt=0)


class BootstrapConfig(_Strict):
    """Paired bootstrap over test samples."""

    resamples: int = Field(1000, ge=10)
    level: float = Field(0.95, gt=0, lt=1)


class ExperimentConfig(_Strict):
    """Everything ``experiment fusion-vs-late`` runs (see docs/experiments/fusion.md)."""

    name: str = "tiny"
    tasks: TasksConfig
    split: SplitConfig = SplitConfig()
    tokenizer: TokenizerStage = TokenizerStage()
    fusion: StageConfig = StageConfig()
    baseline: StageConfig = StageConfig()
    probe: ProbeConfig = ProbeConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return self.model_dump(mode="json")


def load_experiment_config(config: str | os.PathLike[str] = "tiny", **overrides: Any) -> ExperimentConfig:
    """A bundled experiment config by name (``tiny``) or a YAML file; ``overrides`` replace whole sections'
    keys (``split={"unit": "quadrant"}``).

    Raises:
        ConfigError: no such file or bundled config, not YAML, or invalid values.
    """
    path = bundled_config_path(config, "experiment")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, found {type(data).__name__}")
    for key, value in overrides.items():
        data[key] = {**(data.get(key) or {}), **value} if isinstance(value, dict) else value
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        raise ConfigError(f"experiment config {path}: {problems}") from None
