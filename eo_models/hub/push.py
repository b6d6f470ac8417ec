"""``eo-models push``: upload an artifact folder to the Hugging Face Hub, exactly its card, config and weights.

:func:`stage` copies the files of the artifact's kind (:mod:`eo_models.hub.artifacts`: ``config.json``, the
safetensors weights or ``tokenizer.json``, ``README.md``) from a folder ``save_pretrained`` wrote into a new folder,
leaving everything else behind (``train/`` checkpoints and logs, pickled weights), and :func:`check_staged` validates
that folder as it would be uploaded: no stray files, ``config.json`` valid for its kind, the card one of ours, the
weights safetensors, and the artifact loading from it with ``from_pretrained``. ``push --dry-run`` stops there;
:func:`push` then uploads that same staged folder with ``huggingface_hub``'s ``upload_folder``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eo_models.errors import CheckpointError
from eo_models.hub.artifacts import ArtifactKind, kind_of_folder, read_config_json
from eo_models.hub.card import CARD_FILE, check_card
from eo_models.hub.pull import sha256_of


@dataclass(frozen=True)
class StagedFile:
    """A file of the upload: ``name``, ``size`` in bytes, ``sha256``."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Staged:
    """A validated upload: the ``folder`` holding exactly its ``files``, the artifact ``kind``, the source folder's
    files ``left_out`` (relative paths), the card's ``license``, and ``described`` (modalities, bands, recipe hash)."""

    folder: Path
    kind: ArtifactKind
    files: tuple[StagedFile, ...]
    left_out: tuple[str, ...]
    license: str
    modalities: tuple[str, ...]
    bands: Mapping[str, tuple[str, ...]]
    recipe_hash: str | None

    def registry_entry(self, repo_id: str, revision: str | None = None) -> dict[str, Any]:
        """The ``catalogs/models.yaml`` entry of this upload as ``repo_id`` (``revision``: the commit it was pushed
        as; without it the sha256 values are left out, as they cannot be tied to a commit yet)."""
        entry: dict[str, Any] = {"id": repo_id, "kind": self.kind.name, "modalities": list(self.modalities)}
        if self.bands:
            entry["bands"] = {m: list(b) for m, b in self.bands.items()}
        entry.update(recipe_hash=self.recipe_hash, license=self.license, revision=revision,
                     files=[{"name": f.name, "sha256": f.sha256 if revision else None} for f in self.files],
                     source={"type": "project"})
        return entry


def _all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def check_staged(folder: str | os.PathLike[str], kind: ArtifactKind) -> Staged:
    """Validate a folder as an upload of ``kind``: exactly its files, a valid ``config.json``, one of our cards,
    safetensors weights, and ``from_pretrained`` loading it.

    Raises:
        CheckpointError: naming what is wrong.
    """
    folder = Path(folder)
    present = _all_files(folder)
    stray = sorted(set(present) - set(kind.files))
    missing = sorted(set(kind.files) - set(present))
    if stray or missing:
        raise CheckpointError(f"{folder} is not an upload of a {kind.name}: "
                              + "; ".join(x for x in (f"stray files {stray}" if stray else "",
                                                      f"missing {missing}" if missing else "") if x)
                              + f" (expected exactly {sorted(kind.files)})")
    cfg = kind.read_config(read_config_json(folder))
    card = check_card(folder / CARD_FILE)
    if kind.weights is not None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(folder / kind.weights, framework="pt") as f:
                if not list(f.keys()):
                    raise CheckpointError(f"{folder / kind.weights} holds no tensors; save the artifact again")
        except SafetensorError as exc:
            raise CheckpointError(f"{folder / kind.weights} is not a safetensors file ({exc}); save the artifact "
                                  "again with save_pretrained") from None
    kind.load(folder)
    described = kind.describe(cfg)
    files = tuple(StagedFile(n, (folder / n).stat().st_size, sha256_of(folder / n)) for n in sorted(kind.files))
    return Staged(folder, kind, files, (), str(card.data.license), described.modalities,
                  dict(described.bands), described.recipe_hash)


def stage(source: str | os.PathLike[str], out: str | os.PathLike[str], *, option: str = "--out") -> Staged:
    """Copy the artifact in ``source`` into ``out`` (a new or empty folder) as it would be uploaded, and validate it.

    Raises:
        CheckpointError: ``source`` is not an artifact folder, lacks a file of its kind, or the copy does not
            validate (:func:`check_staged`).
        OutputError: ``out`` is not a new or empty folder (nothing there is touched).
    """
    from eo_dataset.errors import OutputError
    from eo_dataset.outputs import check_output

    source = Path(source)
    kind, _ = kind_of_folder(source)
    missing = [n for n in kind.files if not (source / n).is_file()]
    if missing:
        raise CheckpointError(f"{source} holds a {kind.name} but lacks {', '.join(missing)}; save it again with "
                              "save_pretrained (it writes the config, the weights and the card)")
    out = Path(out)
    if check_output(out, what="new or empty folder", marker=CARD_FILE, option=option) == "ours":
        raise OutputError(f"{option} {out} is not empty; it is left untouched: choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in kind.files:
        shutil.copyfile(source / name, out / name)  # the bytes, not a link into a Hub cache
    staged = check_staged(out, kind)
    left = tuple(n for n in _all_files(source) if n not in kind.files)
    return Staged(staged.folder, kind, staged.files, left, staged.license, staged.modalities, staged.bands,
                  staged.recipe_hash)


@dataclass(frozen=True)
class Pushed:
    """An upload: what was ``staged``, the Hub ``commit`` and its ``url``."""

    staged: Staged
    commit: str
    url: str


def push(source: str | os.PathLike[str], repo_id: str, *, revision: str | None = None, private: bool = False,
         message: str | None = None, token: str | bool | None = None) -> Pushed:
    """Stage and validate ``source`` (:func:`stage`, in a temporary folder), create ``repo_id`` if needed, and upload
    exactly the staged files with ``huggingface_hub``'s ``upload_folder``.

    Raises:
        CheckpointError: as :func:`stage`; OSError: the Hub refused the upload.
    """
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="eo-models-push-") as tmp:
        staged = stage(source, Path(tmp) / "upload")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=staged.folder, revision=revision,
                                 commit_message=message or f"Upload {staged.kind.name} with eo-models push",
                                 allow_patterns=list(staged.kind.files))
    return Pushed(staged, info.oid, info.commit_url)
