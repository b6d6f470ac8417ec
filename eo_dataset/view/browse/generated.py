"""A store of generated modalities (``eo-models generate``) attached to the browser with ``--generated``, read with
xarray (``eo_dataset`` does not depend on ``eo_models``).

Such a store is aligned with the cube it was generated from: root attr ``eo_store: generated``, the cube's samples in
the cube's order (``samples_hash``, ``sample_id``); each generated modality ``<m>`` laid out as the cube's ``<m>``,
with ``<m>_valid``, ``<m>_available`` and the attrs ``generated_from`` (model, digest, conditioning, schedule),
``crop_px`` and ``crop_offset_px`` (the centre crop that was generated, in base pixels); generated captions are a
``caption`` ``(sample)`` string variable, as in a cube. :class:`GeneratedStore` checks that, and says what a sample
has: the pictures are drawn by :class:`~.browser.CubeBrowser` with the truth's display spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from eo_dataset.cube.manifest import hash_ids
from eo_dataset.cube.schema import CubeMeta, ModalityMeta
from eo_dataset.errors import CubeError

CAPTION = "caption"  #: the text modality's variable, in a cube and in a generated store
#: what a generated modality's schema must share with the cube's for the truth's display spec to draw it
SAME = ("bands", "kind", "scale", "offset", "nodata", "resolution_m", "transform", "classes")


class GeneratedStore:
    """Generated modalities and captions of the browsed cube's samples.

    Args:
        path: The store (for messages and the page).
        ds: The store, opened with ``xr.open_zarr(path, chunks=None)``.
        cube: The browsed cube, opened the same way.
        meta: The cube's metadata.
        ids: The cube's sample ids, in order.

    Raises:
        CubeError: not a store of generated modalities, one of another cube (other samples or another order), or a
            generated modality laid out otherwise than the cube's.
    """

    def __init__(self, path: str | os.PathLike[str], ds: xr.Dataset, cube: xr.Dataset, meta: CubeMeta,
                 ids: np.ndarray) -> None:
        self.path = os.fspath(path)
        self.ds = ds
        where = f"--generated {self.path}"
        own = CubeMeta.from_attrs(ds.attrs, where)
        if own.store != "generated":
            what = "a cube" if own.store == "cube" else f"an eo-dataset {own.store} store"
            raise CubeError(f"{where} is {what}; expected a store of generated modalities written by 'eo-models "
                            "generate' over this cube")
        _check_samples(where, ds, own, ids)
        self.complete = bool(own.extra.get("complete", False))
        self.n = len(ids)
        self.patch_px = meta.patch_px
        self.modalities: dict[str, ModalityMeta] = {}
        self.available: dict[str, np.ndarray] = {}
        self.attrs: dict[str, dict[str, Any]] = {}
        for m, mm in own.modalities.items():
            if m not in ds.data_vars or ds[m].ndim != 4:
                continue  # described, not held as pixels
            truth = meta.modalities.get(m)
            if truth is None:
                raise CubeError(f"{where} holds a generated {m!r}, which the cube does not have (it has "
                                f"{list(meta.modalities)}); expected a store generated from this cube")
            differs = [k for k in SAME if getattr(mm, k) != getattr(truth, k)]
            if differs or (ds[m].shape[1:], ds[m].dtype) != (cube[m].shape[1:], cube[m].dtype):
                found = f"schema differs in {differs}" if differs else f"shape {ds[m].shape[1:]}, {ds[m].dtype}"
                raise CubeError(f"{where}: its {m} ({found}) is not laid out as the cube's {m} (shape "
                                f"{cube[m].shape[1:]}, {cube[m].dtype}); expected a store generated from this cube")
            self.modalities[m] = truth
            self.available[m] = np.asarray(ds[f"{m}_available"].values, dtype=bool)
            self.attrs[m] = dict(ds[m].attrs)
        self.caption = CAPTION in ds.data_vars and ds[CAPTION].ndim == 1
        if not self.modalities and not self.caption:
            raise CubeError(f"{where} holds no generated modality and no generated caption; expected the output of "
                            "'eo-models generate'")
        self.model = str(own.extra.get("fusion_model") or "")

    def summary(self) -> dict[str, Any]:
        """What the overview says about the store."""
        return {"store": Path(self.path.rstrip("/")).name, "model": self.model, "complete": self.complete,
                "modalities": [{"name": m, "count": int(self.available[m].sum())} for m in self.modalities],
                "caption": self.caption}

    def has(self, i: int, m: str) -> bool:
        """Whether sample ``i`` has a generated ``m``."""
        return m in self.modalities and bool(self.available[m][i])

    def sample(self, i: int, m: str) -> xr.Dataset:
        """``<m>`` and ``<m>_valid`` of sample ``i``, loaded (as :func:`~.render.render` takes them)."""
        return self.ds[[m, f"{m}_valid"]].isel(sample=i).load()

    def describe(self, i: int, m: str) -> dict[str, Any]:
        """Provenance and crop of generated ``m`` (the same for every sample) and whether sample ``i`` has it."""
        a = self.attrs[m]
        source = provenance(a.get("generated_from"))
        patch = self.patch_px
        crop = int(a.get("crop_px") or patch)
        r0, c0 = (int(v) for v in (a.get("crop_offset_px") or (0, 0)))
        return {"modality": m, "title": self.modalities[m].title, "available": self.has(i, m), **source,
                "crop": {"px": crop, "offset_px": [r0, c0], "sample_px": patch, "whole": crop >= patch}}

    def caption_of(self, i: int) -> dict[str, Any] | None:
        """The generated caption of sample ``i`` with its provenance (None: the store has no captions)."""
        if not self.caption:
            return None
        text = str(self.ds[CAPTION][i].values)
        return {"text": text, "available": bool(text), **provenance(self.ds[CAPTION].attrs.get("generated_from"))}


def provenance(generated_from: Any) -> dict[str, Any]:
    """``generated_from`` attrs as the page shows them: the model, a short digest, the conditioning, the schedule,
    and the label ``generated from <conditioning> by <model>``."""
    g = generated_from if isinstance(generated_from, dict) else {}
    model = str(g.get("model") or "an unrecorded model")
    conditioning = [str(c) for c in g.get("conditioning") or []]
    schedule = g.get("schedule") if isinstance(g.get("schedule"), dict) else {}
    return {"model": model, "digest": str(g.get("digest") or "")[:12], "conditioning": conditioning,
            "schedule": ", ".join(f"{k} {v}" for k, v in schedule.items()),
            "label": f"generated from {', '.join(conditioning) or 'unrecorded modalities'} by {model}"}


def _check_samples(where: str, ds: xr.Dataset, own: CubeMeta, ids: np.ndarray) -> None:
    """The store holds the cube's samples in the cube's order: the same ``sample_id`` values, or, in a store without
    them, the same ``samples_hash`` (the hash of the cube's sample ids, as in its manifest)."""
    cube = [str(i) for i in ids]
    if "sample_id" not in ds.variables:
        if own.extra.get("samples_hash") == hash_ids(cube) and int(ds.sizes.get("sample", -1)) == len(cube):
            return
        raise CubeError(f"{where} has no sample_id and a samples_hash other than this cube's; expected a store of "
                        "'eo-models generate' over this cube")
    theirs = [str(i) for i in ds["sample_id"].values]
    if theirs == cube:
        return
    k = next((k for k, (a, b) in enumerate(zip(theirs, cube, strict=False)) if a != b), None)
    at = f"sample {k} is {theirs[k]!r} where the cube has {cube[k]!r}" if k is not None else \
        f"the first {min(len(theirs), len(cube))} are the cube's"
    raise CubeError(f"{where} was generated from another cube ({own.extra.get('cube', 'unrecorded')}): {len(theirs)} "
                    f"samples, {at}; expected a store of 'eo-models generate' over this cube ({len(cube)} samples, "
                    "in its order)")
