"""The Zarr v3 cube: layout, creation, region writes of blocks, and the build manifest.

Layout (see ``docs/cube.md``): dim ``sample``; one inner chunk per sample, one shard per build block, so a block
writes whole shards and no two blocks ever write the same object. Arrays are created up front from the recipe;
each block is then written as a region. The manifest (``<cube>/_build/``) records which blocks are durable.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from eo_dataset._version import __version__
from eo_dataset.cube.block import AlignedBlock
from eo_dataset.cube.manifest import MANIFEST_DIR, block_reports, hash_ids, part_hashes, read_manifest, write_manifest
from eo_dataset.cube.schema import CubeMeta, ModalityMeta
from eo_dataset.cube.stats import merge
from eo_dataset.errors import CubeError
from eo_dataset.outputs import check_output, check_replaceable, remove_ours, zarr_owned
from eo_dataset.spec.grid import Grid, Sample
from eo_dataset.spec.recipe import BuildSpec, ModalitySpec, Recipe

CUBE = "cube built by eo-dataset"
CUBE_MARKER = f"{MANIFEST_DIR}/manifest.json"
TIME_ENCODING = {"units": "microseconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}


def compressors(build: BuildSpec) -> list[Any]:
    """The Zarr compressors of the pixel and valid-mask arrays for ``build.codec`` (unset: zstd).

    The bundled recipes use Blosc LZ4 with byte shuffle: as small as zstd(3) on the demo cube and the cheapest to
    decode per loaded sample (``benchmarks/load.py --sweep``, docs/loading.md).
    """
    codec = build.codec or "zstd"
    if codec == "none":
        return []
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=build.zstd_level)]
    cname = codec.removeprefix("blosc-")
    level = 5 if cname == "lz4" else build.zstd_level
    return [zarr.codecs.BloscCodec(cname=cname, clevel=level, shuffle="shuffle")]


def res_tag(resolution_m: float) -> str:
    """Dimension suffix of a resolution: 10 -> ``10``, 2.5 -> ``2p5``."""
    return f"{resolution_m:g}".replace(".", "p")


def modality_dims(name: str, m: ModalitySpec) -> tuple[str, str, str, str]:
    """Dims of a modality's data variable."""
    r = res_tag(m.resolution_m)
    return ("sample", f"{name}_band", f"y_{r}", f"x_{r}")


def modality_attrs(name: str, m: ModalitySpec) -> dict[str, Any]:
    """Per-modality attrs (:class:`~eo_dataset.cube.schema.ModalityMeta`): what a user needs to turn stored numbers
    into physical ones, what they mean, and the licence."""
    return ModalityMeta.from_spec(name, m).to_attrs()


def template(recipe: Recipe, samples: Sequence[Sample]) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    n = len(samples)
    b = recipe.build.shard_samples
    lonlat = np.array([s.center_lonlat for s in samples], dtype="float64").reshape(n, 2)
    coords: dict[str, Any] = {
        "sample_id": ("sample", np.array([s.id for s in samples], dtype=object)),
        "lon": ("sample", lonlat[:, 0]),
        "lat": ("sample", lonlat[:, 1]),
        "epsg": ("sample", np.array([s.epsg for s in samples], dtype="int32")),
        "x0": ("sample", np.array([s.x0 for s in samples], dtype="float64")),
        "y0": ("sample", np.array([s.y0 for s in samples], dtype="float64")),
        "anchor_time": ("sample", np.full(n, np.datetime64("NaT", "ns"))),
    }
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {k: {"chunks": (b,)} for k in coords}
    encoding["anchor_time"].update(TIME_ENCODING)
    codecs = compressors(recipe.build)
    for name, m in recipe.modalities.items():
        dims = modality_dims(name, m)
        h, w = samples[0].shape(m.resolution_m) if samples else (0, 0)
        nb = len(m.band_specs)
        coords[f"{name}_band"] = (f"{name}_band", np.array(m.band_names, dtype=object))
        encoding[f"{name}_band"] = {}
        data_vars[name] = (dims, da.zeros((n, nb, h, w), dtype=m.storage_dtype, chunks=(b, nb, h, w)),
                           modality_attrs(name, m))
        data_vars[f"{name}_valid"] = (("sample", dims[2], dims[3]), da.zeros((n, h, w), dtype=bool,
                                                                              chunks=(b, h, w)))
        data_vars[f"{name}_available"] = ("sample", da.zeros(n, dtype=bool, chunks=b))
        data_vars[f"{name}_time"] = ("sample", da.full(n, np.datetime64("NaT", "ns"), chunks=b))
        data_vars[f"{name}_item"] = ("sample", np.full(n, "", dtype=object))  # strings: small, written eagerly
        encoding[name] = {"chunks": (1, nb, h, w), "shards": (b, nb, h, w), "compressors": codecs}
        encoding[f"{name}_valid"] = {"chunks": (1, h, w), "shards": (b, h, w), "compressors": codecs}
        encoding[f"{name}_available"] = {"chunks": (b,)}
        encoding[f"{name}_time"] = {"chunks": (b,), **TIME_ENCODING}
        encoding[f"{name}_item"] = {"chunks": (b,)}
    if recipe.captions is not None:
        data_vars["caption"] = ("sample", np.full(n, "", dtype=object),
                                {"description": "generated from the sample's aligned data (eo_dataset.engine.captions)",
                                 "seed": recipe.captions.seed})
        encoding["caption"] = {"chunks": (b,)}
    meta = CubeMeta(title=f"4M4EO cube: {recipe.name}", recipe=_public(recipe.resolved()), recipe_hash=recipe.hash,
                    version=__version__, grid=Grid(recipe.grid.spec()).describe(),
                    modalities={name: ModalityMeta.from_spec(name, m) for name, m in recipe.modalities.items()},
                    anchor=recipe.time.anchor)
    attrs = meta.to_attrs()
    return xr.Dataset(data_vars, coords=coords, attrs=attrs), encoding


def _public(resolved: dict[str, Any]) -> dict[str, Any]:
    """The recipe for the attrs: source hrefs without query strings, so no signed URL or token is ever stored."""
    for source in resolved.get("sources", {}).values():
        source["href"] = source["href"].split("?", 1)[0]
    return resolved


def create_or_open(path: str | Path, recipe: Recipe, samples: Sequence[Sample], overwrite: bool = False) -> bool:
    """Create the cube's arrays (no data yet) and manifest, or check that an existing cube is this build's.

    Returns:
        True if a build of the same recipe and samples was found (resume), False if the cube was created.

    Raises:
        CubeError: the path holds a cube of another recipe or sample list, or something that is not a cube.
    """
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise CubeError("the sample list has duplicate ids; each sample may appear once")
    state = check_output(path, what=CUBE, marker=CUBE_MARKER)
    path = Path(path)
    if state == "ours" and not overwrite:
        manifest = read_manifest(path)
        if manifest.get("updating"):
            raise CubeError(f"{path}: an update of {sorted(manifest['updating'])} is unfinished; rerun it with "
                            f"--update {','.join(sorted(manifest['updating']))}")
        if manifest["recipe_hash"] != recipe.hash:
            differ = sorted(k for k, v in part_hashes(recipe).items() if manifest.get("parts", {}).get(k) != v)
            hint = (f"; to rebuild just those modalities: --update {','.join(differ)}"
                    if differ and "_base" not in differ else "")
            raise CubeError(f"{path} was built from another recipe (hash {manifest['recipe_hash']}, now "
                            f"{recipe.hash}; differs in {differ}){hint}; or pass --overwrite to rebuild it")
        if manifest["samples_hash"] != hash_ids(ids):
            raise CubeError(f"{path} was built for another sample list ({manifest['n_samples']} samples, now "
                            f"{len(ids)}); pass --append to add samples, --overwrite to rebuild, or another --out")
        _remove_partial_writes(path)
        if manifest.get("append_from") is not None:  # an append was interrupted: finish growing the arrays
            grow(path, samples, manifest["append_from"])
            write_manifest(path, recipe, ids)
        return True
    owned = zarr_owned([MANIFEST_DIR])
    if state == "ours":  # --overwrite: refuse before writing anything if the folder holds files that are not ours
        check_replaceable(path, what=CUBE, owned=owned)
    # create next to the target and rename: a crash leaves either no cube or a complete empty one, never half
    tmp = path.with_name(f".{path.name}.creating")
    if tmp.exists():
        remove_ours(tmp, what=CUBE, owned=owned, option="its temporary folder")
    ds, encoding = template(recipe, samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        ds.to_zarr(tmp, mode="w-", compute=False, zarr_format=3, encoding=encoding, consolidated=False)
    # the manifest lives in a Zarr group of its own, so Zarr tools see a valid hierarchy and xarray ignores it
    zarr.open_group(str(tmp), mode="r+").create_group(MANIFEST_DIR, attributes={"role": "eo-dataset build manifest"})
    (tmp / MANIFEST_DIR / "blocks").mkdir(parents=True)
    write_manifest(tmp, recipe, ids)
    if state == "ours":
        remove_ours(path, what=CUBE, owned=owned)
    elif state == "empty":
        path.rmdir()
    os.rename(tmp, path)
    return False


def _remove_partial_writes(path: Path) -> None:
    """Delete the temporary files of writes a crash interrupted (Zarr writes ``<key>.<uuid>.partial`` + rename)."""
    for p in path.rglob("*.partial"):
        p.unlink(missing_ok=True)


def block_slices(n_samples: int, block: int) -> list[slice]:
    """Sample ranges of the build blocks (one shard each)."""
    return [slice(a, min(a + block, n_samples)) for a in range(0, n_samples, block)]


def write_block(path: str | Path, recipe: Recipe, region: slice, block: AlignedBlock) -> None:
    """Write one block's arrays (the modalities it holds) as a region of the cube.

    Mark the block done (:func:`eo_dataset.cube.manifest.mark_done`) only after this returns.
    """
    data_vars = {}
    for name, m in recipe.modalities.items():
        if name not in block.arrays:
            continue
        dims = modality_dims(name, m)
        data_vars[name] = (dims, block.arrays[name])
        data_vars[f"{name}_valid"] = (("sample", dims[2], dims[3]), block.arrays[f"{name}_valid"])
        for suffix in ("available", "time", "item"):
            data_vars[f"{name}_{suffix}"] = ("sample", block.arrays[f"{name}_{suffix}"])
    for name in ("anchor_time", "caption"):
        if name in block.arrays:
            data_vars[name] = ("sample", block.arrays[name])
    xr.Dataset(data_vars).to_zarr(path, region={"sample": region}, zarr_format=3, consolidated=False)


def grow(path: str | Path, samples: Sequence[Sample], n_old: int) -> None:
    """Extend every per-sample array to ``len(samples)`` and write the new samples' coordinates (idempotent)."""
    n = len(samples)
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for _, arr in group.arrays():
        names = arr.metadata.dimension_names
        if names and names[0] == "sample" and arr.shape[0] < n:
            arr.resize((n, *arr.shape[1:]))
    new = samples[n_old:]
    lonlat = np.array([s.center_lonlat for s in new], dtype="float64").reshape(len(new), 2)
    coords = xr.Dataset({
        "sample_id": ("sample", np.array([s.id for s in new], dtype=object)),
        "lon": ("sample", lonlat[:, 0]), "lat": ("sample", lonlat[:, 1]),
        "epsg": ("sample", np.array([s.epsg for s in new], dtype="int32")),
        "x0": ("sample", np.array([s.x0 for s in new], dtype="float64")),
        "y0": ("sample", np.array([s.y0 for s in new], dtype="float64")),
    })
    coords.to_zarr(path, region={"sample": slice(n_old, n)}, zarr_format=3, consolidated=False, safe_chunks=False)


def finalize(path: str | Path) -> None:
    """Store the merged normalisation statistics (root attr ``stats``) and consolidate metadata.

    Every block is written by now, so temporary files left by writes that died with their worker (a block that
    was then redone elsewhere) are removed too.
    """
    if "://" not in str(path):
        _remove_partial_writes(Path(path))
    reports = block_reports(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        group.attrs["stats"] = merge(reports[i]["stats"] for i in sorted(reports))
        zarr.consolidate_metadata(str(path))


def open_cube(path: str | Path) -> xr.Dataset:
    """Open a cube (``xr.open_zarr`` with the cube's conventions)."""
    path = Path(path) if "://" not in str(path) else path
    if isinstance(path, Path) and not (path / "zarr.json").is_file():
        raise CubeError(f"{path} is not a Zarr v3 store (no zarr.json); build one with 'eo-dataset build'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return xr.open_zarr(path, zarr_format=3)
