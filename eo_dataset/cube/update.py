"""Changing a built cube without rebuilding it: appending samples, rebuilding one modality.

Both are crash-safe in the same way as a build: the manifest first records the intent, every step is idempotent,
and rerunning the same command finishes the job.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import zarr

from eo_dataset.cube.manifest import (
    MANIFEST_DIR,
    Where,
    block_reports,
    location,
    mark_done,
    part_hashes,
    read_ids,
    read_manifest,
    remove_entries,
    unmark,
    write_manifest,
)
from eo_dataset.cube.store import grow, modality_attrs, template, zarr_target
from eo_dataset.errors import CubeError
from eo_dataset.spec.grid import Grid, Sample
from eo_dataset.spec.recipe import Recipe


def _manifest_or_fail(path: Where) -> dict:
    manifest = read_manifest(path)
    if manifest is None:
        raise CubeError(f"{path} is not a cube built by eo-dataset (no {MANIFEST_DIR}/manifest.json)")
    return manifest


def prepare_append(path: Where, recipe: Recipe, samples: Sequence[Sample]) -> list[Sample]:
    """Add the samples not yet in the cube after its last sample; returns the cube's full sample list.

    The last shard, if partial, is rebuilt (it gains samples); every other block stays as it is.
    """
    path = location(path)
    manifest = _manifest_or_fail(path)
    if manifest["recipe_hash"] != recipe.hash:
        raise CubeError(f"{path} was built from another recipe; appending needs the same recipe (hash "
                        f"{manifest['recipe_hash']}, now {recipe.hash})")
    ids = read_ids(path)
    known = set(ids)
    new = [s for s in samples if s.id not in known]
    grid = Grid(recipe.grid.spec())
    by_id = {s.id: s for s in samples}
    full = [by_id.get(i) or grid.sample(i) for i in ids] + new
    if not new and manifest.get("append_from") is None:
        return full
    n_old = manifest.get("append_from", len(ids))
    b = recipe.build.shard_samples
    if n_old % b:  # the last, partial block gains samples: redo it
        unmark(path, n_old // b)
    write_manifest(path, recipe, [s.id for s in full], append_from=n_old)
    grow(path, full, n_old)
    write_manifest(path, recipe, [s.id for s in full])
    return full


def update_key(modalities: Sequence[str]) -> str:
    """Folder name of an update's block entries."""
    return "update-" + "-".join(sorted(modalities))


def begin_update(path: Where, recipe: Recipe, samples: Sequence[Sample], modalities: Sequence[str]) -> None:
    """Check that only ``modalities`` differ, then (re)create their arrays, empty.

    Raises:
        CubeError: the recipe differs elsewhere, the samples differ, or the anchor modality is to be updated.
    """
    path = location(path)
    manifest = _manifest_or_fail(path)
    unknown = sorted(set(modalities) - set(recipe.modalities))
    if unknown:
        raise CubeError(f"--update names {unknown}, not modalities of the recipe ({sorted(recipe.modalities)})")
    if recipe.time.anchor in modalities:
        raise CubeError(f"the anchor modality {recipe.time.anchor!r} decides every other modality's dates; "
                        "rebuild the cube with --overwrite instead of updating it")
    stale = [m for m in recipe.derived_from(modalities) if m not in modalities]
    if stale:  # they would keep values computed from the inputs' old data
        raise CubeError(f"derived modalities {stale} read {sorted(modalities)}; update them together: --update "
                        f"{','.join([*modalities, *stale])}")
    if read_ids(path) != [s.id for s in samples]:
        raise CubeError(f"{path} holds another sample list; an update keeps the samples (use the same region)")
    if manifest.get("updating"):
        if sorted(manifest["updating"]) != sorted(modalities):
            raise CubeError(f"{path}: an update of {sorted(manifest['updating'])} is unfinished; rerun that first")
        if manifest.get("arrays_ready"):
            return
    parts, old = part_hashes(recipe), manifest.get("parts", {})
    differ = sorted(k for k in parts if old.get(k) != parts[k])
    removed = sorted(set(old) - set(parts))
    if "_base" in differ or removed or set(differ) - set(modalities):
        raise CubeError(f"the recipe differs from the cube's in {differ + removed}, not only in {sorted(modalities)};"
                        " an update rebuilds only the named modalities (pass --overwrite to rebuild everything)")
    write_manifest(path, recipe, read_ids(path), updating=sorted(modalities), arrays_ready=False,
                   previous_hash=manifest.get("previous_hash", manifest["recipe_hash"]))
    ds, encoding = template(recipe, samples)
    keep = [v for v in ds.data_vars if any(v == m or v.startswith(f"{m}_") for m in modalities)]
    sub = ds[keep]
    shared = sorted(c for c in sub.coords if c not in {f"{m}_band" for m in modalities})
    sub = sub.drop_vars(shared)  # the per-sample coordinates exist already; keep the CF link to them
    for v in sub.data_vars.values():
        v.encoding["coordinates"] = " ".join(shared)
    group = zarr.open_group(zarr_target(path), mode="r+", use_consolidated=False)
    for name in [*keep, *(f"{m}_band" for m in modalities)]:
        if name in group:
            del group[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        sub.to_zarr(path, mode="a", compute=False, zarr_format=3, consolidated=False,
                    encoding={k: v for k, v in encoding.items() if k in sub.variables})
    group.attrs.update({"recipe": ds.attrs["recipe"], "recipe_hash": recipe.hash,
                        "modalities": ds.attrs["modalities"]})
    for m in modalities:
        group[m].attrs.update(modality_attrs(m, recipe.modalities[m]))
    write_manifest(path, recipe, read_ids(path), updating=sorted(modalities), arrays_ready=True,
                   previous_hash=manifest.get("previous_hash", manifest["recipe_hash"]))


def finish_update(path: Where, recipe: Recipe, modalities: Sequence[str]) -> None:
    """Fold the update's block entries into the build's, then record the new recipe as the cube's."""
    path = location(path)
    key = update_key(modalities)
    updates = block_reports(path, key)
    for index, entry in block_reports(path).items():
        upd = updates[index]
        missing = {sid: {m: r for m, r in per.items() if m not in modalities} for sid, per in entry["missing"].items()}
        for sid, per in upd["missing"].items():
            missing.setdefault(sid, {}).update(per)
        entry["missing"] = {sid: per for sid, per in missing.items() if per}
        entry["stats"] = {**entry["stats"], **upd["stats"]}
        mark_done(path, index, entry)
    write_manifest(path, recipe, read_ids(path))
    remove_entries(path, key)
