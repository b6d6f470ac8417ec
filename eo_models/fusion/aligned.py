"""Stores aligned with a cube: generated modalities (``eo-models generate``) and embeddings (``eo-models embed``).

An aligned store is a Zarr v3 store with the source cube's samples in the cube's order, so
``xr.open_zarr(store)`` lines up with ``xr.open_zarr(cube)`` sample by sample:

- dim ``sample``; coords copied from the cube: ``sample_id``, ``lon``, ``lat``, ``epsg``, ``x0``, ``y0``,
  ``anchor_time`` (every per-sample coordinate the cube has);
- the variables the writer declares (:class:`VarSpec`), each ``(sample, *dims)``;
- root attrs in the cube schema (:class:`~eo_dataset.cube.schema.CubeMeta`, ``eo_store: generated | embeddings``):
  the cube's ``grid`` and ``recipe_hash``, the schema (``modalities``) of the modalities the store holds or
  describes, the cube's statistics (``stats``) of those it holds as pixels, and ``eo_models_aligned`` (layout
  version), ``cube``, ``cube_samples``, ``samples_hash`` (:func:`eo_dataset.cube.manifest.hash_ids` of the cube's
  sample ids, as in its manifest), ``identity`` (what makes two runs the same run), ``block_samples``, ``complete``,
  ``eo_models_version``, plus the writer's own ``attrs``.

Two layouts are provided:

- **generated** (:func:`generated_variables`): each generated modality ``<m>`` is written as the cube writes it:
  ``<m>`` ``(sample, <m>_band, y_<res>, x_<res>)`` in the modality's stored dtype (scale/offset/nodata as in its
  schema attrs, which are copied onto the variable, plus ``generated_from``: model, digest, conditioning modalities,
  decoding schedule), ``<m>_valid``, ``<m>_available``, ``<m>_time`` (NaT: generated data have no acquisition time)
  and ``<m>_item`` (``""``). A modality generated on a centre crop of the sample (its token grid times its
  tokenizer's patch) keeps the full sample grid: pixels outside the crop hold the fill value and are not valid; the
  crop is recorded in the variable's attrs (``crop_px``, ``crop_offset_px`` in base pixels, ``crop_px_modality``).
  Generated captions (:func:`caption_variables`) are ``caption`` ``(sample)`` strings, as in a cube. Such a store
  reads with ``xr.open_zarr``, ``eo-dataset info`` and :class:`eo_dataset.torch.CubeDataset` (normalised with the
  source cube's statistics, which it carries).
- **embeddings** (:func:`embedding_variables`): ``embedding`` ``(sample, dim)`` float32 (pooled), per modality
  ``<m>_patch`` ``(sample, <m>_ty, <m>_tx, dim)`` float16 and ``<m>_available`` ``(sample)`` bool.

Writing is resumable as a cube build is. Work goes in blocks of ``block_samples`` consecutive samples; every
variable with more than one per-sample dim is stored one sample per chunk in shards of one block, the others in
chunks of one block, so a block writes objects of its own only. The build record lives in the Zarr group ``_build``
(xarray ignores it): ``_build/<kind>.json`` (the layout, written when the store is complete on disk) and one entry
per finished block in ``_build/<kind>/`` (:func:`eo_dataset.cube.manifest.mark_done`), written atomically after
the block's data: a kill between the two leaves the block to be done again.

At an ``s3://``, ``gs://`` or ``az://`` URL the store is an icechunk repository with the same layout
(:mod:`eo_models.tokens.versioned`): created in one commit on the branch ``eo-models-write``, each block's data and
entry (a group ``_build/<kind>/<block>``) in one commit, the build record in the ``manifest`` attr of ``_build``, and
``main`` moved to the commit that marks it complete by :meth:`AlignedStore.finish`; readers of ``main`` never see an
unfinished store. Several processes may write blocks at once there too (their commits are rebased).

Example::

    with open_cube("demo.zarr") as ds:  # eo_models.cube
        meta = cube_meta(ds, "demo.zarr")
    store = AlignedStore.create_or_resume("emb.zarr", "demo.zarr", kind="embeddings",
                                          variables=embedding_variables(128, {"s2l2a": (33, 33)}, meta),
                                          identity={"model_sha256": digest}, attrs={"pooling": "mean"}, block=16)
    for b in store.todo():
        rows = store.block_samples(b)
        store.write(b, {"embedding": ..., "s2l2a_patch": ..., "s2l2a_available": ...})
    store.finish()
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from eo_dataset._version import __version__
from eo_dataset.cube.manifest import (
    MANIFEST_DIR,
    atomic_write,
    done_blocks,
    hash_ids,
    is_folder,
    mark_done,
    read_manifest,
)
from eo_dataset.cube.schema import CubeMeta, ModalityMeta
from eo_dataset.cube.storage import is_object_url
from eo_dataset.cube.store import TIME_ENCODING, res_tag
from eo_dataset.errors import CubeError, OutputError
from eo_dataset.outputs import check_output, remove_ours, zarr_owned
from eo_dataset.torch.crop import crop_offset, plan_crop
from eo_models.cube import cube_meta, open_cube, store_attrs
from eo_models.errors import ConfigError
from eo_models.tokens.versioned import FINISHED, VersionedOutput, root_attrs

Kind = Literal["generated", "embeddings"]
FORMAT = 1  #: version of the aligned store layout (root attr ``eo_models_aligned``)
KINDS: tuple[str, ...] = ("generated", "embeddings")
WHAT = {"generated": "store of generated modalities written by eo-models",
        "embeddings": "store of embeddings written by eo-models"}
TITLE = {"generated": "4M4EO generated modalities", "embeddings": "4M4EO embeddings"}
#: root attrs the store writes itself; a writer's ``attrs`` may not use these names
RESERVED = frozenset({"title", "eo_store", "recipe", "recipe_hash", "eo_dataset_version", "grid", "modalities",
                      "anchor", "conventions", "stats", "eo_models_aligned", "cube", "cube_samples", "samples_hash",
                      "identity", "block_samples", "complete", "eo_models_version"})


# -- what a store holds ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VarSpec:
    """One variable of an aligned store, per sample (the store adds the leading ``sample`` dim).

    Attributes:
        dims: Per-sample dim names (``()`` for one value per sample).
        shape: Per-sample shape, one size per dim.
        dtype: A numpy dtype (``"uint16"``, ``"float16"`` ...), ``"str"`` for strings, or ``"datetime64[ns]"``
            (only for ``static`` variables).
        fill: The value of samples (and pixels) without data: what a block not written yet reads as, and what
            :meth:`AlignedStore.write` puts outside a ``window``. ``None``: NaN for floats, NaT for times, ``""`` for
            strings, 0 (False) otherwise.
        attrs: The variable's attrs (JSON-able).
        coords: Coordinate values of some of ``dims`` (e.g. band names), one per position along the dim.
        window: ``(row, col, height, width)`` over the last two dims: the part that holds data (a crop).
            :meth:`AlignedStore.write` then also takes arrays of the window's shape.
        static: The variable holds ``fill`` for every sample, written when the store is created; it is not passed
            to :meth:`AlignedStore.write`.
        modality: The modality this variable holds or describes: its schema goes to the store's root
            ``modalities`` attr (and, for the variable named as the modality, the cube's statistics of it to
            ``stats``).
    """

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    fill: Any = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    coords: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    window: tuple[int, int, int, int] | None = None
    static: bool = False
    modality: ModalityMeta | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.dims) != len(self.shape) or any(s < 1 for s in self.shape):
            raise ConfigError(f"VarSpec dims {self.dims} and shape {self.shape} do not fit: give one positive size "
                              "per dim")
        if "sample" in self.dims:
            raise ConfigError(f"VarSpec dims {self.dims} include 'sample'; give the per-sample dims only (the store "
                              "adds 'sample' first)")
        try:
            dtype = self.np_dtype
        except TypeError:
            raise ConfigError(f"VarSpec dtype {self.dtype!r} is not a numpy dtype; use e.g. 'uint16', 'float16', "
                              "'bool' or 'str'") from None
        if self.dtype != "str":
            object.__setattr__(self, "dtype", dtype.name)
        if self.fill is not None and dtype.kind in "biuf":
            try:
                with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # NaN or out of range: caught just below
                    fill = np.array(self.fill).astype(dtype)
            except (TypeError, ValueError, OverflowError):
                fill = None
            if fill is None or not (fill == self.fill or (dtype.kind == "f" and np.isnan(fill))):
                raise ConfigError(f"VarSpec fill {self.fill!r} is not a {dtype} value; give a fill value the dtype "
                                  "holds (e.g. the modality's nodata)")
            object.__setattr__(self, "fill", fill.item())
        if dtype.kind == "M" and not self.static:
            raise ConfigError("a datetime VarSpec must be static (one value for every sample, written at creation)")
        for dim, values in self.coords.items():
            if dim not in self.dims or len(values) != self.shape[self.dims.index(dim)]:
                raise ConfigError(f"VarSpec coords of {dim!r} ({len(values)} values) match no dim of {self.dims} "
                                  f"{self.shape}; give one value per position of one of its dims")
        if self.window is not None:
            r, c, h, w = self.window
            if len(self.shape) < 2 or r < 0 or c < 0 or h < 1 or w < 1 or r + h > self.shape[-2] or \
                    c + w > self.shape[-1]:
                raise ConfigError(f"VarSpec window {self.window} (row, col, height, width) does not fit in the last "
                                  f"two dims of shape {self.shape}")

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype (object for strings)."""
        return np.dtype(object) if self.dtype == "str" else np.dtype(self.dtype)

    @property
    def fill_value(self) -> Any:
        """``fill``, or the dtype's default (NaN, NaT, ``""``, 0)."""
        if self.fill is not None:
            return self.fill
        kind = self.np_dtype.kind
        return {"f": float("nan"), "M": np.datetime64("NaT", "ns"), "O": "", "b": False}.get(kind, 0)

    def describe(self) -> dict[str, Any]:
        """The layout as JSON-able data (what a resumed run must declare identically)."""
        return {"dims": list(self.dims), "shape": list(self.shape), "dtype": self.dtype, "fill": str(self.fill_value),
                "coords": {k: [str(v) for v in vals] for k, vals in self.coords.items()},
                "window": list(self.window) if self.window else None, "static": self.static,
                "modality": self.modality.name if self.modality else None}


@dataclass(frozen=True)
class GeneratedFrom:
    """Provenance of a generated modality (its ``generated_from`` attrs).

    Attributes:
        model: The fusion model's id (Hub repo id or folder).
        digest: A digest of its weights (e.g. sha256).
        conditioning: The modalities it was conditioned on (for a chained generation, the targets generated before
            this one included).
        schedule: The decoding schedule (e.g. ``{"type": "maskgit", "steps": 8, "temperature": 1.0}``).
    """

    model: str
    digest: str
    conditioning: tuple[str, ...]
    schedule: Mapping[str, Any]

    def to_attrs(self) -> dict[str, Any]:
        return {"model": self.model, "digest": self.digest, "conditioning": list(self.conditioning),
                "schedule": _jsonable(dict(self.schedule), "GeneratedFrom.schedule")}


def generated_variables(modality: ModalityMeta, dtype: str | np.dtype, grid: CubeMeta | Mapping[str, Any], *,
                        generated_from: GeneratedFrom, crop_px: int | None = None,
                        crop_offset_px: tuple[int, int] | None = None) -> dict[str, VarSpec]:
    """The variables of one generated modality, laid out as a cube lays out that modality.

    Args:
        modality: The modality's schema (``CubeDataset(cube).info[m].meta`` or ``CubeMeta.modalities[m]``).
        dtype: Its stored dtype (``CubeDataset(cube).info[m].dtype``).
        grid: The cube's metadata, or its ``grid`` attr (``patch_px``, ``pixel_size_m``).
        generated_from: Provenance, copied into the attrs of ``<m>``.
        crop_px: Side in base pixels of the centre crop that is generated (the token grid times the tokenizer's
            patch, e.g. 256 for patch 16 at 10 m); ``None``: the whole sample.
        crop_offset_px: ``(row, col)`` of the crop in base pixels; ``None``: the centre, as the token store
            (:mod:`eo_models.tokens.store`) reads it.

    Returns:
        ``{<m>, <m>_valid, <m>_available, <m>_time, <m>_item}``: pass them (with other modalities') to
        :meth:`AlignedStore.create_or_resume`. ``<m>`` and ``<m>_valid`` accept arrays of the crop's size.

    Raises:
        ConfigError: the crop does not fit the sample or is not a whole number of pixels at the modality's resolution.
    """
    g = grid.grid if isinstance(grid, CubeMeta) else grid
    patch, base = int(g["patch_px"]), float(g["pixel_size_m"])
    m, f = modality.name, round(modality.resolution_m / base)
    side = patch // f
    crop = patch if crop_px is None else crop_px
    try:
        plan = plan_crop(crop, "center", patch, base, [modality.resolution_m])
    except CubeError as exc:
        raise ConfigError(f"generated {m}: {exc}") from None
    r0, c0 = crop_offset(plan) if crop_offset_px is None else crop_offset_px
    if r0 % f or c0 % f or not (0 <= r0 <= patch - crop and 0 <= c0 <= patch - crop):
        raise ConfigError(f"generated {m}: crop offset {(r0, c0)} px does not fit a {crop} px crop in a {patch} px "
                          f"sample on {f}-pixel steps; give offsets that are multiples of {f} within the sample")
    window = (r0 // f, c0 // f, crop // f, crop // f) if crop != patch else None
    r = res_tag(modality.resolution_m)
    pixels, valid = ("sample", f"y_{r}", f"x_{r}"), (f"y_{r}", f"x_{r}")
    attrs = {**modality.to_attrs(), "generated_from": generated_from.to_attrs(), "crop_px": crop,
             "crop_offset_px": [r0, c0], "crop_px_modality": crop // f}
    nb = len(modality.bands)
    return {
        m: VarSpec((f"{m}_band", *pixels[1:]), (nb, side, side), np.dtype(dtype).name, fill=modality.fill_value,
                   attrs=attrs, coords={f"{m}_band": list(modality.bands)}, window=window, modality=modality),
        f"{m}_valid": VarSpec(valid, (side, side), "bool", window=window,
                              attrs={"description": f"pixel of {m} generated and valid (False outside the crop)"}),
        f"{m}_available": VarSpec((), (), "bool", attrs={"description": f"{m} was generated for the sample"}),
        f"{m}_time": VarSpec((), (), "datetime64[ns]", static=True,
                             attrs={"description": "NaT: generated data have no acquisition time"}),
        f"{m}_item": VarSpec((), (), "str", static=True, attrs={"description": "empty: no source item"}),
    }


def caption_variables(generated_from: GeneratedFrom, name: str = "caption") -> dict[str, VarSpec]:
    """``<name>`` ``(sample)``: generated captions, as a cube holds its text modality (``""`` where none was
    generated)."""
    return {name: VarSpec((), (), "str", attrs={"description": "generated by a fusion model",
                                                     "generated_from": generated_from.to_attrs()})}


def embedding_variables(dim: int, grids: Mapping[str, tuple[int, int]],
                        modalities: CubeMeta | Mapping[str, ModalityMeta]) -> dict[str, VarSpec]:
    """The variables of an embeddings store.

    Args:
        dim: Embedding width.
        grids: ``{modality: (ty, tx)}``: each modality's token grid (its per-patch embeddings).
        modalities: The cube's metadata (or its modalities' schema): what each modality is.

    Returns:
        ``embedding`` ``(sample, dim)`` float32; per modality ``<m>_patch`` ``(sample, <m>_ty, <m>_tx, dim)``
        float16 and ``<m>_available`` ``(sample)`` bool. Missing values are NaN.

    Raises:
        ConfigError: a modality the cube does not have.
    """
    metas = modalities.modalities if isinstance(modalities, CubeMeta) else modalities
    out = {"embedding": VarSpec(("dim",), (dim,), "float32",
                                attrs={"description": "pooled embedding of the sample (NaN: none)"})}
    for m, (ty, tx) in grids.items():
        if m not in metas:
            raise ConfigError(f"embeddings of modality {m!r}, which the cube does not have; it has {sorted(metas)}")
        out[f"{m}_patch"] = VarSpec((f"{m}_ty", f"{m}_tx", "dim"), (ty, tx, dim), "float16", modality=metas[m],
                                    attrs={"description": f"embedding of each {m} token (NaN: sample without {m})"})
        out[f"{m}_available"] = VarSpec((), (), "bool", attrs={"description": f"{m} entered the encoder"})
    return out


# -- the store -------------------------------------------------------------------------------------------------------
class AlignedStore:
    """A store aligned with a cube, open for writing blocks (see the module docstring).

    Make one with :meth:`create_or_resume`; then :meth:`write` every block of :meth:`todo` and :meth:`finish`.
    Blocks may be written in any order, and by several processes at once (each block writes objects of its own;
    create and finish the store in one of them).
    """

    def __init__(self, path: Path | str, kind: Kind, variables: dict[str, VarSpec], n_samples: int, block: int,
                 output: VersionedOutput | None = None) -> None:
        self.path = path
        self.output = output  # the repository of a store at an object-storage URL (None: a local folder)
        self.kind = kind
        self.variables = variables
        self.n_samples = n_samples
        self.block = block
        self._group: zarr.Group | None = None

    def __repr__(self) -> str:
        return (f"AlignedStore({os.fspath(self.path)!r}, kind={self.kind!r}, {self.n_samples} samples, "
                f"{self.n_blocks} blocks of {self.block}, {len(self.todo())} to do)")

    @classmethod
    def create_or_resume(cls, out: str | os.PathLike[str], cube: str | os.PathLike[str], *, kind: Kind,
                         variables: Mapping[str, VarSpec], identity: Mapping[str, Any],
                         attrs: Mapping[str, Any] | None = None, block: int = 16,
                         option: str = "--out") -> AlignedStore:
        """Create ``out`` aligned with ``cube``, or resume it when it is this kind of store of the same run.

        Args:
            out: Local path: new, an empty folder, or a store of this ``kind`` for the same cube, ``identity`` and
                variables (resumed; it keeps the block size it was created with). Anything else is refused and
                left untouched. A store whose creation was interrupted is created again (deleted first, only if
                every file in it is one such a store has). Or an ``s3://``, ``gs://``, ``az://`` URL: an icechunk
                repository (see the module docstring), with the same rules.
            cube: The source cube (local path or URL).
            kind: ``"generated"`` or ``"embeddings"``.
            variables: ``{name: VarSpec}`` (:func:`generated_variables`, :func:`caption_variables`,
                :func:`embedding_variables`, or your own).
            identity: JSON-able; what makes two runs the same (model id and digest, modalities, schedule ...).
                Stored as the root attr ``identity``.
            attrs: Other JSON-able root attrs (descriptions; not compared on resume).
            block: Samples per block.
            option: The option that named ``out``, for messages.

        Raises:
            OutputError: ``out`` is a file, a folder or Zarr store of something else (a cube, a store of the other
                kind), holds files that are not ours, or cannot be written.
            ConfigError: a bad argument, or ``out`` holds a store of another cube, identity or variables.
            NotACubeError: ``cube`` is not an eo-dataset cube.
        """
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {list(KINDS)}, found {kind!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ConfigError(f"block must be a positive int (samples per block), found {block!r}")
        variables = dict(variables)
        if not variables:
            raise ConfigError("no variables given; pass {name: VarSpec} for what the store holds")
        identity = _jsonable(dict(identity), "identity")
        attrs = _jsonable(dict(attrs or {}), "attrs")
        clash = sorted(RESERVED & set(attrs))
        if clash:
            raise ConfigError(f"attrs {clash} are written by the store itself; rename them")
        if is_object_url(os.fspath(out)):
            return cls._in_repository(os.fspath(out), cube, kind, variables, identity, attrs, block, option)
        state = check_output(out, what=WHAT[kind], marker="zarr.json", option=option)
        path = Path(out)
        info = _cube_info(cube)
        _check_variables(variables, info)
        layout = {name: spec.describe() for name, spec in variables.items()}
        if state == "ours":
            stored = _existing_attrs(path, kind, option)
            record = _record(path, kind)
            if record is not None:
                _check_same_run(path, kind, stored, record, info, identity, layout, option)
                return cls(path, kind, variables, info["n"], int(record["block_samples"]))._resumed()
        tmp = path.with_name(f".{path.name}.creating")
        owned = zarr_owned([MANIFEST_DIR])
        if tmp.exists():  # a creation killed before its rename
            remove_ours(tmp, what=WHAT[kind], owned=owned, option=f"{option}'s temporary folder")
        _create(tmp, cube, kind, info, variables, identity, attrs, layout, block)
        if state == "ours":  # an interrupted creation of ours (no build record): replace it, if only ours is in it
            remove_ours(path, what=WHAT[kind], owned=owned, option=option)
        elif state == "empty":
            path.rmdir()
        os.rename(tmp, path)
        return cls(path, kind, variables, info["n"], block)

    @classmethod
    def _in_repository(cls, url: str, cube: str | os.PathLike[str], kind: Kind, variables: dict[str, VarSpec],
                       identity: dict[str, Any], attrs: dict[str, Any], block: int, option: str) -> AlignedStore:
        """:meth:`create_or_resume` at an object-storage URL: an icechunk repository (:mod:`eo_models.tokens.versioned`;
        created in one commit, one commit per block, published to ``main`` by :meth:`finish`)."""
        info = _cube_info(cube)  # the inputs checked before anything is written
        _check_variables(variables, info)
        layout = {name: spec.describe() for name, spec in variables.items()}
        output = VersionedOutput(url, kind, WHAT[kind], option)
        for where in (output.published(), output.head()):
            if where is None or root_attrs(where) is None:
                continue
            stored = _existing_attrs(where, kind, option, url)
            record = _record(where, kind)
            if record is not None:
                _check_same_run(url, kind, stored, record, info, identity, layout, option)  # type: ignore[arg-type]
                return cls(url, kind, variables, info["n"], int(record["block_samples"]), output)
        with output.commit(f"eo-models {kind}: create") as store:
            _create(store, cube, kind, info, variables, identity, attrs, layout, block)
        return cls(url, kind, variables, info["n"], block, output)

    # -- blocks --------------------------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_samples / self.block)

    def block_samples(self, b: int) -> slice:
        """The samples (cube indices) of block ``b``."""
        self._check_block(b)
        return slice(b * self.block, min(self.n_samples, (b + 1) * self.block))

    def todo(self) -> list[int]:
        """Blocks not written yet, in order."""
        where = self.path if self.output is None else self.output.head()
        return sorted(set(range(self.n_blocks)) - done_blocks(where, self.kind))

    @property
    def complete(self) -> bool:
        """Every block written and the store finished (:meth:`finish`; at a URL: published)."""
        if self.output is not None:
            return self.output.published() is not None
        return bool(zarr.open_group(self.path, mode="r", zarr_format=3).attrs.get("complete"))

    def write(self, b: int, arrays: Mapping[str, np.ndarray], entry: Mapping[str, Any] | None = None) -> None:
        """Write block ``b``'s data, then record the block as done.

        Args:
            b: Block index (see :meth:`todo`, :meth:`block_samples`).
            arrays: One array per non-static variable, ``(block's samples, *shape)`` (or ``(..., *window)`` for a
                variable with a window: placed there, the fill value elsewhere), of a dtype that casts to the
                variable's within its kind (float32 -> float16 is fine, float -> uint16 is not: convert
                explicitly).
            entry: Extra JSON-able facts for the block's entry in the build record (counts, settings).

        Raises:
            ConfigError: a bad block, a missing or unknown variable, a wrong shape or dtype, or a finished store.
        """
        t0 = time.perf_counter()
        rows = self.block_samples(b)
        nb = rows.stop - rows.start
        if self.complete:
            raise ConfigError(f"{self.path} is finished (complete); nothing more can be written to it")
        want = {k for k, s in self.variables.items() if not s.static}
        missing, unknown = sorted(want - set(arrays)), sorted(set(arrays) - want)
        if missing or unknown:
            raise ConfigError(f"block {b}: arrays for {sorted(arrays)}; expected {sorted(want)} (missing {missing}, "
                              f"unknown {unknown})")
        data = {name: self._block_array(name, np.asarray(arrays[name]), nb) for name in sorted(want)}
        facts = _jsonable(dict(entry or {}), "entry")
        if self.output is not None:  # data and entry in one commit
            with self.output.commit(f"eo-models {self.kind}: block {b}") as store:
                group = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
                for name, values in data.items():
                    group[name][rows] = values
                mark_done(store, b, {"samples": [rows.start, rows.stop], **facts,
                                     "seconds": round(time.perf_counter() - t0, 3)}, sub=self.kind)
            return
        group = self._open()
        for name, values in data.items():
            group[name][rows] = values
        mark_done(self.path, b, {"samples": [rows.start, rows.stop], **facts,
                                 "seconds": round(time.perf_counter() - t0, 3)}, sub=self.kind)

    def finish(self) -> None:
        """Consolidate the metadata and mark the store complete (every block must be written).

        Raises:
            ConfigError: blocks are left to write.
        """
        left = self.todo()
        if left:
            raise ConfigError(f"{self.path}: {len(left)} of {self.n_blocks} blocks not written yet (first {left[:5]}); "
                              "write them before finish()")
        if self.complete:
            return
        if self.output is not None:  # marked complete in the last commit, then published
            with self.output.commit(f"{FINISHED} {self.kind} of {self.n_samples} samples") as store:
                zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False).attrs.update(
                    {"complete": True})
            self.output.publish()
            return
        _remove_partial_writes(self.path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # the build record's files are no zarr nodes
            zarr.consolidate_metadata(str(self.path), zarr_format=3)
        # marked complete last, on the consolidated group (reopened, so the consolidated metadata is kept)
        zarr.open_group(self.path, mode="r+", zarr_format=3).attrs.update({"complete": True})
        self._group = None

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _resumed(self) -> AlignedStore:
        if not self.complete and self.output is None:
            _remove_partial_writes(self.path)
        return self

    def _open(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(self.path, mode="r+", zarr_format=3, use_consolidated=False)
        return self._group

    def _check_block(self, b: int) -> None:
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or not 0 <= b < self.n_blocks:
            raise ConfigError(f"block {b!r} is not a block of {self.path}: it has blocks 0..{self.n_blocks - 1}")

    def _block_array(self, name: str, x: np.ndarray, nb: int) -> np.ndarray:
        spec = self.variables[name]
        full = (nb, *spec.shape)
        windowed = (nb, *spec.shape[:-2], *spec.window[2:]) if spec.window else None
        if x.shape not in (full, windowed):
            crop = f" or {windowed} (the window)" if windowed else ""
            raise ConfigError(f"{name}: array of shape {x.shape}; expected {full}{crop}")
        dtype = spec.np_dtype
        if dtype.kind == "O":
            if x.dtype.kind not in "OUT":
                raise ConfigError(f"{name}: array of dtype {x.dtype}; expected strings")
            return x.astype(object)
        if not np.can_cast(x.dtype, dtype, "same_kind"):
            raise ConfigError(f"{name}: array of dtype {x.dtype}, which does not cast safely to the store's "
                              f"{dtype}; convert it (e.g. round and clip to {dtype}) before writing")
        if x.shape == full:
            return x.astype(dtype, copy=False)
        r, c, h, w = spec.window  # type: ignore[misc]
        out = np.full(full, spec.fill_value, dtype=dtype)
        out[..., r:r + h, c:c + w] = x
        return out


# -- creation, identity ----------------------------------------------------------------------------------------------
def _jsonable(value: Any, what: str) -> Any:
    """As it reads back from JSON attrs (tuples become lists), so stored and fresh values compare equal."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be JSON-able (str, numbers, lists, dicts; no NaN): {exc}") from None


def _cube_info(cube: str | os.PathLike[str]) -> dict[str, Any]:
    with open_cube(cube) as ds:
        meta = cube_meta(ds, cube)
        names = [k for k, v in ds.coords.items() if v.dims == ("sample",)]
        coords = {k: np.asarray(v) for k, v in zip(names, dask.compute(*(ds[k].data for k in names),
                                                                       scheduler="synchronous"), strict=True)}
        ids = coords["sample_id"]
        layout = {m: (ds[m].dims[1:], ds[m].shape[1:], ds[m].dtype) for m in meta.modalities if m in ds}
    return {"n": len(ids), "samples_hash": hash_ids([str(i) for i in ids]), "coords": coords, "meta": meta,
            "recipe_hash": meta.recipe_hash or "", "cube": os.fspath(cube), "layout": layout}


def _check_variables(variables: dict[str, VarSpec], info: dict[str, Any]) -> None:
    """Names, shared dims and modality layouts that fit together and with the cube."""
    sizes: dict[str, int] = {}
    for name, spec in variables.items():
        if not isinstance(spec, VarSpec):
            raise ConfigError(f"variable {name!r}: a {type(spec).__name__}; expected a VarSpec")
        if name in info["coords"] or name == "sample":
            raise ConfigError(f"variable {name!r} has the name of a coordinate the store copies from the cube; "
                              "rename it")
        for dim, size in zip(spec.dims, spec.shape, strict=True):
            if sizes.setdefault(dim, size) != size:
                raise ConfigError(f"dim {dim!r} has size {size} in {name!r} but {sizes[dim]} in another variable; "
                                  "a dim has one size in a store")
        m = spec.modality
        if m is not None and name == m.name and m.name in info["layout"]:
            dims, shape, dtype = info["layout"][m.name]
            mine = (spec.dims, spec.shape, spec.np_dtype)
            if mine != (tuple(dims), tuple(shape), np.dtype(dtype)):
                raise ConfigError(f"{name}: dims {spec.dims}, shape {spec.shape}, dtype {spec.dtype}; the cube has "
                                  f"{tuple(dims)}, {tuple(shape)}, {np.dtype(dtype)}: a generated modality is laid "
                                  "out as the cube's (see generated_variables)")
    metas: dict[str, ModalityMeta] = {}
    for name, spec in variables.items():
        m = spec.modality
        if m is not None and metas.setdefault(m.name, m) != m:
            raise ConfigError(f"variable {name!r} gives modality {m.name!r} another schema than another variable")


def _record_path(path: Path, kind: str) -> Path:
    return path / MANIFEST_DIR / f"{kind}.json"


def _record(path: Path | zarr.abc.store.Store, kind: str) -> dict[str, Any] | None:
    if not is_folder(path):  # in a repository: the build group's "manifest" attr (see _create)
        return read_manifest(path)
    p = _record_path(path, kind)
    return json.loads(p.read_text()) if p.is_file() else None


def _existing_attrs(path: Path | zarr.abc.store.Store, kind: str, option: str, name: str | None = None
                    ) -> dict[str, Any]:
    """The root attrs of ``path`` (a folder with a ``zarr.json``, or a version of the repository at the URL
    ``name``), which must be an aligned store of ``kind``.

    Raises:
        OutputError: another Zarr store (a cube, a token store, the other kind), or damaged metadata.
    """
    try:
        attrs = store_attrs(path, kind, WHAT[kind], option)  # type: ignore[arg-type]
    except OutputError as exc:
        raise OutputError(str(exc).replace(str(path), name or str(path))) from None
    path = name or path  # type: ignore[assignment]
    if "eo_models_aligned" not in attrs:
        raise OutputError(f"{option} {path} is not a {WHAT[kind]} (no 'eo_models_aligned' attr); it is left "
                          f"untouched: choose a new or empty folder for {option}")
    return attrs


def _check_same_run(path: Path, kind: str, attrs: dict[str, Any], record: dict[str, Any], info: dict[str, Any],
                    identity: dict[str, Any], layout: dict[str, Any], option: str) -> None:
    """A resumed store must be of the same layout version, cube, identity and variables as this run."""
    hint = f"; pass another {option}"
    if attrs.get("eo_models_aligned") != FORMAT:
        raise ConfigError(f"{path} is a {kind} store of another eo-models version (layout "
                          f"{attrs.get('eo_models_aligned')}, this version writes {FORMAT}) and cannot be resumed"
                          f"{hint}")
    stored = {k: attrs.get(k) for k in ("recipe_hash", "cube_samples", "samples_hash")}
    fresh = {"recipe_hash": info["recipe_hash"], "cube_samples": info["n"], "samples_hash": info["samples_hash"]}
    if stored != fresh:
        diff = sorted(k for k in stored if stored[k] != fresh[k])
        raise ConfigError(f"{path} is aligned with another cube ({attrs.get('cube')}, recipe {stored['recipe_hash']}, "
                          f"{stored['cube_samples']} samples; differs in {diff}){hint}")
    have = attrs.get("identity") or {}
    if have != identity:
        diff = sorted(k for k in set(have) | set(identity) if have.get(k) != identity.get(k))
        raise ConfigError(f"{path} was written by another run (identity differs in {diff}: stored "
                          f"{ {k: have.get(k) for k in diff} }, now { {k: identity.get(k) for k in diff} }){hint}")
    old = record.get("variables") or {}
    if old != layout:
        diff = sorted(k for k in set(old) | set(layout) if old.get(k) != layout.get(k))
        raise ConfigError(f"{path} holds other variables (differ in {diff}) for the same identity{hint}")


def _create(tmp: Path | zarr.abc.store.Store, cube: str | os.PathLike[str], kind: str, info: dict[str, Any],
            variables: dict[str, VarSpec],
            identity: dict[str, Any], attrs: dict[str, Any], layout: dict[str, Any], block: int) -> None:
    """Write the store's metadata, coords and static variables at ``tmp``; data left unwritten (fill values)."""
    n = info["n"]
    b = min(block, n)
    chunk1d = max(1, min(n, block * 1024))
    coords: dict[str, Any] = {k: ("sample", v) for k, v in info["coords"].items()}
    encoding: dict[str, Any] = {k: {"chunks": (chunk1d,), **(TIME_ENCODING if v.dtype.kind == "M" else {})}
                                for k, v in info["coords"].items()}
    data: dict[str, Any] = {}
    for name, spec in variables.items():
        for dim, values in spec.coords.items():
            coords[dim] = (dim, np.asarray(list(values), dtype=object))
            encoding[dim] = {}
        dims, shape, dtype = ("sample", *spec.dims), (n, *spec.shape), spec.np_dtype
        if spec.static or dtype.kind == "O":  # small, written now (strings cannot be created lazily)
            values = np.full(shape, spec.fill_value, dtype=dtype)
            chunks = (chunk1d if spec.static else b, *spec.shape)
        else:
            chunks = (b, *spec.shape)
            values = da.full(shape, spec.fill_value, dtype=dtype, chunks=chunks)
        enc: dict[str, Any] = {"chunks": chunks}
        if dtype.kind == "M":
            enc.update(TIME_ENCODING)
        elif dtype.kind != "O":
            enc["fill_value"] = spec.fill_value
        if len(spec.shape) >= 2:  # one sample per chunk, one block per shard, as the cube's pixel arrays
            enc.update(chunks=(1, *spec.shape), shards=(b, *spec.shape))
        data[name] = xr.Variable(dims, values, attrs=dict(spec.attrs))
        encoding[name] = enc
    source: CubeMeta = info["meta"]
    metas = {s.modality.name: s.modality for s in variables.values() if s.modality is not None}
    stats = {m: source.stats[m] for m in metas if m in variables and source.stats and m in source.stats}
    extra = {"eo_models_aligned": FORMAT, "cube": info["cube"], "cube_samples": n,
             "samples_hash": info["samples_hash"], "identity": identity, "block_samples": block, "complete": False,
             "eo_models_version": __version__, **attrs}
    meta = CubeMeta(store=kind, title=TITLE[kind], grid=source.grid, recipe_hash=info["recipe_hash"],
                    modalities=metas, stats=stats or None, extra=extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        xr.Dataset(data, coords=coords, attrs=meta.to_attrs()).to_zarr(
            tmp, mode="w-", zarr_format=3, compute=False, consolidated=False, encoding=encoding)
    # the build record lives in a Zarr group of its own, as a cube's does, so Zarr tools see a valid hierarchy
    record = json.dumps({"n_samples": n, "block_samples": block, "n_blocks": math.ceil(n / block),
                         "variables": layout})
    # in a repository (no files) the record is the build group's "manifest" attr, where a cube's manifest is: what
    # eo_dataset.cube.storage.open_version looks for in a finished version
    extra_attrs = {} if is_folder(tmp) else {"manifest": record}
    zarr.open_group(tmp, mode="r+", zarr_format=3, use_consolidated=False).create_group(
        MANIFEST_DIR, attributes={"role": f"eo-models {kind} store build record", **extra_attrs})
    if is_folder(tmp):
        atomic_write(_record_path(Path(tmp), kind), record)


def _remove_partial_writes(path: Path) -> None:
    """Delete the temporary files of writes a kill interrupted (Zarr writes ``<key>.<uuid>.partial`` + rename)."""
    for p in path.rglob("*.partial"):
        p.unlink(missing_ok=True)
