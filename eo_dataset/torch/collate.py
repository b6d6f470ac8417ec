"""Batching samples whose modality sets differ, honestly.

:class:`~eo_dataset.torch.CubeDataset` leaves a modality's tensors out of a sample that does not have it (only its
``<m>_available`` flag, False, is there). :func:`collate` fills the gap in the batch with zeros and an all-False
valid mask, so the batch stacks, while ``<m>_available`` (a ``(B,)`` bool tensor) says which rows are real. Nothing
that looks like data is made up without a flag that says so. Everything else goes through torch's
``default_collate`` (tensors stacked, strings into lists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

Shapes = Mapping[str, tuple[tuple[int, ...], torch.dtype]]

_SUFFIX = "_available"


def collate(samples: Sequence[Mapping[str, Any]], shapes: Shapes | None = None) -> dict[str, Any]:
    """Collate CubeDataset samples into a batch, zero-filling modalities some samples lack.

    Args:
        samples: Sample dicts as returned by :class:`~eo_dataset.torch.CubeDataset`.
        shapes: ``{modality: ((C, H, W), dtype)}`` (``CubeDataset.shapes``), used when no sample of the batch has
            a modality. Without it such a modality has only its ``<m>_available`` flags in the batch.

    Returns:
        The batch: ``<m>`` ``(B, C, H, W)``, ``<m>_valid`` ``(B, H, W)`` (False for filled rows), ``<m>_available``
        ``(B,)``, and every other key collated by ``default_collate``.

    Raises:
        ValueError: the batch is empty, or samples disagree on their keys beyond missing modalities.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch = getattr(samples, "batch", None)
    if batch is not None:  # read as one batch by CubeDataset.__getitems__: already stacked and filled
        return batch
    modalities = [k[: -len(_SUFFIX)] for k in samples[0] if k.endswith(_SUFFIX)]
    filled = [dict(s) for s in samples]
    for m in modalities:
        have = next((s for s in samples if m in s), None)
        if have is not None:
            shape, dtype = tuple(have[m].shape), have[m].dtype
        elif shapes is not None and m in shapes:
            shape, dtype = tuple(shapes[m][0]), shapes[m][1]
        else:
            continue  # nobody has it and its shape is unknown: only the flags go into the batch
        for s in filled:
            if m not in s:
                if bool(s.get(f"{m}{_SUFFIX}", False)):
                    raise ValueError(f"a sample says {m}_available=True but has no {m!r} tensor")
                s[m] = torch.zeros(shape, dtype=dtype)
                s[f"{m}_valid"] = torch.zeros(shape[-2:], dtype=torch.bool)
    keys = set(filled[0])
    for s in filled[1:]:
        if set(s) != keys:
            raise ValueError(f"samples of one batch have different keys: {sorted(keys ^ set(s))}; collate only "
                             "samples of one CubeDataset (same modalities, same crop)")
    return default_collate(filled)
