"""The artifact kinds of eo_models, as the Hub layer sees them: the class that saves and loads each, the files a saved
folder holds, how its ``config.json`` is validated, and what the zoo registry records of it.

=====================  ======================================  =============================================
kind                   class                                   files
=====================  ======================================  =============================================
``tokenizer``          :class:`~eo_models.tokenizers.Tokenizer`  ``config.json``, ``model.safetensors``, card
``caption-tokenizer``  :class:`~eo_models.tokenizers.text.CaptionTokenizer`  ``config.json``, ``tokenizer.json``,
                                                                 card
``fusion``             :class:`~eo_models.fusion.model.FusionModel`  ``config.json``, ``model.safetensors``, card
``backbone``           :class:`~eo_models.backbones.terramind.TerraMindBackbone`  ``config.json``,
                       (``eo-models convert terramind``)       ``model.safetensors``, card
``baseline``           :class:`~eo_models.baselines.model.BaselineModel`  ``config.json``,
                       (``train_baseline``, ``eo-models        ``model.safetensors``, card
                       experiment fusion-vs-late``)
=====================  ======================================  =============================================

Every class saves, loads (a local folder, a Hub repo id with a revision, the Hub cache offline) and pushes through
``huggingface_hub``'s mixins and writes its card with :mod:`eo_models.hub.card`. :func:`kind_of_folder` tells which
kind a folder holds from its ``config.json`` (the one config model that accepts it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eo_models.backbones.terramind import TerraMindBackbone, TerraMindConfig
from eo_models.baselines.config import BaselineConfig
from eo_models.baselines.model import BaselineModel
from eo_models.config import TokenizerConfig
from eo_models.errors import CheckpointError, ConfigError
from eo_models.fusion.config import FusionConfig
from eo_models.fusion.model import FusionModel
from eo_models.hub.card import CARD_FILE
from eo_models.tokenizers.text import CaptionTokenizer, CaptionTokenizerConfig
from eo_models.tokenizers.tokenizer import Tokenizer, recipe_hash_of

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class Described:
    """What the registry records of an artifact: its modalities, their bands, the training cube's recipe hash."""

    modalities: tuple[str, ...]
    bands: Mapping[str, tuple[str, ...]]
    recipe_hash: str | None


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact.

    Attributes:
        name: The kind's name in the registry (``catalogs/models.yaml``).
        cls: The class with ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.
        files: Exactly the files a saved folder of this kind holds (and a push uploads).
        weights: The safetensors file among them, ``None`` for a kind without tensors.
        read_config: ``config.json``'s content -> the validated config (raises ``ConfigError``).
        describe: The validated config -> :class:`Described`.
    """

    name: str
    cls: type
    files: tuple[str, ...]
    weights: str | None
    read_config: Callable[[Mapping[str, Any]], Any]
    describe: Callable[[Any], Described]

    def load(self, where: str | os.PathLike[str], **kwargs: Any) -> Any:
        """``cls.from_pretrained(where, **kwargs)`` without the library's prints.

        Raises:
            CheckpointError: it cannot be loaded.
        """
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local ..."
                return self.cls.from_pretrained(where, **kwargs)
        except CheckpointError:
            raise
        except Exception as exc:  # huggingface_hub, safetensors and torch raise many types
            raise CheckpointError(f"cannot load {self.name} {os.fspath(where)!r} ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); save it again with "
                                  "save_pretrained") from exc


def _describe_tokenizer(cfg: TokenizerConfig) -> Described:
    m = cfg.modality
    return Described((m.name,), {m.name: tuple(m.bands)}, recipe_hash_of(m.stats_from))


def _describe_caption(cfg: CaptionTokenizerConfig) -> Described:
    return Described((cfg.modality,), {}, cfg.recipe_hash)


def _describe_fusion(cfg: FusionConfig) -> Described:
    return Described(tuple(cfg.names), {}, cfg.recipe_hash or None)


def _describe_backbone(cfg: TerraMindConfig) -> Described:
    names = tuple(dict.fromkeys(i.name for i in cfg.inputs))
    bands = {i.name: tuple(i.modality.bands) for i in cfg.inputs if i.modality is not None}
    return Described(names, bands, None)


def _read_baseline(data: Mapping[str, Any]) -> BaselineConfig:
    if not isinstance(data, Mapping) or not data.get("modalities"):  # every field has a default: ask for the inputs
        raise ConfigError("baseline config: no input modalities (a baseline's config.json names them)")
    return BaselineConfig.from_dict(data)


def _describe_baseline(cfg: BaselineConfig) -> Described:
    d = cfg.trained_on
    return Described(tuple(cfg.modalities), {m: tuple(b) for m, b in d.channel_names.items()}, d.recipe_hash)


KINDS: dict[str, ArtifactKind] = {k.name: k for k in (
    ArtifactKind("tokenizer", Tokenizer, (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE), WEIGHTS_FILE,
                 TokenizerConfig.from_dict, _describe_tokenizer),
    ArtifactKind("caption-tokenizer", CaptionTokenizer, (CONFIG_FILE, "tokenizer.json", CARD_FILE), None,
                 CaptionTokenizerConfig.from_dict, _describe_caption),
    ArtifactKind("fusion", FusionModel, (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE), WEIGHTS_FILE,
                 FusionConfig.from_dict, _describe_fusion),
    ArtifactKind("backbone", TerraMindBackbone, (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE), WEIGHTS_FILE,
                 TerraMindConfig.from_dict, _describe_backbone),
    ArtifactKind("baseline", BaselineModel, (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE), WEIGHTS_FILE,
                 _read_baseline, _describe_baseline),
)}


def read_config_json(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``folder/config.json`` as a dict.

    Raises:
        CheckpointError: missing, not JSON, or not a JSON object.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}; expected a folder written by save_pretrained "
                              "(train-tokenizer, train-text-tokenizer, train-fusion, convert, a baseline's training)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; save the artifact again with save_pretrained") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, expected an object (an artifact's config)")
    return data


def kind_of_config(data: Mapping[str, Any], where: str = CONFIG_FILE) -> tuple[ArtifactKind, Any]:
    """The kind whose config model accepts ``data``, and the validated config.

    Raises:
        CheckpointError: no kind accepts it (the message says why each refused it).
    """
    why = []
    for kind in KINDS.values():
        try:
            return kind, kind.read_config(data)
        except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
            why.append(f"{kind.name}: {str(exc).splitlines()[0][:160]}")
    raise CheckpointError(f"{where} is the config of no eo_models artifact ({'; '.join(why)}); expected the "
                          "config.json that save_pretrained writes")


def kind_of_folder(folder: str | os.PathLike[str]) -> tuple[ArtifactKind, Any]:
    """The kind of artifact in a local folder, from its ``config.json``, and the validated config.

    Raises:
        CheckpointError: no such folder, no or unreadable ``config.json``, or a config of no kind.
    """
    if not Path(folder).is_dir():
        raise CheckpointError(f"no such folder {os.fspath(folder)!r}; pass the folder save_pretrained wrote")
    return kind_of_config(read_config_json(folder), str(Path(folder) / CONFIG_FILE))
