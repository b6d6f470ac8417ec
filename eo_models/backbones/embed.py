"""A converted TerraMind backbone over a whole cube: ``eo-models embed --backbone``.

:func:`embed_cube_with_backbone` reads every sample of the cube as stored (``CubeDataset(..., normalize=False)``), a
centre crop of the size the backbone expects (its position grid times its patch: 14 x 16 = 224 px for TerraMind),
picks each modality's bands by name in the backbone's order (its config names the cube's bands, mapped from
TerraMind's at conversion), lets the backbone normalise them with its own statistics (its config's mean and std, dB
for SAR), encodes the modalities together (a sample's missing modality is left out of attention and pooling) and
writes the same store as ``eo-models embed --fusion`` (:func:`eo_models.fusion.apply.write_embeddings`):
``embedding (sample, dim)`` (mean over the tokens of the sample's available modalities; NaN for a sample with none),
``<m>_patch (sample, ty, tx, dim)`` and ``<m>_available`` per modality, aligned with the cube sample by sample,
written block by block and resumed after a kill.

Only the backbone's **pixel** inputs are read from a cube (its token inputs need the ids of TerraMind's tokenizers:
use :meth:`~eo_models.backbones.terramind.TerraMindBackbone.embed` from Python for those).

Lives beside the fusion stage (``tests/test_layout.py``): it writes its store with the fusion package's writer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from eo_dataset.torch import CubeDataset
from eo_models.backbones.terramind import BackboneInput, TerraMindBackbone, load_backbone
from eo_models.cube import cube_meta, open_cube
from eo_models.errors import ConfigError
from eo_models.fusion.apply import EmbeddedBlock, model_digest, write_embeddings


def pixel_inputs(model: TerraMindBackbone) -> dict[str, BackboneInput]:
    """The backbone's pixel inputs by cube modality name, in its order."""
    return {i.name: i for i in model.cfg.inputs if i.kind == "pixels"}


def chosen_modalities(model: TerraMindBackbone, modalities: Sequence[str] | str | None) -> list[str]:
    """The modalities to embed (default: every pixel input of the backbone).

    Raises:
        ConfigError: a modality named twice, or one the backbone has no pixel input for (the message names those it
            has).
    """
    known = pixel_inputs(model)
    if isinstance(modalities, str):
        modalities = modalities.split(",")
    names = [m.strip() for m in modalities or () if m.strip()] or list(known)
    if len(set(names)) != len(names):
        raise ConfigError(f"--modalities: a modality named twice in {names}")
    unknown = [m for m in names if m not in known]
    if unknown:
        tokens_only = sorted({i.name for i in model.cfg.inputs if i.kind == "tokens"} & set(unknown))
        why = f" ({', '.join(tokens_only)}: token inputs only, not read from a cube)" if tokens_only else ""
        raise ConfigError(f"the backbone {model.cfg.name} has no pixel input for {', '.join(unknown)}{why}; it knows "
                          f"{', '.join(known) or 'none'}: pass --modalities among those")
    return names


def embed_cube_with_backbone(backbone: TerraMindBackbone | str | os.PathLike[str], cube: str | os.PathLike[str],
                             out: str | os.PathLike[str], *, modalities: Sequence[str] | str | None = None,
                             crop: int | None = None, batch_size: int = 8, device: str = "cpu",
                             progress: bool = True) -> Path | str:
    """Write the backbone encoder's embeddings of every sample of ``cube`` into ``out`` (see the module docstring).

    Args:
        backbone: A :class:`~eo_models.backbones.terramind.TerraMindBackbone`, its folder (``eo-models convert
            terramind``) or Hub repo id.
        cube: The cube (local path or URL).
        out: The store to write (new, empty, or one of an earlier run of the same call: resumed): a local folder or
            an object-storage URL.
        modalities: Cube modalities to encode together (``"s2l2a,s1rtc"`` or a list; default: every pixel input of
            the backbone).
        crop: Side of the centre crop in the cube's base pixels (default: the backbone's grid times its patch, at
            each modality's resolution: 224 px for TerraMind at 10 m). Each modality's side must be a multiple of
            the patch (16).
        batch_size: Samples per block.
        device: torch device.
        progress: Show a progress bar.

    Returns:
        ``out`` as a :class:`~pathlib.Path` (an ``s3://``, ``gs://`` or ``az://`` URL as it was given: an icechunk
        repository, published when complete, as :func:`eo_models.fusion.apply.write_embeddings` writes it).

    Raises:
        ConfigError: a modality the backbone or the cube does not have, a band of the backbone the cube lacks, or a
            crop that does not fit.
        CheckpointError: the backbone cannot be loaded.
        OutputError: ``out`` is not a store this function wrote.
    """
    model = load_backbone(backbone).to(device).eval()
    names = chosen_modalities(model, modalities)
    inputs = pixel_inputs(model)
    with open_cube(cube) as ds:
        meta = cube_meta(ds, cube)
    base, side = float(meta.grid["pixel_size_m"]), int(meta.grid["patch_px"])
    missing = [m for m in names if m not in meta.modalities]
    if missing:
        raise ConfigError(f"the cube {os.fspath(cube)} has no {', '.join(missing)} (it has "
                          f"{', '.join(meta.modalities)}); pass --modalities among the backbone's that it has")
    bands: dict[str, list[str]] = {}
    factors: dict[str, int] = {}
    for m in names:
        want, have = list(inputs[m].modality.bands), [str(b) for b in meta.modalities[m].bands]  # type: ignore[union-attr]
        lacking = [b for b in want if b not in have]
        if lacking:
            raise ConfigError(f"the cube's {m} lacks bands {lacking} the backbone needs ({want}); it has {have}")
        bands[m] = have
        factors[m] = max(1, round(meta.modalities[m].resolution_m / base))
    patch = model.cfg.patch
    if crop is None:
        sizes = {m: inputs[m].grid[0] * patch * factors[m] for m in names}
        crop = max(sizes.values())
    grids: dict[str, tuple[int, int]] = {}
    for m in names:
        px, f = crop // factors[m], factors[m]
        if crop > side or crop % f or px % patch:
            raise ConfigError(f"a {crop} px crop does not fit {m} ({meta.modalities[m].resolution_m:g} m, samples of "
                              f"{side // f} px): the backbone needs a side that is a multiple of {patch} px at the "
                              f"modality's resolution within the sample; pass another --crop or other --modalities")
        grids[m] = (px // patch, px // patch)
    dataset = CubeDataset(cube, names, crop=crop, crop_mode="center", normalize=False)
    name = os.fspath(backbone) if not isinstance(backbone, TerraMindBackbone) else "<TerraMindBackbone object>"

    def encode(rows: slice) -> EmbeddedBlock:
        batch = dataset.collate_fn([dataset[i] for i in range(rows.start, rows.stop)])
        given = model.inputs_of(batch, bands)
        given = {k: {m: v.to(device) for m, v in d.items() if m in names} for k, d in given.items()}
        n = rows.stop - rows.start
        available = {m: given["available"].get(m, torch.ones(n, dtype=torch.bool, device=device)) for m in names}
        e = model.embed(given["pixels"], None, given["valid"], available)
        tokens: dict[str, Tensor] = {m: e.tokens[f"{m}_pixels"] for m in names}
        return EmbeddedBlock(e.pooled, tokens, available)

    identity = {"model_sha256": model_digest(model), "modalities": names, "crop_px": crop}
    attrs = {"backbone": name, "pooling": "mean over the tokens of the sample's available modalities",
             "modalities_used": names, "crop": f"centre crop of {crop} px (base pixels), the cube's stored values "
             "normalised inside the backbone with its own statistics"}
    return write_embeddings(out, cube, dim=model.dim, grids=grids, identity=identity, attrs=attrs,
                            batch_size=batch_size, progress=progress, encode=encode)
