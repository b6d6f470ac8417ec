"""The model zoo's registry, ``catalogs/models.yaml``: which models there are, where, and the files they hold.

Each entry names a Hugging Face Hub repo (``id``), the artifact ``kind`` (an eo_models artifact: ``tokenizer``,
``caption-tokenizer``, ``fusion``, ``backbone``: a converted TerraMind encoder, ``baseline``: a supervised
baseline (its bands are its input channel names); or TerraMind-1.0's own weights,
``terramind-tokenizer`` / ``terramind-backbone``, which ``eo-models convert terramind`` turns into eo_models
folders), the modalities (this project's names) and their bands, the training cube's ``recipe_hash``, the licence,
the ``revision`` the hashes belong to, its ``files`` with their sha256 (``null`` where nobody has checked them yet:
``eo-models pull`` then says the file is not verified), and its ``source`` (trained by this project, or TerraMind
with the upstream repo and revision). :func:`load_registry` validates the file with pydantic and raises one line
naming the key path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from eo_models.errors import ConfigError

#: Artifact kinds an entry may have: eo_models artifacts, then upstream TerraMind-1.0 weights.
KINDS = ("tokenizer", "caption-tokenizer", "fusion", "backbone", "baseline", "terramind-tokenizer",
         "terramind-backbone")
_PACKAGE_CATALOGS = Path(__file__).parents[2] / "eo_dataset" / "catalogs"  # inside an installed wheel
_REPO_CATALOGS = Path(__file__).parents[2] / "catalogs"  # in a source checkout / editable install
REGISTRY_FILE = "models.yaml"

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Commit = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
RepoId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FileEntry(_Strict):
    """One file of a model repo: its path in the repo and its sha256 (``None``: not verified by anybody yet)."""

    name: Annotated[str, StringConstraints(min_length=1)]
    sha256: Sha256 | None


class Source(_Strict):
    """Where the weights come from: ``project`` (trained by 4M4EO) or ``terramind`` (IBM/ESA TerraMind-1.0:
    ``repo`` the upstream Hub repo, ``revision`` its commit, ``None`` when not pinned)."""

    type: Literal["project", "terramind"]
    repo: RepoId | None = None
    revision: Commit | None = None

    @model_validator(mode="after")
    def _upstream(self) -> Source:
        if self.type == "terramind" and self.repo is None:
            raise ValueError("a terramind source needs the upstream repo")
        if self.type == "project" and (self.repo or self.revision):
            raise ValueError("a project source has no upstream repo or revision")
        return self


class ModelEntry(_Strict):
    """One model of the zoo (see the module docstring)."""

    id: RepoId
    kind: Literal["tokenizer", "caption-tokenizer", "fusion", "backbone", "baseline", "terramind-tokenizer",
                  "terramind-backbone"]
    modalities: list[str] = Field(default_factory=list)
    bands: dict[str, list[str]] = Field(default_factory=dict)
    recipe_hash: str | None = None
    license: Annotated[str, StringConstraints(min_length=1)]
    revision: Commit | None = None
    files: Annotated[list[FileEntry], Field(min_length=1)]
    source: Source
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"files named twice: {sorted({n for n in names if names.count(n) > 1})}")
        unknown = sorted(set(self.bands) - set(self.modalities))
        if unknown:
            raise ValueError(f"bands of {unknown}, which are not in modalities {list(self.modalities)}")
        if any(f.sha256 for f in self.files) and self.revision is None:
            raise ValueError("sha256 values need the revision they were taken at (revision: a 40-hex commit)")
        return self

    @property
    def verified(self) -> bool:
        """Every file has a sha256 to check."""
        return all(f.sha256 for f in self.files)


class Registry(_Strict):
    """The whole registry: ``models``, each id once."""

    models: list[ModelEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        ids = [m.id for m in self.models]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"ids listed twice: {twice}")
        return self

    def get(self, repo_id: str) -> ModelEntry:
        """The entry of ``repo_id``.

        Raises:
            ConfigError: no such entry (the message lists the ids there are).
        """
        for m in self.models:
            if m.id == repo_id:
                return m
        known = ", ".join(m.id for m in self.models) or "none"
        raise ConfigError(f"{repo_id!r} is not in the model registry (it lists: {known}); run eo-models list, or "
                          "pass --registry with a registry that lists it")


def default_registry_path() -> Path:
    """The bundled ``catalogs/models.yaml``."""
    root = _PACKAGE_CATALOGS if _PACKAGE_CATALOGS.is_dir() else _REPO_CATALOGS
    return root / REGISTRY_FILE


def _describe(exc: ValidationError, path: str) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        problems.append(f"{where}: {err['msg']}")
    return f"{path}: {'; '.join(problems)}; fix the registry file (see docs/zoo.md)"


def parse_registry(data: object, source: str = "registry") -> Registry:
    """A validated :class:`Registry` from parsed YAML.

    Raises:
        ConfigError: one line with every problem and its key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'models' list, found {type(data).__name__}")
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """The registry in ``path`` (default: the bundled ``catalogs/models.yaml``), validated.

    Raises:
        ConfigError: no such file, not YAML, or an invalid entry.
    """
    p = Path(path) if path is not None else default_registry_path()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the model registry {p}: {exc.strerror or exc}; pass an existing "
                          "models.yaml") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML ({str(exc).splitlines()[0]}); fix the registry file") from None
    return parse_registry(data, str(p))
