"""The build manifest: what a cube was built from and which blocks are durable.

It lives in the cube, in the Zarr group ``_build`` (xarray ignores it): ``manifest.json`` (recipe hash, per-part
hashes, sample-list hash), ``samples.txt`` (the sample ids, in cube order) and one JSON entry per finished block in
``blocks/`` (missing data with reasons, statistics, timing). Every file is written atomically (temp file, fsync,
rename), and a block's entry only after its data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eo_dataset.spec.recipe import Recipe

MANIFEST_DIR = "_build"


def atomic_write(path: Path, text: str) -> None:
    """Write a text file so that a crash leaves the old file or the new one, never a torn one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _digest(data: Any) -> str:
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hash_ids(ids: Sequence[str]) -> str:
    """Hash of a sample list (order matters: it is the cube's order)."""
    return _digest("\n".join(ids))


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


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest, or None if the path holds none."""
    p = manifest_path(Path(path))
    return json.loads(p.read_text()) if p.is_file() else None


def write_manifest(path: str | Path, recipe: Recipe, ids: Sequence[str], **extra: Any) -> dict[str, Any]:
    """Write the sample list, then the manifest describing ``recipe`` and ``ids`` (plus ``extra`` keys)."""
    from eo_dataset._version import __version__

    folder = Path(path) / MANIFEST_DIR
    atomic_write(folder / "samples.txt", "\n".join(ids) + "\n")
    manifest = {"recipe_hash": recipe.hash, "parts": part_hashes(recipe), "samples_hash": hash_ids(ids),
                "n_samples": len(ids), "shard_samples": recipe.build.shard_samples,
                "eo_dataset_version": __version__, **extra}
    atomic_write(manifest_path(Path(path)), json.dumps(manifest, indent=1))
    return manifest


def read_ids(path: str | Path) -> list[str]:
    """The cube's sample ids, in order."""
    return (Path(path) / MANIFEST_DIR / "samples.txt").read_text().split()


def done_blocks(path: str | Path, sub: str = "blocks") -> set[int]:
    """Indices of blocks whose data is durable in the cube (``sub``: ``blocks`` or an update's folder)."""
    folder = Path(path) / MANIFEST_DIR / sub
    return {int(p.stem) for p in folder.glob("*.json")} if folder.is_dir() else set()


def block_reports(path: str | Path, sub: str = "blocks") -> dict[int, dict[str, Any]]:
    """The entry of every finished block (sample -> modality -> reason for what is missing, stats, timing)."""
    folder = Path(path) / MANIFEST_DIR / sub
    return {int(p.stem): json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def mark_done(path: str | Path, index: int, entry: dict[str, Any], sub: str = "blocks") -> None:
    """Record a block as done (call only once its data is written)."""
    folder = Path(path) / MANIFEST_DIR / sub
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{index:06d}.json", json.dumps(entry))
