"""Tokenizing on the fly: token batches made from cube batches, for training from a cube without a token store.

:class:`OnlineTokens` turns a :class:`~eo_dataset.torch.CubeDataset` batch into the same token batch a
:class:`~eo_models.tokens.dataset.TokenDataset` over a store of the same cube and tokenizers yields (the same ids,
availability and per-token validity: the crops, the rounding of validity to float16 and the handling of
missing samples are those of :mod:`eo_models.tokens.plan`, which the store uses too)::

    online = OnlineTokens("demo.zarr", ["eo-tokenizers/s2l2a-fsq-gan", "eo-tokenizers/caption"])
    cube = online.dataset()                         # CubeDataset(cube, image modalities, crop=None, normalize=False)
    loader = DataLoader(cube, batch_size=8, sampler=ShardSampler(cube), collate_fn=cube.collate_fn)
    for batch in loader:
        tokens = online(batch)                      # {"s2l2a": (8, 1089), "s2l2a_available": (8,), ...}

The cube is read as whole samples (each modality is cropped to its tokenizer's centre crop here), with
``normalize=False`` (each tokenizer's head normalises with its own statistics). Tokenizers run frozen (eval mode,
``requires_grad`` off; tokenizer objects passed in are set so), under ``torch.no_grad`` and with autocast off, on
the device of the batch they are given (moved there on first use). Tokenizing costs a tokenizer forward pass per
image modality and batch; with a token store the fusion stage reads precomputed ids instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from eo_dataset.torch import CubeDataset
from eo_models.cube import cube_meta, open_cube
from eo_models.errors import ConfigError
from eo_models.tokens.dataset import TokenSpec
from eo_models.tokens.plan import ImagePlan, Plan, TokenizerSource, plan_tokenizers


class OnlineTokens:
    """Frozen tokenizers that turn cube batches into token batches (see the module docstring).

    Args:
        cube: The eo-dataset cube the batches come from (local path or URL).
        tokenizers: Image tokenizer folders, a caption tokenizer folder, Hub repo ids of either, or tokenizer
            objects; one per modality, at least one image tokenizer.

    Attributes:
        modalities: The image modalities a :class:`CubeDataset` must read (the caption comes with every batch).
        normalize: ``False``: tokenizers take stored values.
        crop: ``None``: whole samples.
        specs: ``{modality: TokenSpec}``, equal to ``token_specs(store)`` of a store of the same cube and tokenizers.
        recipe_hash: The cube's ``recipe_hash`` (``""`` when it has none), as a token store records it.

    Raises:
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: no image tokenizer, two for one modality, a modality the cube does not have (see
            :func:`~eo_models.tokens.store.tokenize_cube`).
        CheckpointError: a tokenizer cannot be loaded.
    """

    normalize = False
    crop = None

    def __init__(self, cube: str | os.PathLike[str], tokenizers: Sequence[TokenizerSource]) -> None:
        self.cube = cube
        self.plans: dict[str, Plan] = plan_tokenizers(cube, tokenizers)
        self.modalities: list[str] = [m for m, p in self.plans.items() if isinstance(p, ImagePlan)]
        if not self.modalities:
            raise ConfigError(f"OnlineTokens got only a caption tokenizer ({list(self.plans)}); it reads the cube "
                              "through CubeDataset, which needs an image modality: add an image tokenizer")
        for plan in self.plans.values():
            if isinstance(plan, ImagePlan):
                plan.tok.eval().requires_grad_(False)
        self.specs: dict[str, TokenSpec] = {m: TokenSpec.from_attrs(m, p.attrs) for m, p in self.plans.items()}
        with open_cube(cube, schema=False) as ds:
            self.recipe_hash: str = cube_meta(ds, cube).recipe_hash or ""

    def __repr__(self) -> str:
        return f"OnlineTokens({os.fspath(self.cube)!r}, modalities={list(self.plans)})"

    def to(self, device: str | torch.device) -> OnlineTokens:
        """Move the image tokenizers to ``device`` now (:meth:`__call__` also does on first use); returns self."""
        for plan in self.plans.values():
            if isinstance(plan, ImagePlan):
                plan.tok.to(device)
        return self

    @property
    def dataset_kwargs(self) -> dict[str, Any]:
        """What :class:`CubeDataset` needs: ``modalities``, ``crop=None``, ``normalize=False``."""
        return {"modalities": list(self.modalities), "crop": self.crop, "normalize": self.normalize}

    def dataset(self, **kwargs: Any) -> CubeDataset:
        """A :class:`CubeDataset` of the cube that gives these tokenizers what they read.

        Args:
            kwargs: Other CubeDataset arguments (``transforms``, ``storage_options``, ``codec_pipeline``).

        Raises:
            ConfigError: an argument this class sets (``modalities``, ``crop``, ``normalize``, ``crop_mode``).
        """
        fixed = sorted(set(kwargs) & {*self.dataset_kwargs, "crop_mode"})
        if fixed:
            raise ConfigError(f"OnlineTokens.dataset: {fixed} are set by the tokenizers (whole samples of "
                              f"{self.modalities}, stored values); leave them out")
        return CubeDataset(self.cube, **self.dataset_kwargs, **kwargs)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The token batch of a cube batch.

        Args:
            batch: A collated :class:`CubeDataset` batch of :attr:`dataset_kwargs` (``<m>`` ``(B, C, H, W)`` stored
                values of whole samples, ``<m>_valid``, ``<m>_available``, ``caption``, ``index``), on any device.

        Returns:
            ``<m>`` int64 ``(B, L_m)`` (``-1`` where there is no token), ``<m>_available`` bool ``(B,)``,
            ``<m>_valid`` float32 ``(B, L_m)`` and ``index`` int64 ``(B,)``, on the batch's device.

        Raises:
            ConfigError: the batch lacks a modality, or holds crops instead of whole samples.
        """
        missing = [k for m, p in self.plans.items()
                   for k in ((m, f"{m}_valid", f"{m}_available") if isinstance(p, ImagePlan) else (m,))
                   if k not in batch]
        if missing or "index" not in batch:
            raise ConfigError(f"the batch has no {missing or ['index']}; make it with OnlineTokens.dataset() (a "
                              f"CubeDataset of {self.modalities}, crop=None, normalize=False)")
        index = torch.as_tensor(batch["index"])
        device = index.device
        out: dict[str, Tensor] = {}
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for m, plan in self.plans.items():
                if isinstance(plan, ImagePlan):
                    if next(plan.tok.parameters()).device != device:
                        plan.tok.to(device)
                    available = torch.as_tensor(batch[f"{m}_available"], device=device).to(torch.bool)
                    ids, valid = plan.tokenize(batch[m].to(device), batch[f"{m}_valid"].to(device), available)
                    out[m], out[f"{m}_valid"] = ids.flatten(1), valid.flatten(1)
                else:
                    ids, available = plan.encode(list(batch[m]))
                    out[m], out[f"{m}_valid"] = ids.to(device), (ids >= 0).to(device=device, dtype=torch.float32)
                out[f"{m}_available"] = available.to(device)
        out["index"] = index.to(torch.int64)
        return out
