"""Tokenizing a cube: token ids per sample and modality, written to a Zarr v3 store the fusion stage reads.

``tokenize_cube(cube, [tokenizer, ...], out)`` runs one tokenizer per modality over every sample that has the
modality and writes ``out`` (``xr.open_zarr(out)`` reads it; :class:`~eo_models.tokens.dataset.TokenDataset` serves
it to PyTorch):

- dim ``sample`` (the cube's samples, in cube order); coords ``sample_id``, ``lon``, ``lat``, ``epsg``;
- per image modality ``<m>`` (an image :class:`~eo_models.tokenizers.tokenizer.Tokenizer`): ``<m>_tokens``
  ``(sample, <m>_ty, <m>_tx)`` int32 token ids, ``-1`` where the sample does not have the modality; ``<m>_valid``
  ``(sample, <m>_ty, <m>_tx)`` float16, the fraction of valid pixels (the cube's ``<m>_valid`` over the same crop)
  under each token, 0 where the sample does not have the modality; ``<m>_available`` ``(sample)`` bool;
- for the text modality (a :class:`~eo_models.tokenizers.text.CaptionTokenizer`; the variable its config names,
  ``caption``): ``<m>_tokens`` ``(sample, <m>_len)`` int32, the ids ``CaptionTokenizer.encode`` gives (``[CLS] ...
  [SEP]``), ``-1`` at padding positions and for samples without a caption (an empty one); ``<m>_available``;
- root attrs: ``tokenizers.<m>``: for image tokenizers (``kind: image``) the tokenizer's whole config, codebook size,
  patch, crop in base pixels, crop offset, token grid, a digest of the weights that make the tokens
  (``weights_sha256``); for the caption tokenizer (``kind: sequence``) its config, ``vocab_size``, ``max_length``,
  the ids of its special tokens and a digest of its vocabulary (``vocab_sha256``); for both where it was loaded from
  (``source``). Besides: ``cube``, its ``recipe_hash``, ``cube_samples`` and ``samples_hash``
  (:func:`eo_dataset.cube.manifest.hash_ids` of its sample ids, as in the cube's manifest), ``block_samples``,
  ``complete``, the layout version ``eo_models_tokens`` (:data:`FORMAT`) and the package version.

Each image modality is read as the largest centre crop of the sample whose side, at the modality's resolution, is
a multiple of the tokenizer's patch (264 px at 10 m: 264 px for patch 8, i.e. 33 x 33 tokens; 256 px for patch 16;
Landsat's 88 px at 30 m with patch 8: all of it, 264 base px, 11 x 11 tokens); see :mod:`eo_models.tokens.plan`.

Work goes in blocks of ``batch_size`` samples (one Zarr chunk each). The store keeps a build record as a cube does
(:mod:`eo_dataset.cube.manifest`), in the Zarr group ``_build`` (xarray ignores it): ``_build/tokens.json``, written
last when the store is created (its block size and modalities), and per modality one JSON entry per finished block,
``_build/tokens/<m>/<block>.json`` (its samples, how many were tokenized, seconds), written atomically after the
block's data. A rerun after a crash skips finished blocks and ends with the same store; when every block is done the
metadata is consolidated and the store marked ``complete``. The record stays in the complete store:
``eo_dataset.cube.manifest.block_reports(out, sub="tokens/<m>")`` reads it.

``out`` must be new, an empty folder, or a token store (its marker: a root ``zarr.json`` with the attr
``eo_models_tokens``) of the same layout version, cube and tokenizers, which is resumed; anything else, a user's
folder or another Zarr store (a cube), is refused and left untouched (:func:`eo_dataset.outputs.check_output`). A
store of an older layout (2: no ``<m>_valid``, no captions) is refused too, not read compatibly: tokenize into a new
``out``. A store whose creation was interrupted (no ``_build/tokens.json``) is created again, and is deleted first
only if every file in it is one a token store has (:func:`eo_dataset.outputs.remove_ours` with
``zarr_owned(["_build"])``).

At an object-storage URL (``s3://``, ``gs://``, ``az://``; credentials from the environment only, as for cubes there)
``out`` is an icechunk repository holding the same layout (:mod:`eo_models.tokens.versioned`): the store is created
in one commit on the branch ``eo-models-write``, each block (its data and its entry, a group
``_build/tokens/<m>/<block>`` as in a cube on object storage) is one commit, and the last commit marks it
``complete``; only then is ``main`` moved to it. Readers (``TokenDataset("s3://...")``, ``eo-models
train-fusion --tokens s3://...``) read ``main``, so they never see an unfinished store; a kill loses at most the
block being written and a rerun resumes. The creation record is the ``manifest`` attr of the group ``_build``
there (no files). A prefix holding anything else is refused and left untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from eo_dataset._version import __version__
from eo_dataset.cube.manifest import MANIFEST_DIR, atomic_write, done_blocks, hash_ids, is_folder, mark_done
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.cube.storage import is_object_url
from eo_dataset.errors import OutputError
from eo_dataset.outputs import check_output, remove_ours, zarr_owned
from eo_dataset.torch import CubeDataset
from eo_models.cube import cube_meta, open_cube, store_attrs
from eo_models.errors import ConfigError
from eo_models.progress import Progress
from eo_models.tokens.plan import (
    FILL,
    CaptionPlan,
    ImagePlan,
    Plan,
    TokenCrop,
    TokenizerSource,
    plan_tokenizers,
    token_crop,
)
from eo_models.tokens.versioned import FINISHED, VersionedOutput, root_attrs

__all__ = ["CREATED", "FILL", "FORMAT", "WHAT", "TokenCrop", "token_crop", "tokenize_cube"]

#: Version of the token store layout (root attr ``eo_models_tokens``). 2: block entries in ``_build/``; 3: per-token
#: validity ``<m>_valid``, caption tokens, ``kind`` in ``tokenizers.<m>``.
FORMAT = 3
CREATED = f"{MANIFEST_DIR}/tokens.json"  #: the store's creation record, written once its metadata is complete
WHAT = "token store written by eo-models tokenize"
#: opens where one block is written (a commit message -> a local store folder, or a repository's writable store,
#: committed on leaving)
OpenBlock = Callable[[str], AbstractContextManager[Any]]


def tokenize_cube(cube: str | os.PathLike[str], tokenizers: Sequence[TokenizerSource],
                  out: str | os.PathLike[str], *, batch_size: int = 16, device: str = "cpu",
                  progress: bool = True) -> Path | str:
    """Write the token ids of every sample and modality of ``cube`` to the Zarr store ``out``.

    See the module docstring for the layout. Image tokenizers run in eval mode under ``torch.no_grad``; only samples
    that have a modality are read. Rerunning with the same cube and tokenizers resumes an interrupted run (the
    store keeps the block size it was created with) and returns at once for a complete store.

    Args:
        cube: An eo-dataset cube (local path or URL).
        tokenizers: Image tokenizer folders (``train-tokenizer``), a caption tokenizer folder
            (``train-text-tokenizer``), Hub repo ids of either (told apart by their ``config.json``), or
            :class:`~eo_models.tokenizers.tokenizer.Tokenizer` / :class:`~eo_models.tokenizers.text.CaptionTokenizer`
            objects (image ones moved to ``device``, given back in the train/eval mode they came in); one per
            modality.
        out: Local path of the tokens store, or an ``s3://``, ``gs://`` or ``az://`` URL (an icechunk repository,
            published when complete; see the module docstring).
        batch_size: Samples per block (one Zarr chunk, one forward pass).
        device: torch device the image tokenizers run on.
        progress: Show a progress bar per modality.

    Returns:
        ``out`` as a :class:`~pathlib.Path` (a URL as it was given).

    Raises:
        OutputError: ``out`` is not a token store (a user's folder, a cube, a file; at a URL: objects that are not
            an icechunk repository, or a repository of something else), or cannot be written.
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: two tokenizers for one modality, a modality the cube does not have (or with other bands or
            resolution), a caption tokenizer for a cube without captions, or ``out`` holding tokens of another
            layout version, another cube or other tokenizers.
        CheckpointError: a tokenizer cannot be loaded.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, found {batch_size!r}")
    if is_object_url(os.fspath(out)):
        return _tokenize_to_repository(cube, tokenizers, os.fspath(out), batch_size, device, progress)
    state = check_output(out, what=WHAT, marker="zarr.json")
    out = Path(out)
    attrs = _existing_attrs(out) if state == "ours" else None
    cube_info, plans, identity = _prepare(cube, tokenizers)
    if attrs is not None:
        _check_identity(out, attrs, identity)
        if attrs.get("complete"):
            return out
    datasets = _datasets(cube, plans)
    block = int(attrs["block_samples"]) if attrs is not None else batch_size
    if attrs is None or not (out / CREATED).is_file():
        if state == "ours":  # an interrupted creation: start again, deleting only what a token store holds
            remove_ours(out, what=WHAT, owned=zarr_owned([MANIFEST_DIR]))
        _create(out, cube, cube_info, plans, datasets, identity, block)
    local = Path(out)
    _write_blocks(cube, plans, datasets, cube_info["n"], block, lambda m: done_blocks(local, f"tokens/{m}"),
                  lambda message: contextlib.nullcontext(local), device, progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # the build record's files are no zarr nodes
        zarr.consolidate_metadata(str(out), zarr_format=3)
    # marked complete last, on the consolidated group (reopened, so the consolidated metadata is kept)
    zarr.open_group(out, mode="r+", zarr_format=3).attrs.update({"complete": True})
    return out


def _tokenize_to_repository(cube: str | os.PathLike[str], tokenizers: Sequence[TokenizerSource], url: str,
                            batch_size: int, device: str, progress: bool) -> str:
    """:func:`tokenize_cube` into an icechunk repository (:mod:`eo_models.tokens.versioned`): created in one
    commit, one commit per block, published to ``main`` when complete; resumed from its branch."""
    cube_info, plans, identity = _prepare(cube, tokenizers)  # the inputs checked before anything is written
    output = VersionedOutput(url, "tokens", WHAT)
    published = output.published()
    if published is not None:  # main only ever holds a complete store
        _check_identity(url, _existing_attrs(published, url), identity)
        return url
    head = output.head()
    attrs = _existing_attrs(head, url) if root_attrs(head) is not None else None
    if attrs is not None:
        _check_identity(url, attrs, identity)
    datasets = _datasets(cube, plans)
    block = int(attrs["block_samples"]) if attrs is not None else batch_size
    if attrs is None:
        with output.commit("eo-models tokenize: create") as store:
            _create(store, cube, cube_info, plans, datasets, identity, block)
    n = cube_info["n"]
    _write_blocks(cube, plans, datasets, n, block, lambda m: done_blocks(output.head(), f"tokens/{m}"),
                  output.commit, device, progress)
    with output.commit(f"{FINISHED} tokens of {n} samples ({', '.join(plans)})") as store:
        zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False).attrs.update({"complete": True})
    output.publish()
    return url


def _prepare(cube: str | os.PathLike[str], tokenizers: Sequence[TokenizerSource]
             ) -> tuple[dict[str, Any], dict[str, Plan], dict[str, Any]]:
    """The cube's facts, the tokenizers' plans, and what makes two runs the same run."""
    cube_info = _cube_info(cube)
    plans = plan_tokenizers(cube, tokenizers)
    identity = {"recipe_hash": cube_info["recipe_hash"], "cube_samples": cube_info["n"],
                "samples_hash": cube_info["samples_hash"], "tokenizers": {m: p.identity for m, p in plans.items()}}
    return cube_info, plans, identity


def _datasets(cube: str | os.PathLike[str], plans: dict[str, Plan]) -> dict[str, CubeDataset]:
    return {m: CubeDataset(cube, [m], normalize=False) for m, p in plans.items() if isinstance(p, ImagePlan)}


def _write_blocks(cube: str | os.PathLike[str], plans: dict[str, Plan], datasets: dict[str, CubeDataset], n: int,
                  block: int, done: Callable[[str], set[int]], open_block: OpenBlock, device: str,
                  progress: bool) -> None:
    """Tokenize every block of every modality not ``done`` yet, each written inside ``open_block``."""
    nblocks = math.ceil(n / block)
    with Progress(progress, unit="blocks") as bar, ExitStack() as stack:
        for m, plan in plans.items():
            todo = sorted(set(range(nblocks)) - done(m))
            bar.add(f"{m} ({_describe(plan)})", nblocks, nblocks - len(todo))
            if not todo:
                continue
            if isinstance(plan, ImagePlan):
                _run_image(plan, datasets[m], todo, block, n, open_block, device, bar)
            else:
                captions = stack.enter_context(open_cube(cube, schema=False))[m]
                _run_caption(plan, captions, todo, block, n, open_block, bar)


def _describe(plan: Plan) -> str:
    if isinstance(plan, ImagePlan):
        return f"{plan.tok.codebook_size} codes, {plan.crop.grid[0]}x{plan.crop.grid[1]} tokens"
    return f"vocabulary of {plan.tok.vocab_size}, {plan.tok.max_length} tokens"


# -- the cube ------------------------------------------------------------------------------------------------------
def _cube_info(cube: str | os.PathLike[str]) -> dict[str, Any]:
    with open_cube(cube, schema=False) as ds:
        meta = cube_meta(ds, cube)
        ids = np.asarray(ds["sample_id"].values)
        coords = {k: np.asarray(ds[k].values) for k in ("lon", "lat", "epsg") if k in ds.variables}
        return {"n": len(ids), "ids": ids, "samples_hash": hash_ids([str(i) for i in ids]), "coords": coords,
                "recipe_hash": meta.recipe_hash or "", "meta": meta}


# -- the store -----------------------------------------------------------------------------------------------------
def _existing_attrs(out: Path | zarr.abc.store.Store, name: str | None = None) -> dict[str, Any]:
    """The root attrs of ``out``, a folder with a ``zarr.json`` (or a Zarr store, the version of a repository at the
    URL ``name``) that must be a token store of this layout.

    Raises:
        OutputError: it is not a token store (another Zarr store, a cube, damaged metadata).
        ConfigError: a token store of another layout version.
    """
    try:
        attrs = store_attrs(out, "tokens", WHAT)  # type: ignore[arg-type]
    except OutputError as exc:
        raise OutputError(str(exc).replace(str(out), name or str(out))) from None
    out = name or out
    if attrs.get("eo_models_tokens") != FORMAT:
        raise ConfigError(f"{out} is a token store of layout {attrs.get('eo_models_tokens')} (an older eo-models), "
                          f"this version writes layout {FORMAT} and cannot resume it; pass a new --out")
    return attrs


def _check_identity(out: Path, attrs: dict[str, Any], identity: dict[str, Any]) -> None:
    """A rerun must have the same cube and the same tokenizers as the run that created ``out``."""
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
            diff = sorted(k for k in set(want[m]) | set(have[m]) if have[m].get(k) != want[m].get(k))
            raise ConfigError(f"{out} holds {m} tokens of another tokenizer ({attrs['tokenizers'][m].get('source')}; "
                              f"differs in {diff}); pass another --out")


def _create(out: Path | zarr.abc.store.Store, cube: str | os.PathLike[str], info: dict[str, Any],
            plans: dict[str, Plan], datasets: dict[str, CubeDataset], identity: dict[str, Any], block: int) -> None:
    """The store's metadata, coords and image availability; token arrays left unwritten (they read as -1, validity
    as 0, caption availability as False until their blocks are written)."""
    n = info["n"]
    chunk1d = max(1, min(n, block * 1024))
    coords = {"sample_id": ("sample", info["ids"]), **{k: ("sample", v) for k, v in info["coords"].items()}}
    data: dict[str, Any] = {}
    encoding: dict[str, Any] = {k: {"chunks": (chunk1d,)} for k in coords}
    for m, plan in plans.items():
        if isinstance(plan, ImagePlan):
            ty, tx = plan.crop.grid
            dims = ("sample", f"{m}_ty", f"{m}_tx")
            data[f"{m}_tokens"] = xr.Variable(
                dims, da.full((n, ty, tx), FILL, dtype=np.int32, chunks=(block, ty, tx)),
                attrs={"long_name": f"{m} token ids ({FILL}: sample without {m})",
                       "codebook_size": plan.tok.codebook_size, "token_px": plan.tok.patch * plan.factor})
            data[f"{m}_valid"] = xr.Variable(
                dims, da.zeros((n, ty, tx), dtype=np.float16, chunks=(block, ty, tx)),
                attrs={"long_name": f"fraction of valid {m} pixels under each token (0: sample without {m})"})
            data[f"{m}_available"] = xr.Variable("sample", datasets[m].availability[:, 0].copy(),
                                                 attrs={"long_name": f"the sample has {m}"})
            encoding[f"{m}_tokens"] = {"chunks": (block, ty, tx), "fill_value": FILL}
            encoding[f"{m}_valid"] = {"chunks": (block, ty, tx), "fill_value": 0.0}
            encoding[f"{m}_available"] = {"chunks": (chunk1d,)}
        else:
            length = plan.tok.max_length
            data[f"{m}_tokens"] = xr.Variable(
                ("sample", f"{m}_len"), da.full((n, length), FILL, dtype=np.int32, chunks=(block, length)),
                attrs={"long_name": f"{m} token ids ({FILL}: padding, or a sample without {m})",
                       "vocab_size": plan.tok.vocab_size})
            # written block by block with the tokens (the cube says nothing of caption availability)
            data[f"{m}_available"] = xr.Variable("sample", da.zeros(n, dtype=bool, chunks=block),
                                                 attrs={"long_name": f"the sample has a non-empty {m}"})
            encoding[f"{m}_tokens"] = {"chunks": (block, length), "fill_value": FILL}
            encoding[f"{m}_available"] = {"chunks": (block,), "fill_value": False}
    source: CubeMeta = info["meta"]
    extra = {"eo_models_tokens": FORMAT, "cube": os.fspath(cube), **identity,
             "tokenizers": {m: plan.attrs for m, plan in plans.items()}, "block_samples": block, "complete": False,
             "eo_models_version": __version__,
             "conventions": f"<m>_tokens = {FILL} where <m>_available is False (and at caption padding); image token "
                            "(i, j) covers modality pixels crop_offset_px/factor + patch * (i, j) of the sample (crop "
                            "and offset in base pixels), <m>_valid is the fraction of valid pixels under it"}
    meta = CubeMeta(store="tokens", title="4M4EO tokens", grid=source.grid, recipe_hash=extra.pop("recipe_hash"),
                    modalities={m: source.modalities[m] for m in plans if m in source.modalities}, extra=extra)
    xr.Dataset(data, coords=coords, attrs=meta.to_attrs()).to_zarr(out, mode="w", zarr_format=3, compute=False,
                                                                  consolidated=False, encoding=encoding)
    # the build record lives in a Zarr group of its own, as a cube's does, so Zarr tools see a valid hierarchy
    record = json.dumps({"n_samples": n, "block_samples": block, "n_blocks": math.ceil(n / block),
                         "modalities": list(plans)})
    # in a repository (no files) the record is the build group's "manifest" attr, where a cube's manifest is: what
    # eo_dataset.cube.storage.open_version looks for in a finished version
    extra_attrs = {} if is_folder(out) else {"manifest": record}
    zarr.open_group(out, mode="r+", zarr_format=3, use_consolidated=False).create_group(
        MANIFEST_DIR, attributes={"role": "eo-models token store build record", **extra_attrs})
    if is_folder(out):
        atomic_write(Path(out) / CREATED, record)


def _run_image(plan: ImagePlan, dataset: CubeDataset, todo: list[int], block: int, n: int, open_block: OpenBlock,
               device: str, bar: Progress) -> None:
    """Tokenize and write the blocks ``todo``, each recorded as done (``_build/tokens/<m>/``) after its data."""
    m, tok = plan.modality, plan.tok
    available = dataset.availability[:, 0]
    was_training = tok.training
    tok.to(device).eval()
    try:
        for b in todo:
            t0 = time.perf_counter()
            lo, hi = b * block, min(n, (b + 1) * block)
            ids = np.full((hi - lo, *plan.crop.grid), FILL, dtype=np.int32)
            frac = np.zeros((hi - lo, *plan.crop.grid), dtype=np.float16)
            rows = [i for i in range(lo, hi) if available[i]]
            if rows:
                batch = dataset.get_batch(rows)
                got, fractions = plan.tokenize(batch[m].to(device), batch[f"{m}_valid"].to(device))
                ids[np.asarray(rows) - lo] = got.cpu().numpy().astype(np.int32)
                frac[np.asarray(rows) - lo] = fractions.cpu().numpy().astype(np.float16)
            with open_block(f"eo-models tokenize: {m} block {b}") as out:
                group = zarr.open_group(out, mode="r+", zarr_format=3, use_consolidated=False)
                group[f"{m}_tokens"][lo:hi] = ids
                group[f"{m}_valid"][lo:hi] = frac
                mark_done(out, b, {"samples": [lo, hi], "tokenized": len(rows),
                                   "seconds": round(time.perf_counter() - t0, 3)}, sub=f"tokens/{m}")
            bar.advance()
    finally:
        tok.train(was_training)


def _run_caption(plan: CaptionPlan, captions: xr.DataArray, todo: list[int], block: int, n: int,
                 open_block: OpenBlock, bar: Progress) -> None:
    """Encode and write the caption blocks ``todo`` (ids and availability), each recorded as done after its data."""
    m = plan.modality
    for b in todo:
        t0 = time.perf_counter()
        lo, hi = b * block, min(n, (b + 1) * block)
        texts = [t if isinstance(t, str) else "" for t in captions.isel(sample=slice(lo, hi)).values.tolist()]
        ids, have = plan.encode(texts)
        with open_block(f"eo-models tokenize: {m} block {b}") as out:
            group = zarr.open_group(out, mode="r+", zarr_format=3, use_consolidated=False)
            group[f"{m}_tokens"][lo:hi] = ids.numpy().astype(np.int32)
            group[f"{m}_available"][lo:hi] = have.numpy()
            mark_done(out, b, {"samples": [lo, hi], "tokenized": int(have.sum()),
                               "seconds": round(time.perf_counter() - t0, 3)}, sub=f"tokens/{m}")
        bar.advance()
