"""A fusion model over a whole cube: generated modalities and embeddings, written as stores aligned with the cube
(:mod:`eo_models.fusion.aligned`), block by block, resumable.

- :func:`generate_cube`: for every sample with at least one conditioning modality, tokens of the ``from``
  modalities (made on the fly by the tokenizers the model references, :class:`~eo_models.tokens.online.OnlineTokens`)
  -> :func:`~eo_models.fusion.generation.generate` the ``to`` modalities (chained) -> the stage-1 decoders back to
  pixels in the modality's stored units and dtype (captions: the caption tokenizer's text). Samples without any
  conditioning modality get nothing (``<m>_available`` False).
- :func:`embed_cube`: encoder outputs over every token of the chosen modalities: ``embedding (sample, dim)`` (mean
  over the tokens) and ``<m>_patch (sample, ty, tx, dim)`` per image modality.
- :func:`write_embeddings`: the embeddings store of any encoder, block by block (what :func:`embed_cube` and
  :func:`eo_models.backbones.embed.embed_cube_with_backbone` share).

Each block draws from a generator seeded by ``seed`` and the block number: a rerun after a kill redoes only the
unfinished blocks and gives the same store.

``out`` may be an ``s3://``, ``gs://`` or ``az://`` URL: the store is then an icechunk repository, written block by
block in commits on a branch and published to ``main`` when complete (:mod:`eo_models.tokens.versioned`); read it
with ``eo_dataset.cube.storage.open_version(url)`` or ``CubeDataset(url)``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eo_dataset.cube.storage import is_object_url
from eo_models.cube import cube_meta, open_cube
from eo_models.errors import ConfigError
from eo_models.fusion.aligned import (
    AlignedStore,
    GeneratedFrom,
    caption_variables,
    embedding_variables,
    generated_variables,
)
from eo_models.fusion.generation import Schedule, describe, generate
from eo_models.fusion.model import FusionModel, load_fusion
from eo_models.progress import Progress
from eo_models.tokens.online import OnlineTokens
from eo_models.tokens.plan import ImagePlan


def written(out: str | os.PathLike[str]) -> Path | str:
    """What the writers return: a local store as a :class:`~pathlib.Path`, an object-storage URL as it is."""
    return os.fspath(out) if is_object_url(os.fspath(out)) else Path(out)


def model_digest(model: FusionModel) -> str:
    """sha256 of the model's weights (names, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _names(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise ConfigError(f"{what}: a modality named twice in {names}")
    return names


def _online(model: FusionModel, cube: str | os.PathLike[str], names: Sequence[str],
            tokenizers: Mapping[str, Any] | Sequence[Any] | None) -> OnlineTokens:
    """The tokenizers of ``names``: the ones given, else the ones the model references; checked against it."""
    given: dict[str, Any] = {}
    if isinstance(tokenizers, Mapping):
        given = dict(tokenizers)
    sources = []
    for name in names:
        m = model.cfg.modality(name)
        source = given.get(name) or m.tokenizer
        if not source:
            raise ConfigError(f"the fusion model names no tokenizer for {name}; pass its tokenizer (--tokenizers)")
        sources.append(source)
    if tokenizers is not None and not isinstance(tokenizers, Mapping):
        sources = list(tokenizers)
    online = OnlineTokens(cube, sources)
    missing = sorted(set(names) - set(online.specs))
    if missing:
        raise ConfigError(f"no tokenizer for {missing} among the ones given ({sorted(online.specs)})")
    model.check_tokens(online.specs)
    return online


def _to_stored(values: Tensor, meta: Any, dtype: np.dtype) -> np.ndarray:
    """Decoder predictions (stored units, dB for ``transform: db``, class ids, 0/1 layers) in the stored dtype."""
    x = values.float()
    if getattr(meta, "transform", "none") == "db":
        x = torch.pow(10.0, x / 10.0)
    out = x.cpu().numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    elif np.issubdtype(dtype, np.bool_):
        out = out > 0.5
    return out.astype(dtype)


def generate_cube(fusion: FusionModel | str | os.PathLike[str], cube: str | os.PathLike[str],
                  out: str | os.PathLike[str], *, source: Sequence[str] | str, target: Sequence[str] | str,
                  tokenizers: Mapping[str, Any] | Sequence[Any] | None = None, schedule: Schedule | None = None,
                  batch_size: int = 8, device: str = "cpu", seed: int = 0, progress: bool = True) -> Path | str:
    """Generate the ``target`` modalities of every sample of ``cube`` from its ``source`` modalities into ``out``.

    Args:
        fusion: A fusion model, its folder or Hub repo id.
        cube: The cube (local path or URL).
        out: The store to write (new, empty, or one of an earlier run of the same call: resumed): a local folder,
            or an ``s3://``, ``gs://`` or ``az://`` URL (an icechunk repository, published when complete).
        source: Conditioning modalities (``"s2l2a,s1rtc"`` or a list).
        target: Modalities to generate, in order (chained).
        tokenizers: ``{modality: tokenizer}`` or a list of tokenizers (default: those the model references).
        schedule: How image targets are decoded (default: MaskGIT, 8 steps, temperature 1).
        batch_size: Samples per block (one forward pass).
        device: torch device.
        seed: Seed of the sampling (with the block number).
        progress: Show a progress bar.

    Returns:
        ``out`` as a :class:`~pathlib.Path` (a URL as it was given).

    Raises:
        ConfigError: unknown or repeated modalities, a target also a source, tokens from other tokenizers than the
            model's.
        OutputError: ``out`` is not a store this function wrote.
        CheckpointError: the model or a tokenizer cannot be loaded.
    """
    src, tgt = _names(source, "--from"), _names(target, "--to")
    if not src or not tgt:
        raise ConfigError("generation needs source modalities (--from) and target modalities (--to)")
    both = sorted(set(src) & set(tgt))
    if both:
        raise ConfigError(f"{both} both source (--from) and target (--to); a target is generated from the sources")
    schedule = schedule or Schedule()
    model = load_fusion(fusion).to(device).eval()
    online = _online(model, cube, [*src, *tgt], tokenizers).to(device)
    digest = model_digest(model)
    name = os.fspath(fusion) if not isinstance(fusion, FusionModel) else "<FusionModel object>"
    with open_cube(cube) as ds:
        meta = cube_meta(ds, cube)
        dtypes = {m: ds[m].dtype for m in tgt if m in ds.data_vars and ds[m].ndim == 4}
    variables: dict[str, Any] = {}
    for i, m in enumerate(tgt):
        plan = online.plans[m]
        provenance = GeneratedFrom(name, digest, tuple([*src, *tgt[:i]]), describe(schedule))
        if isinstance(plan, ImagePlan):
            variables.update(generated_variables(meta.modalities[m], dtypes[m], meta, generated_from=provenance,
                                                 crop_px=plan.crop.size, crop_offset_px=plan.offset))
        else:
            variables.update(caption_variables(provenance, m))
    identity = {"model_sha256": digest, "from": src, "to": tgt, "schedule": describe(schedule), "seed": seed}
    store = AlignedStore.create_or_resume(out, cube, kind="generated", variables=variables, identity=identity,
                                          attrs={"fusion_model": name}, block=batch_size)
    dataset = online.dataset()
    stop = {m: [online.plans[m].tok.token_id("sep")] for m in tgt if not isinstance(online.plans[m], ImagePlan)}
    with Progress(progress, "blocks") as bar:
        bar.add("generate", store.n_blocks, store.n_blocks - len(store.todo()))
        for b in store.todo():
            rows = store.block_samples(b)
            batch = dataset.collate_fn([dataset[i] for i in range(rows.start, rows.stop)])
            tokens = online({k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})
            n = rows.stop - rows.start
            has = torch.zeros(n, dtype=torch.bool, device=device)
            for m in src:
                has |= tokens[f"{m}_available"].to(device)
            arrays = _empty_block(variables, tgt, online, n)
            picked = torch.nonzero(has).flatten()
            if picked.numel():
                sub = {k: v[picked] if isinstance(v, Tensor) and v.shape[:1] == (n,) else v for k, v in tokens.items()}
                gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, b]).generate_state(1)[0]))
                ids = generate(model, sub, tgt, conditioning=src, schedule=schedule, stop=stop, generator=gen)
                rows_np = picked.cpu().numpy()
                for m in tgt:
                    plan = online.plans[m]
                    if isinstance(plan, ImagePlan):
                        grid = plan.crop.grid
                        with torch.no_grad():
                            pixels = plan.tok.head.predict(plan.tok.detokenize(ids[m].reshape(-1, *grid)))
                        arrays[m][rows_np] = _to_stored(pixels, meta.modalities[m], np.dtype(dtypes[m]))
                        arrays[f"{m}_valid"][rows_np] = True
                        arrays[f"{m}_available"][rows_np] = True
                    else:
                        texts = plan.tok.decode([[t for t in row if t >= 0] for row in ids[m].tolist()])
                        for r, text in zip(rows_np, texts, strict=True):
                            arrays[m][r] = text
            store.write(b, arrays)
            bar.advance()
    store.finish()
    return written(out)


def _empty_block(variables: Mapping[str, Any], targets: Sequence[str], online: OnlineTokens, n: int
                 ) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for m in targets:
        plan = online.plans[m]
        if isinstance(plan, ImagePlan):
            spec = variables[m]
            side = plan.crop.side
            arrays[m] = np.full((n, spec.shape[0], side, side), spec.fill_value, dtype=spec.np_dtype)
            arrays[f"{m}_valid"] = np.zeros((n, side, side), dtype=bool)
            arrays[f"{m}_available"] = np.zeros(n, dtype=bool)
        else:
            arrays[m] = np.full(n, "", dtype=object)
    return arrays


def embed_cube(fusion: FusionModel | str | os.PathLike[str], cube: str | os.PathLike[str],
               out: str | os.PathLike[str], *, modalities: Sequence[str] | str | None = None,
               tokenizers: Mapping[str, Any] | Sequence[Any] | None = None, batch_size: int = 8,
               device: str = "cpu", progress: bool = True) -> Path | str:
    """Write the fusion encoder's embeddings of every sample of ``cube`` into ``out``.

    Args:
        fusion: A fusion model, its folder or Hub repo id.
        cube: The cube (local path or URL).
        out: The store to write (new, empty, or one of an earlier run of the same call: resumed): a local folder,
            or an ``s3://``, ``gs://`` or ``az://`` URL (an icechunk repository, published when complete).
        modalities: The modalities whose tokens enter the encoder (default: all of the model's).
        tokenizers: ``{modality: tokenizer}`` or a list (default: those the model references).
        batch_size: Samples per block.
        device: torch device.
        progress: Show a progress bar.

    Returns:
        ``out`` as a :class:`~pathlib.Path` (a URL as it was given).
    """
    model = load_fusion(fusion).to(device).eval()
    names = _names(modalities, "--modalities") or list(model.modalities)
    online = _online(model, cube, names, tokenizers).to(device)
    digest = model_digest(model)
    name = os.fspath(fusion) if not isinstance(fusion, FusionModel) else "<FusionModel object>"
    dim = model.cfg.model.dim
    grids = {m: tuple(model.cfg.modality(m).grid) for m in names if model.cfg.modality(m).kind == "image"}
    dataset = online.dataset()

    def encode(rows: slice) -> EmbeddedBlock:
        batch = dataset.collate_fn([dataset[i] for i in range(rows.start, rows.stop)])
        tokens = online({k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})
        e = model.embed(tokens, names)
        return EmbeddedBlock(e.pooled, {m: e.tokens[m] for m in grids}, {m: e.available[m] for m in names})

    return write_embeddings(out, cube, dim=dim, grids=grids, identity={"model_sha256": digest, "modalities": names},
                            attrs={"fusion_model": name, "pooling": "mean over the tokens of the sample's available "
                                   "modalities", "modalities_used": names},
                            batch_size=batch_size, progress=progress, encode=encode)


@dataclass(frozen=True)
class EmbeddedBlock:
    """One block's encoder outputs, for :func:`write_embeddings`.

    Attributes:
        pooled: ``(n, dim)`` pooled embedding of each sample of the block.
        tokens: ``{modality: (n, ty * tx, dim)}`` each image modality's token embeddings, row-major over its grid.
        available: ``{modality: (n,) bool}`` for every modality that entered the encoder: whether the sample had it
            (a sample with none gets NaN embeddings; a modality's patches are NaN where the sample lacks it).
    """

    pooled: Tensor
    tokens: Mapping[str, Tensor]
    available: Mapping[str, Tensor]


def write_embeddings(out: str | os.PathLike[str], cube: str | os.PathLike[str], *, dim: int,
                     grids: Mapping[str, tuple[int, int]], identity: Mapping[str, Any], attrs: Mapping[str, Any],
                     batch_size: int, progress: bool, encode: Callable[[slice], EmbeddedBlock]) -> Path | str:
    """Write an embeddings store aligned with ``cube`` (:func:`~eo_models.fusion.aligned.embedding_variables`):
    ``embedding (sample, dim)`` float32 and, per modality of ``grids``, ``<m>_patch (sample, ty, tx, dim)`` float16
    and ``<m>_available``; block by block (``batch_size`` samples), resumable.

    Args:
        out: The store (new, empty, or one of an earlier run with the same ``identity``: resumed): a local folder or
            an object-storage URL (see :class:`~eo_models.fusion.aligned.AlignedStore`).
        cube: The cube.
        dim: Embedding width.
        grids: ``{modality: (ty, tx)}`` token grids of the modalities whose patches are stored.
        identity: What makes two runs the same run (model digest, modalities, settings).
        attrs: Other root attrs (the model's id, the pooling).
        batch_size: Samples per block.
        progress: Show a progress bar.
        encode: The cube's rows (a slice of sample indices) -> their :class:`EmbeddedBlock`.

    Returns:
        ``out`` as a :class:`~pathlib.Path` (a URL as it was given).
    """
    with open_cube(cube) as ds:
        meta = cube_meta(ds, cube)
    variables = embedding_variables(dim, grids, meta)
    store = AlignedStore.create_or_resume(out, cube, kind="embeddings", variables=variables, identity=identity,
                                          attrs=attrs, block=batch_size)
    with Progress(progress, "blocks") as bar:
        bar.add("embed", store.n_blocks, store.n_blocks - len(store.todo()))
        for b in store.todo():
            rows = store.block_samples(b)
            e = encode(rows)
            any_token = torch.zeros(rows.stop - rows.start, dtype=torch.bool, device=e.pooled.device)
            for has in e.available.values():
                any_token |= has.to(any_token.device).bool()
            pooled = torch.where(any_token[:, None], e.pooled, torch.nan)
            arrays = {"embedding": pooled.float().cpu().numpy()}
            for m, (ty, tx) in grids.items():
                has = e.available[m].to(e.tokens[m].device).bool()
                patch = e.tokens[m].reshape(-1, ty, tx, dim)
                patch = torch.where(has[:, None, None, None], patch, torch.nan)
                arrays[f"{m}_patch"] = patch.to(torch.float16).cpu().numpy()
                arrays[f"{m}_available"] = has.cpu().numpy()
            store.write(b, arrays)
            bar.advance()
    store.finish()
    return written(out)
