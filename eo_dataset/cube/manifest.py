"""The build manifest: what a cube was built from and which blocks are durable.

It lives in the cube, in the Zarr group ``_build`` (xarray ignores it): ``manifest.json`` (recipe hash, per-part
hashes, sample-list hash), ``samples.txt`` (the sample ids, in cube order) and one JSON entry per finished block in
``blocks/`` (missing data with reasons, statistics, timing). Every file is written atomically (temp file, fsync,
rename), and a block's entry only after its data.

In a cube on object storage (a transactional store, see :mod:`eo_dataset.cube.storage`) nothing can be renamed and
only Zarr nodes exist: there the same records are Zarr attributes (``_build`` holds the manifest as JSON text, each
block entry is a group ``_build/<sub>/<index>``), the sample ids are the cube's ``sample_id``, and atomicity comes
from the store's commits. Every function here takes either a folder or such a Zarr store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import zarr

from eo_dataset.spec.recipe import Recipe

MANIFEST_DIR = "_build"
Where = str | os.PathLike[str] | zarr.abc.store.Store  # a cube folder, or a Zarr store holding the cube


def is_folder(where: Where) -> bool:
    """True for a local cube folder, False for a Zarr store object (a cube on object storage)."""
    return isinstance(where, str | os.PathLike)


def location(where: Where) -> Path | zarr.abc.store.Store:
    """A folder as a :class:`~pathlib.Path`; a store as it is."""
    return Path(where) if is_folder(where) else where


def _group(store: zarr.abc.store.Store, path: str = "") -> zarr.Group | None:
    """The group at ``path`` of a store (None if there is none)."""
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
        return root[path] if path else root  # type: ignore[return-value]
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None


def _entries_group(store: zarr.abc.store.Store, sub: str) -> zarr.Group:
    root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    return root.require_group(MANIFEST_DIR).require_group(sub)


def atomic_write(path: Path, text: str | Iterable[str]) -> None:
    """Write a text file (a string, or pieces written one after another) so that a crash leaves the old file or the
    new one, never a torn one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.writelines([text] if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _digest(data: Any) -> str:
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hash_ids(ids: Sequence[str], chunk: int = 1 << 16) -> str:
    """Hash of a sample list (order matters: it is the cube's order): of the ids joined by newlines, fed a chunk at
    a time (a planet's list is never one string)."""
    h = hashlib.sha256()
    for start in range(0, len(ids), chunk):
        h.update((("\n" if start else "") + "\n".join(ids[start:start + chunk])).encode())
    return h.hexdigest()[:16]


def part_hashes(recipe: Recipe) -> dict[str, str]:
    """Hashes of the recipe's parts: ``_base`` (grid, time, build, ...) and one per modality.

    They tell which modalities differ between a cube and a recipe, so one modality can be rebuilt alone.
    """
    data = {k: v for k, v in recipe.resolved().items() if k != "sources"}
    modalities = data.pop("modalities")
    return {"_base": _digest(data)} | {name: _digest(spec) for name, spec in modalities.items()}


def manifest_path(path: Path) -> Path:
    """``<cube>/_build/manifest.json``."""
    return Path(path) / MANIFEST_DIR / "manifest.json"


def read_manifest(path: Where) -> dict[str, Any] | None:
    """The manifest, or None if the path holds none."""
    if not is_folder(path):
        group = _group(path, MANIFEST_DIR)
        return None if group is None or "manifest" not in group.attrs else json.loads(group.attrs["manifest"])
    p = manifest_path(Path(path))
    return json.loads(p.read_text()) if p.is_file() else None


def write_manifest(path: Where, recipe: Recipe, ids: Sequence[str], **extra: Any) -> dict[str, Any]:
    """Write the sample list, then the manifest describing ``recipe`` and ``ids`` (plus ``extra`` keys)."""
    from eo_dataset._version import __version__

    manifest = {"recipe_hash": recipe.hash, "parts": part_hashes(recipe), "samples_hash": hash_ids(ids),
                "n_samples": len(ids), "shard_samples": recipe.build.shard_samples,
                "eo_dataset_version": __version__, **extra}
    if not is_folder(path):  # the ids are the cube's sample_id; JSON text, since Zarr attributes refuse NaN
        root = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
        root.require_group(MANIFEST_DIR).attrs["manifest"] = json.dumps(manifest)
        return manifest
    atomic_write(Path(path) / MANIFEST_DIR / "samples.txt", _lines(ids))
    atomic_write(manifest_path(Path(path)), json.dumps(manifest, indent=1))
    return manifest


def _lines(ids: Sequence[str], chunk: int = 1 << 16) -> Iterator[str]:
    """The ids one per line, a chunk of lines at a time (no id: one empty line)."""
    if not len(ids):
        yield "\n"
    for start in range(0, len(ids), chunk):
        yield "".join(f"{i}\n" for i in ids[start:start + chunk])


def read_ids(path: Where) -> list[str]:
    """The cube's sample ids, in order."""
    if not is_folder(path):
        return [str(i) for i in zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=False)["sample_id"][:]]
    return (Path(path) / MANIFEST_DIR / "samples.txt").read_text().split()


def done_blocks(path: Where, sub: str = "blocks") -> set[int]:
    """Indices of blocks whose data is durable in the cube (``sub``: ``blocks`` or an update's folder)."""
    if not is_folder(path):
        group = _group(path, f"{MANIFEST_DIR}/{sub}")
        return set() if group is None else {int(k) for k in group.group_keys()}
    folder = Path(path) / MANIFEST_DIR / sub
    return {int(p.stem) for p in folder.glob("*.json")} if folder.is_dir() else set()


def block_reports(path: Where, sub: str = "blocks") -> dict[int, dict[str, Any]]:
    """The entry of every finished block (sample -> modality -> reason for what is missing, stats, timing)."""
    return dict(iter_block_reports(path, sub))


def iter_block_reports(path: Where, sub: str = "blocks") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, entry)`` of every finished block in block order, one entry read at a time: a planet cube's 70,000
    entries (about 1 GB as Python objects) are never all in memory (see :func:`block_reports` for everything)."""
    if not is_folder(path):
        group = _group(path, f"{MANIFEST_DIR}/{sub}")
        for key in sorted(group.group_keys()) if group is not None else ():
            yield int(key), json.loads(group[key].attrs["entry"])
        return
    folder = Path(path) / MANIFEST_DIR / sub
    for p in sorted(folder.glob("*.json")):
        yield int(p.stem), json.loads(p.read_text())


def mark_done(path: Where, index: int, entry: dict[str, Any], sub: str = "blocks") -> None:
    """Record a block as done (call only once its data is written)."""
    if not is_folder(path):
        _entries_group(path, sub).create_group(f"{index:06d}", attributes={"entry": json.dumps(entry)},
                                                overwrite=True)
        return
    folder = Path(path) / MANIFEST_DIR / sub
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{index:06d}.json", json.dumps(entry))


def unmark(path: Where, index: int, sub: str = "blocks") -> None:
    """Forget that a block is done (it is to be written again)."""
    if not is_folder(path):
        group = _group(path, f"{MANIFEST_DIR}/{sub}")
        if group is not None and f"{index:06d}" in group:
            del _entries_group(path, sub)[f"{index:06d}"]
        return
    (Path(path) / MANIFEST_DIR / sub / f"{index:06d}.json").unlink(missing_ok=True)


def remove_entries(path: Where, sub: str) -> None:
    """Delete every entry of ``sub`` (an update's, once folded into the build's)."""
    if not is_folder(path):
        if _group(path, f"{MANIFEST_DIR}/{sub}") is not None:
            del zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)[f"{MANIFEST_DIR}/{sub}"]
        return
    shutil.rmtree(Path(path) / MANIFEST_DIR / sub, ignore_errors=True)
