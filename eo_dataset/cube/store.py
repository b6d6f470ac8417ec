"""The Zarr v3 cube: layout, creation, region writes of blocks, and the build manifest.

Layout (see ``docs/cube.md``): dim ``sample``; one inner chunk per sample, one shard per build block, so a block
writes whole shards and no two blocks ever write the same object. Arrays are created up front from the recipe;
each block is then written as a region. The manifest (``<cube>/_build/``) records which blocks are durable.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from pyproj import Transformer

from eo_dataset._version import __version__
from eo_dataset.cube.block import AlignedBlock
from eo_dataset.cube.manifest import (
    MANIFEST_DIR,
    Where,
    hash_ids,
    is_folder,
    iter_block_reports,
    part_hashes,
    read_manifest,
    write_manifest,
)
from eo_dataset.cube.schema import CubeMeta, ModalityMeta
from eo_dataset.cube.stats import merge
from eo_dataset.errors import CubeError
from eo_dataset.outputs import check_output, check_replaceable, remove_ours, zarr_owned
from eo_dataset.spec.grid import Grid, Sample
from eo_dataset.spec.recipe import BuildSpec, ModalitySpec, Recipe

CUBE = "cube built by eo-dataset"
CUBE_MARKER = f"{MANIFEST_DIR}/manifest.json"
# variable-length strings, marked so for xarray, which then writes a lazy array of them without computing it
STRINGS = np.dtype("O", metadata={"element_type": str})
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


def sample_ids(samples: Sequence[Sample], chunk: int = 1 << 16) -> np.ndarray:
    """Every sample's id, in order, as one array of strings: from a sample list's own ``ids()`` when it has one (a
    Parquet list reads its column, no :class:`~eo_dataset.spec.grid.Sample` made), else chunk by chunk."""
    ids = getattr(samples, "ids", None)
    if callable(ids):
        listed = ids()
        if len(listed) == len(samples) and (not listed or (listed[0], listed[-1]) == (samples[0].id, samples[-1].id)):
            out = np.empty(len(listed), dtype=object)
            out[:] = listed
            return out
    out = np.empty(len(samples), dtype=object)
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        out[start:start + len(part)] = [s.id for s in part]
    return out


def check_unique(ids: np.ndarray) -> None:
    """Raise unless every id appears once (a hash table of the ids, freed on return: no set of 9M strings).

    Raises:
        CubeError: an id appears more than once (the message names one).
    """
    index = pd.Index(ids)
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise CubeError(f"the sample list has duplicate ids (e.g. {dup!r}); each sample may appear once")


def sample_coords(samples: Sequence[Sample], chunk: int = 1 << 16,
                  ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The cube's per-sample coordinates (``sample_id``, centre ``lon``/``lat`` as
    :attr:`~eo_dataset.spec.grid.Sample.center_lonlat`, ``epsg``, ``x0``, ``y0``), in one pass chunk by chunk with one
    transform per UTM zone and chunk: a planet's sample list never exists as Python objects all at once. ``ids``:
    the ids if they are known already (:func:`sample_ids`), used as they are."""
    n = len(samples)
    out = {"sample_id": np.empty(n, dtype=object) if ids is None else ids, "lon": np.empty(n), "lat": np.empty(n),
           "epsg": np.empty(n, dtype="int32"), "x0": np.empty(n), "y0": np.empty(n)}
    for start in range(0, n, chunk):
        part = samples[start:start + chunk]
        sel = slice(start, start + len(part))
        if ids is None:
            out["sample_id"][sel] = [s.id for s in part]
        epsg, x0, y0 = (np.array([getattr(s, k) for s in part], dtype=out[k].dtype) for k in ("epsg", "x0", "y0"))
        size = np.array([s.size_m for s in part])
        out["epsg"][sel], out["x0"][sel], out["y0"][sel] = epsg, x0, y0
        lon, lat = np.empty(len(part)), np.empty(len(part))
        for code in np.unique(epsg).tolist():  # the same arithmetic as Sample.center_lonlat, on arrays
            z = epsg == code
            cx, cy = (x0[z] + (x0[z] + size[z])) / 2, ((y0[z] - size[z]) + y0[z]) / 2
            lon[z], lat[z] = Transformer.from_crs(code, 4326, always_xy=True).transform(cx, cy)
        out["lon"][sel], out["lat"][sel] = (lon + 180) % 360 - 180, lat
    return out


def template(recipe: Recipe, samples: Sequence[Sample],
             ids: np.ndarray | None = None) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The cube's arrays as a lazy dataset (the per-sample coordinates computed, everything a block writes lazy) and
    their Zarr encoding; ``ids``: the sample ids if known already (:func:`sample_ids`)."""
    n = len(samples)
    b = recipe.build.shard_samples
    coords: dict[str, Any] = {k: ("sample", v) for k, v in sample_coords(samples, ids=ids).items()}
    coords["anchor_time"] = ("sample", np.full(n, np.datetime64("NaT", "ns")))
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
        # lazy arrays of one dask chunk: to_zarr(compute=False) only creates them, and a dask chunk per shard would
        # be a graph of 70,000 tasks per array at 9M samples, built and optimised for nothing
        data_vars[name] = (dims, da.zeros((n, nb, h, w), dtype=m.storage_dtype, chunks=-1),
                           modality_attrs(name, m))
        data_vars[f"{name}_valid"] = (("sample", dims[2], dims[3]), da.zeros((n, h, w), dtype=bool,
                                                                              chunks=-1))
        data_vars[f"{name}_available"] = ("sample", da.zeros(n, dtype=bool, chunks=-1))
        data_vars[f"{name}_time"] = ("sample", da.full(n, np.datetime64("NaT", "ns"), chunks=-1))
        # lazy too: blocks write it, and chunks of "" (the fill value) were never stored; as a numpy array, creating
        # the cube went through every one of them (70,313 per modality at 9M samples)
        data_vars[f"{name}_item"] = ("sample", da.full(n, "", dtype=STRINGS, chunks=-1))
        encoding[name] = {"chunks": (1, nb, h, w), "shards": (b, nb, h, w), "compressors": codecs}
        encoding[f"{name}_valid"] = {"chunks": (1, h, w), "shards": (b, h, w), "compressors": codecs}
        encoding[f"{name}_available"] = {"chunks": (b,)}
        encoding[f"{name}_time"] = {"chunks": (b,), **TIME_ENCODING}
        encoding[f"{name}_item"] = {"chunks": (b,)}
    if recipe.captions is not None:
        data_vars["caption"] = ("sample", da.full(n, "", dtype=STRINGS, chunks=-1),
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


def create_or_open(path: Where, recipe: Recipe, samples: Sequence[Sample], overwrite: bool = False,
                   name: str | None = None) -> bool:
    """Create the cube's arrays (no data yet) and manifest, or check that an existing cube is this build's.

    ``path`` is a folder, or a transactional Zarr store (:mod:`eo_dataset.cube.storage`; ``name``: its URL, for
    messages) whose commit makes the creation atomic.

    Returns:
        True if a build of the same recipe and samples was found (resume), False if the cube was created.

    Raises:
        CubeError: the path holds a cube of another recipe or sample list, or something that is not a cube.
    """
    ids = sample_ids(samples)  # once, as one array: the check, the manifest and the sample_id coordinate share it
    check_unique(ids)
    if not is_folder(path):
        return _create_or_open_store(path, recipe, samples, ids, overwrite, name or "the cube")
    state = check_output(path, what=CUBE, marker=CUBE_MARKER)
    path = Path(path)
    if state == "ours" and not overwrite:
        manifest = read_manifest(path)
        check_same_build(str(path), manifest, recipe, ids)
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
    ds, encoding = template(recipe, samples, ids)
    with warnings.catch_warnings(), zarr.config.set(_batched(recipe)):
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


def check_same_build(name: str, manifest: dict[str, Any], recipe: Recipe, ids: Sequence[str]) -> None:
    """Raise unless the cube whose manifest this is was built (or is being built) from ``recipe`` and ``ids``.

    Raises:
        CubeError: an update is unfinished, or the recipe or sample list differs (the message says what to pass).
    """
    if manifest.get("updating"):
        raise CubeError(f"{name}: an update of {sorted(manifest['updating'])} is unfinished; rerun it with "
                        f"--update {','.join(sorted(manifest['updating']))}")
    if manifest["recipe_hash"] != recipe.hash:
        differ = sorted(k for k, v in part_hashes(recipe).items() if manifest.get("parts", {}).get(k) != v)
        hint = (f"; to rebuild just those modalities: --update {','.join(differ)}"
                if differ and "_base" not in differ else "")
        raise CubeError(f"{name} was built from another recipe (hash {manifest['recipe_hash']}, now "
                        f"{recipe.hash}; differs in {differ}){hint}; or pass --overwrite to rebuild it")
    if manifest["samples_hash"] != hash_ids(ids):
        raise CubeError(f"{name} was built for another sample list ({manifest['n_samples']} samples, now "
                        f"{len(ids)}); pass --append to add samples, --overwrite to rebuild, or another --out")


def _create_or_open_store(store: Any, recipe: Recipe, samples: Sequence[Sample], ids: np.ndarray, overwrite: bool,
                          name: str) -> bool:
    """:func:`create_or_open` in a transactional store: no temporary folder, the caller's commit is the switch."""
    manifest = read_manifest(store)
    if manifest is not None and not overwrite:
        check_same_build(name, manifest, recipe, ids)
        return True
    ds, encoding = template(recipe, samples, ids)
    with warnings.catch_warnings(), zarr.config.set(_batched(recipe)):
        warnings.simplefilter("ignore", category=UserWarning)
        ds.to_zarr(store, mode="w", compute=False, zarr_format=3, encoding=encoding, consolidated=False)
    root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    root.create_group(MANIFEST_DIR, attributes={"role": "eo-dataset build manifest"}).create_group("blocks")
    write_manifest(store, recipe, ids)
    return False


def _batched(recipe: Recipe) -> dict[str, Any]:
    """zarr's configuration while creating a cube: the per-sample coordinates' chunks (one per block: 70,313 per
    array at 9M samples) encoded 256 at a time instead of one by one through zarr's event loop (the same bytes)."""
    return {"codec_pipeline.batch_size": 256}


def zarr_target(path: Where) -> Any:
    """What zarr opens: a folder as a string, a store as it is."""
    return str(path) if is_folder(path) else path


def _remove_partial_writes(path: Path) -> None:
    """Delete the temporary files of writes a crash interrupted (Zarr writes ``<key>.<uuid>.partial`` + rename)."""
    for folder, _, files in os.walk(path):  # 1.5 x faster than Path.rglob over a planet cube's ~10^6 folders
        for name in files:
            if name.endswith(".partial"):
                Path(folder, name).unlink(missing_ok=True)


def block_slices(n_samples: int, block: int) -> list[slice]:
    """Sample ranges of the build blocks (one shard each)."""
    return [slice(a, min(a + block, n_samples)) for a in range(0, n_samples, block)]


def write_block(path: Where, recipe: Recipe, region: slice, block: AlignedBlock) -> None:
    """Write one block's arrays (the modalities it holds) as a region of the cube.

    The pixel and valid-mask arrays (one shard per block, an inner chunk per sample) are written with zarr directly
    (:func:`write_shards`); the per-sample arrays through xarray, which encodes times and strings as the template
    declared them. Mark the block done (:func:`eo_dataset.cube.manifest.mark_done`) only after this returns.
    """
    data_vars = {}
    shards = {}
    for name in recipe.modalities:
        if name not in block.arrays:
            continue
        shards[name] = block.arrays[name]
        shards[f"{name}_valid"] = block.arrays[f"{name}_valid"]
        for suffix in ("available", "time", "item"):
            data_vars[f"{name}_{suffix}"] = ("sample", block.arrays[f"{name}_{suffix}"])
    for name in ("anchor_time", "caption"):
        if name in block.arrays:
            data_vars[name] = ("sample", block.arrays[name])
    write_shards(path, region, shards)
    if data_vars:
        xr.Dataset(data_vars).to_zarr(path, region={"sample": region}, zarr_format=3, consolidated=False)


def write_shards(path: Where, region: slice, arrays: dict[str, np.ndarray]) -> None:
    """Write numeric per-sample arrays of the cube (its pixel and valid-mask arrays) at ``region`` of ``sample``.

    zarr-python's codec pipeline runs every inner chunk of a shard through its event loop, one by one (a block of 128
    samples and 8 such arrays: 1,024 chunks, most of a block's write; ``benchmarks/controlplane.py --block``); so
    the chunks of a shard are encoded in one batch, and a local cube's shards by zarrs' Rust pipeline when it is
    installed (``pip install 'eo-dataset[torch]'``) and writes the same bytes (:func:`_zarrs_writes_same`). zarr's
    configuration is set for these arrays only and restored right after.

    Raises:
        CubeError: an array's shape does not match the cube's at ``region``.
    """
    if not arrays:
        return
    batch = {"codec_pipeline.batch_size": max(region.stop - region.start, 1)}
    use_zarrs = is_folder(path) and "://" not in str(path) and _has_zarrs()
    group = zarr.open_group(zarr_target(path), mode="r+", zarr_format=3, use_consolidated=False)
    targets = {}
    with _CONFIG_LOCK:  # zarr's configuration is global: the threads of one worker pick their pipelines in turn
        for name, values in arrays.items():
            target = group[name]
            expected = (len(range(*region.indices(target.shape[0]))), *target.shape[1:])
            if values.shape != expected:
                raise CubeError(f"block array {name!r} has shape {values.shape}, expected {expected} for samples "
                                f"{region.start}..{region.stop}; the block does not match the cube's layout")
            if use_zarrs and values.dtype.kind in "biuf" and _zarrs_writes_same(target):
                # the pipeline is picked when an array object is made, here without a call into zarr's event loop (which
                # would size zarr's own thread pool from this configuration for good). One thread: zarrs then writes a
                # shard's chunks in zarr's order, byte for byte what zarr-python writes (tests/eo_dataset/cube)
                with zarr.config.set(batch | {"codec_pipeline.path": ZARRS_PIPELINE, "threading.max_workers": 1}):
                    target = zarr.Array(zarr.AsyncArray(metadata=target.metadata, store_path=target.store_path))
            targets[name] = target
    with zarr.config.set(batch):  # zarr-python's pipeline: a shard's chunks in one batch, not one by one
        for name, values in arrays.items():
            targets[name][region] = values


ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
_CONFIG_LOCK = threading.Lock()


def _zarrs_writes_same(array: zarr.Array) -> bool:
    """Whether zarrs writes this array's shards byte for byte as zarr-python does: shards of uncompressed or Blosc
    chunks (its zstd frames differ from numcodecs'; checked by tests/eo_dataset/cube/test_write_shards.py)."""
    codecs = array.metadata.codecs
    return (len(codecs) == 1 and isinstance(codecs[0], zarr.codecs.ShardingCodec)
            and all(isinstance(c, zarr.codecs.BytesCodec | zarr.codecs.BloscCodec) for c in codecs[0].codecs))


@functools.cache
def _has_zarrs() -> bool:
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return False
    return True


def grow(path: Where, samples: Sequence[Sample], n_old: int) -> None:
    """Extend every per-sample array to ``len(samples)`` and write the new samples' coordinates (idempotent)."""
    n = len(samples)
    group = zarr.open_group(zarr_target(path), mode="r+", use_consolidated=False)
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


def finalize(path: Where) -> None:
    """Store the merged normalisation statistics (root attr ``stats``) and consolidate metadata.

    Every block is written by now, so temporary files left by writes that died with their worker (a block that
    was then redone elsewhere) are removed too.
    """
    if is_folder(path) and "://" not in str(path):
        _remove_partial_writes(Path(path))
    stats = merge(entry["stats"] for _, entry in iter_block_reports(path))  # one entry in memory at a time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        group = zarr.open_group(zarr_target(path), mode="r+", use_consolidated=False)
        group.attrs["stats"] = stats
        if is_folder(path):  # a transactional store lists its nodes from its snapshot: nothing to consolidate
            zarr.consolidate_metadata(str(path))


def open_cube(path: Where) -> xr.Dataset:
    """Open a cube (``xr.open_zarr`` with the cube's conventions): a folder, a URL, or a Zarr store (for a cube on
    object storage, :func:`eo_dataset.cube.storage.open_cube_at` opens a version of it)."""
    path = Path(path) if is_folder(path) and "://" not in str(path) else path
    if isinstance(path, Path) and not (path / "zarr.json").is_file():
        raise CubeError(f"{path} is not a Zarr v3 store (no zarr.json); build one with 'eo-dataset build'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        if not is_folder(path):
            return xr.open_zarr(path, zarr_format=3, consolidated=False)
        return xr.open_zarr(path, zarr_format=3)
