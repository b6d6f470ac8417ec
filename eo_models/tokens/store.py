"""Tokenizing a cube: token ids per sample and modality, written to a Zarr v3 store the fusion stage reads.

``tokenize_cube(cube, [tokenizer, ...], out)`` runs one tokenizer per modality over every sample that has the
modality and writes ``out`` (``xr.open_zarr(out)`` reads it):

- dim ``sample`` (the cube's samples, in cube order); coords ``sample_id``, ``lon``, ``lat``, ``epsg``;
- per modality ``<m>``: ``<m>_tokens`` ``(sample, <m>_ty, <m>_tx)`` int32 token ids, ``-1`` where the sample does not
  have the modality; ``<m>_available`` ``(sample)`` bool;
- root attrs: ``tokenizers.<m>`` (the tokenizer's whole config, codebook size, patch, crop in base pixels, crop
  offset, token grid, a digest of the weights that make the tokens, where it was loaded from), ``cube``, its
  ``recipe_hash``, ``cube_samples`` and ``samples_hash`` (:func:`eo_dataset.cube.manifest.hash_ids` of its sample
  ids, as in the cube's manifest), ``block_samples``, ``complete`` and the package version.

Each modality is read as the largest centre crop of the sample whose side, at the modality's resolution, is a
multiple of the tokenizer's patch (264 px at 10 m: 264 px for patch 8, i.e. 33 x 33 tokens; 256 px for patch 16;
Landsat's 88 px at 30 m with patch 8: all of it, 264 base px, 11 x 11 tokens).

Work goes in blocks of ``batch_size`` samples (one Zarr chunk each). The store keeps a build record as a cube does
(:mod:`eo_dataset.cube.manifest`), in the Zarr group ``_build`` (xarray ignores it): ``_build/tokens.json``, written
last when the store is created (its block size and modalities), and per modality one JSON entry per finished block,
``_build/tokens/<m>/<block>.json`` (its samples, how many were tokenized, seconds), written atomically after the
block's data. A rerun after a crash skips finished blocks and ends with the same store; when every block is done the
metadata is consolidated and the store marked ``complete``. The record stays in the complete store:
``eo_dataset.cube.manifest.block_reports(out, sub="tokens/<m>")`` reads it.

``out`` must be new, an empty folder, or a token store (its marker: a root ``zarr.json`` with the attr
``eo_models_tokens``) of the same cube and tokenizers, which is resumed; anything else, a user's folder or another
Zarr store (a cube), is refused and left untouched (:func:`eo_dataset.outputs.check_output`). A store whose
creation was interrupted (no ``_build/tokens.json``) is created again, and is deleted first only if every file in it
is one a token store has (:func:`eo_dataset.outputs.remove_ours` with ``zarr_owned(["_build"])``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr

from eo_dataset.cube.manifest import MANIFEST_DIR, atomic_write, done_blocks, hash_ids, mark_done
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.errors import CubeError, OutputError
from eo_dataset.outputs import check_output, remove_ours, zarr_owned
from eo_dataset.torch import CubeDataset
from eo_dataset.torch.crop import crop_offset
from eo_models.cube import cube_meta, open_cube
from eo_models.errors import ConfigError
from eo_models.progress import Progress
from eo_models.tokenizers.tokenizer import Tokenizer, load_tokenizer

FORMAT = 2  #: version of the tokens store layout (root attr ``eo_models_tokens``); 2: block entries in _build/
FILL = -1  #: token id of samples without the modality
CREATED = f"{MANIFEST_DIR}/tokens.json"  #: the store's creation record, written once its metadata is complete
WHAT = "token store written by eo-models tokenize"


@dataclass(frozen=True)
class TokenCrop:
    """Where a tokenizer reads a sample: ``size`` base pixels (``side`` pixels of the modality), ``grid`` tokens."""

    size: int
    side: int
    grid: tuple[int, int]


def token_crop(patch_px: int, factor: int, patch: int) -> TokenCrop:
    """The largest whole-sample crop whose side at the modality's resolution is a multiple of ``patch``.

    Args:
        patch_px: Sample side in base pixels (the grid's ``patch_px``, 264 by default).
        factor: Modality resolution / base resolution (1 for 10 m, 3 for 30 m on a 10 m grid).
        patch: The tokenizer's pixels (of the modality) per token side.

    Raises:
        ConfigError: the sample is smaller than one token at this resolution.
    """
    full = patch_px // factor
    side = full // patch * patch
    if side == 0:
        raise ConfigError(f"a sample is {full} px at this resolution, less than one token of {patch} px; this "
                          "tokenizer cannot tokenize this cube")
    return TokenCrop(side * factor, side, (side // patch, side // patch))


def tokenize_cube(cube: str | os.PathLike[str], tokenizers: Sequence[str | os.PathLike[str] | Tokenizer],
                  out: str | os.PathLike[str], *, batch_size: int = 16, device: str = "cpu",
                  progress: bool = True) -> Path:
    """Write the token ids of every sample and modality of ``cube`` to the Zarr store ``out``.

    See the module docstring for the layout. Tokenizers run in eval mode under ``torch.no_grad``; only samples
    that have a modality are read. Rerunning with the same cube and tokenizers resumes an interrupted run (the
    store keeps the block size it was created with) and returns at once for a complete store.

    Args:
        cube: An eo-dataset cube (local path or URL).
        tokenizers: Tokenizer folders, Hub repo ids (``Tokenizer.from_pretrained``) or :class:`Tokenizer`
            objects (moved to ``device``, given back in the train/eval mode they came in); one per modality.
        out: Local path of the tokens store.
        batch_size: Samples per block (one Zarr chunk, one forward pass).
        device: torch device the tokenizers run on.
        progress: Show a progress bar per modality.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: ``out`` is not a token store (a user's folder, a cube, a file), or cannot be written.
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: two tokenizers for one modality, a modality the cube does not have (or with other bands or
            resolution), or ``out`` holding tokens of another cube or other tokenizers.
        CheckpointError: a tokenizer cannot be loaded.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, found {batch_size!r}")
    if isinstance(tokenizers, str | os.PathLike | Tokenizer):
        tokenizers = [tokenizers]
    if not tokenizers:
        raise ConfigError("no tokenizers given; pass at least one tokenizer folder, Hub repo id or Tokenizer")
    state = check_output(out, what=WHAT, marker="zarr.json")
    out = Path(out)
    attrs = _existing_attrs(out) if state == "ours" else None
    cube_info = _cube_info(cube)
    toks = _load_tokenizers(tokenizers)
    jobs = {m: _job(cube, cube_info, m, tok, src) for m, (tok, src) in toks.items()}
    identity = {"recipe_hash": cube_info["recipe_hash"], "cube_samples": cube_info["n"],
                "samples_hash": cube_info["samples_hash"], "tokenizers": {m: job.identity for m, job in jobs.items()}}
    if attrs is not None:
        _check_identity(out, attrs, identity)
        if attrs.get("complete"):
            return out
    block = int(attrs["block_samples"]) if attrs is not None else batch_size
    if attrs is None or not (out / CREATED).is_file():
        if state == "ours":  # an interrupted creation: start again, deleting only what a token store holds
            remove_ours(out, what=WHAT, owned=zarr_owned([MANIFEST_DIR]))
        _create(out, cube, cube_info, jobs, identity, block)

    group = zarr.open_group(out, mode="r+", zarr_format=3)
    n = cube_info["n"]
    nblocks = math.ceil(n / block)
    with Progress(progress, unit="blocks") as bar:
        for m, job in jobs.items():
            todo = sorted(set(range(nblocks)) - done_blocks(out, f"tokens/{m}"))
            bar.add(f"{m} ({job.tok.codebook_size} codes, {job.crop.grid[0]}x{job.crop.grid[1]} tokens)", nblocks,
                    nblocks - len(todo))
            if todo:
                _run_modality(job, group[f"{m}_tokens"], todo, block, n, out, device, bar)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # the build record's files are no zarr nodes
        zarr.consolidate_metadata(str(out), zarr_format=3)
    # marked complete last, on the consolidated group (reopened, so the consolidated metadata is kept)
    zarr.open_group(out, mode="r+", zarr_format=3).attrs.update({"complete": True})
    return out


# -- tokenizers ----------------------------------------------------------------------------------------------------
def _load_tokenizers(sources: Sequence[str | os.PathLike[str] | Tokenizer]) -> dict[str, tuple[Tokenizer, str]]:
    """``{modality: (tokenizer, where it came from)}``, one tokenizer per modality."""
    out: dict[str, tuple[Tokenizer, str]] = {}
    for src in sources:
        if isinstance(src, Tokenizer):
            tok, where = src, f"<{type(src).__name__} object>"
        else:
            where = os.fspath(src)
            tok = load_tokenizer(src)
        m = tok.modality
        if m in out:
            raise ConfigError(f"two tokenizers for modality {m!r}: {out[m][1]} and {where}; pass one per modality")
        out[m] = (tok, where)
    return out


def _weights_digest(tok: Tokenizer) -> str:
    """sha256 of the weights tokens depend on (head, encoder, quantizer), to tell tokenizers apart."""
    h = hashlib.sha256()
    for part in ("head", "encoder", "quantizer"):
        for name, t in sorted(getattr(tok, part).state_dict().items()):
            h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- the cube and the plan -----------------------------------------------------------------------------------------
def _cube_info(cube: str | os.PathLike[str]) -> dict[str, Any]:
    with open_cube(cube, schema=False) as ds:
        meta = cube_meta(ds, cube)
        ids = np.asarray(ds["sample_id"].values)
        coords = {k: np.asarray(ds[k].values) for k in ("lon", "lat", "epsg") if k in ds.variables}
        return {"n": len(ids), "ids": ids, "samples_hash": hash_ids([str(i) for i in ids]), "coords": coords,
                "recipe_hash": meta.recipe_hash or "", "modalities": meta.modalities, "meta": meta}


@dataclass
class _Job:
    """One modality's tokenizer, dataset and crop."""

    modality: str
    tok: Tokenizer
    source: str
    dataset: CubeDataset
    crop: TokenCrop
    offset: tuple[int, int]
    identity: dict[str, Any]

    @property
    def attrs(self) -> dict[str, Any]:
        return {**self.identity, "source": self.source}


def _job(cube: str | os.PathLike[str], info: dict[str, Any], m: str, tok: Tokenizer, source: str) -> _Job:
    if m not in info["modalities"]:
        raise ConfigError(f"tokenizer {source} is for modality {m!r}, which the cube {cube} does not have; it has "
                          f"{sorted(info['modalities'])}")
    probe = CubeDataset(cube, [m], normalize=False)
    mi = probe.info[m]
    want = tok.cfg.modality
    if tuple(want.bands) != tuple(mi.bands):
        raise ConfigError(f"tokenizer {source} reads {m} bands {list(want.bands)}, the cube has {list(mi.bands)}; "
                          "use a tokenizer trained on a cube with the same bands")
    if not math.isclose(want.resolution_m, mi.resolution_m):
        raise ConfigError(f"tokenizer {source} was trained on {m} at {want.resolution_m:g} m, the cube has it at "
                          f"{mi.resolution_m:g} m")
    crop = token_crop(probe.patch_px, mi.factor, tok.patch)
    ds = CubeDataset(cube, [m], crop=crop.size, crop_mode="center", normalize=False)
    offset = crop_offset(ds.crop) if ds.crop is not None else (0, 0)
    identity = {"config": _jsonable(tok.cfg.to_dict()), "codebook_size": int(tok.codebook_size),
                "patch": int(tok.patch), "crop_px": crop.size, "crop_offset_px": list(offset),
                "crop_px_modality": crop.side, "token_grid": list(crop.grid), "weights_sha256": _weights_digest(tok)}
    return _Job(m, tok, source, ds, crop, offset, identity)


def _jsonable(value: Any) -> Any:
    """As it reads back from JSON attrs (tuples become lists), so stored and fresh values compare equal."""
    return json.loads(json.dumps(value))


# -- the store -----------------------------------------------------------------------------------------------------
def _existing_attrs(out: Path) -> dict[str, Any]:
    """The root attrs of ``out``, a folder with a ``zarr.json`` that must be a token store.

    Raises:
        OutputError: it is not a token store (another Zarr store, a cube, damaged metadata).
    """
    refuse = "; it is left untouched: choose a new or empty folder for --out"
    try:
        attrs = zarr.open_group(out, mode="r", zarr_format=3).attrs.asdict()
    except Exception as exc:  # zarr raises several types for foreign or damaged metadata
        raise OutputError(f"--out {out} holds a zarr.json that cannot be read as a {WHAT} ({type(exc).__name__}: "
                          f"{exc}){refuse}") from exc
    try:
        store = CubeMeta.from_attrs(attrs, str(out)).store
    except CubeError:
        store = None
    if store != "tokens":
        raise OutputError(f"--out {out} is a Zarr store but not a {WHAT} (no 'eo_models_tokens' attr){refuse}")
    return attrs


def _check_identity(out: Path, attrs: dict[str, Any], identity: dict[str, Any]) -> None:
    """A rerun must have the same cube and the same tokenizers as the run that created ``out``."""
    if attrs.get("eo_models_tokens") != FORMAT:
        layout = attrs.get("eo_models_tokens")
        raise ConfigError(f"{out} is a token store of another eo-models version (layout {layout}, this version "
                          f"writes layout {FORMAT}) and cannot be resumed; pass another --out")
    stored = {k: attrs.get(k) for k in ("recipe_hash", "cube_samples", "samples_hash")}
    fresh = {k: identity[k] for k in stored}
    if stored != fresh:
        diff = sorted(k for k in stored if stored[k] != fresh[k])
        raise ConfigError(f"{out} holds tokens of another cube ({attrs.get('cube')}, recipe {stored['recipe_hash']}, "
                          f"{stored['cube_samples']} samples; differs in {diff}); pass another --out")
    have = {m: {k: v for k, v in t.items() if k != "source"} for m, t in (attrs.get("tokenizers") or {}).items()}
    want = identity["tokenizers"]
    if sorted(have) != sorted(want):
        raise ConfigError(f"{out} holds tokens of other tokenizers (modalities {sorted(have)}, now {sorted(want)}); "
                          "pass another --out")
    for m in want:
        if have[m] != want[m]:
            diff = sorted(k for k in want[m] if have[m].get(k) != want[m][k])
            raise ConfigError(f"{out} holds {m} tokens of another tokenizer ({attrs['tokenizers'][m].get('source')}; "
                              f"differs in {diff}); pass another --out")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eo-dataset")
    except PackageNotFoundError:
        return "unknown"


def _create(out: Path, cube: str | os.PathLike[str], info: dict[str, Any], jobs: dict[str, _Job],
            identity: dict[str, Any], block: int) -> None:
    """The store's metadata, coords and availability; token arrays left unwritten (they read as -1)."""
    n = info["n"]
    chunk1d = max(1, min(n, block * 1024))
    coords = {"sample_id": ("sample", info["ids"]), **{k: ("sample", v) for k, v in info["coords"].items()}}
    data: dict[str, Any] = {}
    encoding: dict[str, Any] = {k: {"chunks": (chunk1d,)} for k in coords}
    for m, job in jobs.items():
        ty, tx = job.crop.grid
        data[f"{m}_tokens"] = xr.Variable(
            ("sample", f"{m}_ty", f"{m}_tx"), da.full((n, ty, tx), FILL, dtype=np.int32, chunks=(block, ty, tx)),
            attrs={"long_name": f"{m} token ids ({FILL}: sample without {m})", "codebook_size": job.tok.codebook_size,
                   "token_px": job.tok.patch * job.dataset.info[m].factor})
        data[f"{m}_available"] = xr.Variable("sample", job.dataset.availability[:, 0].copy(),
                                             attrs={"long_name": f"the sample has {m}"})
        encoding[f"{m}_tokens"] = {"chunks": (block, ty, tx), "fill_value": FILL}
        encoding[f"{m}_available"] = {"chunks": (chunk1d,)}
    source: CubeMeta = info["meta"]
    extra = {"eo_models_tokens": FORMAT, "cube": os.fspath(cube), **identity,
             "tokenizers": {m: job.attrs for m, job in jobs.items()}, "block_samples": block, "complete": False,
             "eo_models_version": _version(),
             "conventions": f"<m>_tokens = {FILL} where <m>_available is False; token (i, j) covers modality pixels "
                            "crop_offset_px/factor + patch * (i, j) of the sample (crop and offset in base pixels)"}
    meta = CubeMeta(store="tokens", title="4M4EO tokens", grid=source.grid, recipe_hash=extra.pop("recipe_hash"),
                    modalities={m: source.modalities[m] for m in jobs}, extra=extra)
    attrs = meta.to_attrs()
    xr.Dataset(data, coords=coords, attrs=attrs).to_zarr(out, mode="w", zarr_format=3, compute=False,
                                                        consolidated=False, encoding=encoding)
    # the build record lives in a Zarr group of its own, as a cube's does, so Zarr tools see a valid hierarchy
    zarr.open_group(out, mode="r+", zarr_format=3).create_group(
        MANIFEST_DIR, attributes={"role": "eo-models token store build record"})
    atomic_write(out / CREATED, json.dumps({"n_samples": n, "block_samples": block, "n_blocks": math.ceil(n / block),
                                            "modalities": list(jobs)}))


def _run_modality(job: _Job, array: zarr.Array, todo: list[int], block: int, n: int, out: Path, device: str,
                  bar: Progress) -> None:
    """Tokenize and write the blocks ``todo``, each recorded as done (``_build/tokens/<m>/``) after its data."""
    m, tok = job.modality, job.tok
    available = job.dataset.availability[:, 0]
    was_training = tok.training
    tok.to(device).eval()
    try:
        for b in todo:
            t0 = time.perf_counter()
            lo, hi = b * block, min(n, (b + 1) * block)
            ids = np.full((hi - lo, *job.crop.grid), FILL, dtype=np.int32)
            rows = [i for i in range(lo, hi) if available[i]]
            if rows:
                batch = job.dataset.get_batch(rows)
                with torch.no_grad():
                    tokens = tok.tokenize(batch[m].to(device), batch[f"{m}_valid"].to(device))
                if tuple(tokens.shape) != (len(rows), *job.crop.grid):
                    raise ConfigError(f"tokenizer {job.source} gave tokens of shape {tuple(tokens.shape)} for "
                                      f"{len(rows)} crops of {job.crop.side} px; expected "
                                      f"{(len(rows), *job.crop.grid)} (one token per {tok.patch} px)")
                ids[np.asarray(rows) - lo] = tokens.cpu().numpy().astype(np.int32)
            array[lo:hi] = ids
            mark_done(out, b, {"samples": [lo, hi], "tokenized": len(rows),
                               "seconds": round(time.perf_counter() - t0, 3)}, sub=f"tokens/{m}")
            bar.advance()
    finally:
        tok.train(was_training)

