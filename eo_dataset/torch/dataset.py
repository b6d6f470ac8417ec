"""``CubeDataset``: one aligned multi-modal sample per index, as torch tensors.

A sample (a dict) holds, for every requested modality ``<m>``:

==================  =====================  ======================================================================
key                 shape, dtype           meaning
==================  =====================  ======================================================================
``<m>``             ``(C, H, W)``          the pixels (see below)
``<m>_valid``       ``(H, W)`` bool        pixel has data and passed the quality mask
``<m>_available``   ``()`` bool            the sample has this modality
``<m>_time``        ``()`` float64         acquisition time, POSIX seconds (UTC); NaN if unavailable
==================  =====================  ======================================================================

``<m>`` by the modality's ``kind`` (its attr): ``continuous`` data become float32 ``(stored - mean) / std`` per band
with the cube's statistics (:class:`Normalize`), 0 where not valid; ``categorical`` data become int64 class ids
(stored values, fill value where not valid); other kinds (e.g. ``osm`` presence layers, 0/1) keep their stored dtype,
0 where not valid. With ``normalize=False`` every modality comes as stored (the stored dtype, fill values
included). ``<m>`` and ``<m>_valid`` are left out when the sample does not have the modality
(:func:`collate` fills them with zeros for a batch). ``H, W`` are the crop (or sample) side at the modality's
resolution, so a 10 m and a 30 m modality cover exactly the same ground. Besides: ``sample_id`` (str), ``index``
(int, position in the cube), ``caption`` (str, ``""`` if the cube has none), ``crs`` (``"EPSG:326xx"``),
``bounds`` (float64 ``(4,)``: xmin, ymin, xmax, ymax of the returned window in ``crs``) and ``time`` (the anchor's
time, POSIX seconds, NaN when the anchor is missing).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from eo_dataset.cube.schema import CubeMeta, ModalityMeta
from eo_dataset.errors import CubeError
from eo_dataset.torch.buffers import BufferPool
from eo_dataset.torch.collate import Shapes, collate
from eo_dataset.torch.crop import CropPlan, crop_offset, plan_crop
from eo_dataset.torch.handle import CubeHandle, open_metadata, pin
from eo_dataset.torch.normalize import Normalize


@dataclass(frozen=True)
class ModalityInfo:
    """One modality as this dataset loads it: the cube's metadata of it (:class:`ModalityMeta`: bands, kind,
    units, classes, display ...) plus where it sits in the dataset (its stored dtype, its resolution as a multiple
    of the grid's base resolution)."""

    meta: ModalityMeta
    factor: int  # resolution / base resolution
    dtype: np.dtype

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def bands(self) -> tuple[str, ...]:
        return self.meta.bands

    @property
    def resolution_m(self) -> float:
        return self.meta.resolution_m

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def nodata(self) -> float:
        """The stored value of missing pixels (NaN when the modality has no nodata value)."""
        return self.meta.fill_value


def _seconds(times: np.ndarray) -> np.ndarray:
    """datetime64 -> float64 POSIX seconds, NaN for NaT."""
    t = np.asarray(times).astype("datetime64[us]")
    out = t.astype(np.int64).astype(np.float64) / 1e6
    out[np.isnat(t)] = np.nan
    return out


class CubeDataset(Dataset[dict[str, Any]]):
    """Aligned multi-modal samples of a cube for PyTorch (see the module docstring for the sample layout).

    Args:
        cube: Local path or fsspec URL (``http://``, ``s3://`` ...) of a cube built by eo-dataset.
        modalities: Modality names to load (default: all of the cube's, in cube order).
        crop: Crop side in pixels of the grid's base resolution (``None``: the whole sample). It must be a whole
            number of pixels at every loaded resolution (e.g. a multiple of 3 for 10 m + 30 m).
        crop_mode: ``"random"`` (offset drawn with torch's generator) or ``"center"``.
        normalize: Normalise continuous modalities with the cube's statistics (:class:`Normalize`), categorical
            ones as int64, others as float32 (see the module docstring). ``False`` returns the stored values and
            dtypes (then apply :attr:`normalizer` to batches yourself, e.g. on the GPU).
        transforms: Called with each sample dict, returns the dict to yield.
        storage_options: fsspec options for URLs (credentials, headers ...).
        at: For a cube on object storage (``s3://``, ``gs://``, ``az://``): the version to load, a snapshot id, tag
            or branch (``eo-dataset info URL`` lists them); default the latest finished one. Either way the version
            is pinned when the dataset is made (:attr:`at` holds its snapshot id): every worker reads that one, even
            if a build publishes a newer version meanwhile.
        codec_pipeline: ``"auto"`` (zarrs when installed), ``"zarrs"`` or ``"zarr"``: which Zarr codec pipeline
            decodes the pixels (see :class:`~eo_dataset.torch.handle.CubeHandle`).

    Raises:
        CubeError: the cube cannot be opened, a modality is not in it, or the crop does not fit.

    Example:
        >>> ds = CubeDataset("demo.zarr", ["s2l2a", "landsat"], crop=120)  # doctest: +SKIP
        >>> loader = DataLoader(ds, batch_size=8, sampler=ShardSampler(ds), collate_fn=ds.collate_fn)  # doctest: +SKIP
    """

    def __init__(self, cube: str | os.PathLike[str], modalities: Sequence[str] | None = None, *,
                 crop: int | None = None, crop_mode: str = "random", normalize: bool = True,
                 transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 storage_options: dict[str, Any] | None = None, codec_pipeline: str = "auto",
                 at: str | None = None) -> None:
        self.at = pin(cube, at)  # None where the cube has no versions
        with open_metadata(cube, storage_options, at=self.at) as ds:
            self.meta = CubeMeta.from_attrs(ds.attrs, str(cube))
            meta = self.meta.modalities
            if isinstance(modalities, str):
                modalities = [modalities]
            names = list(meta) if modalities is None else list(modalities)
            unknown = [m for m in names if m not in meta]
            if unknown or not names:
                raise CubeError(f"unknown modalities {unknown}; the cube has {list(meta)}" if unknown else
                                f"no modalities requested; the cube has {list(meta)}")
            if len(set(names)) != len(names):
                raise CubeError(f"modalities {names} name one modality twice; name each once")
            self.base_m = self.meta.pixel_size_m
            self.patch_px = self.meta.patch_px
            self.info: dict[str, ModalityInfo] = {
                m: ModalityInfo(meta[m], round(meta[m].resolution_m / self.base_m), np.dtype(ds[m].dtype))
                for m in names}
            self.modalities: list[str] = names
            self.location = str(cube)
            self.attrs: dict[str, Any] = dict(ds.attrs)
            enc = ds[names[0]].encoding
            self.shard_samples = int((enc.get("shards") or enc.get("chunks") or (1,))[0])
            self.has_caption = "caption" in ds.variables

            small = ["sample_id", "epsg", "x0", "y0", "anchor_time"]
            small += [f"{m}_{s}" for m in names for s in ("available", "time")]
            values = dict(zip(small, dask.compute(*(ds[v].data for v in small), scheduler="synchronous"), strict=True))
        self.sample_ids = np.asarray(values["sample_id"])
        self.epsg = np.asarray(values["epsg"]).astype(np.int64)
        self.x0 = np.asarray(values["x0"], dtype=np.float64)
        self.y0 = np.asarray(values["y0"], dtype=np.float64)
        self.time = _seconds(values["anchor_time"])
        self.availability = np.stack([np.asarray(values[f"{m}_available"], dtype=bool) for m in names], axis=1)
        self.times = np.stack([_seconds(values[f"{m}_time"]) for m in names], axis=1)
        self.times[~self.availability] = np.nan

        self.crop: CropPlan | None = None
        if crop is not None:
            self.crop = plan_crop(crop, crop_mode, self.patch_px, self.base_m,
                                  [i.resolution_m for i in self.info.values()])
        elif crop_mode not in ("random", "center"):
            raise CubeError(f"crop_mode must be 'random' or 'center', found {crop_mode!r}")
        self.normalize = normalize
        self._normalizer: Normalize | None = None
        if normalize:
            self._normalizer = self.normalizer  # fail now, not in a worker, when the cube has no stats
        self.transforms = transforms
        self.handle = CubeHandle(cube, storage_options, codec_pipeline, at=self.at)
        self._buffers: dict[str, np.ndarray] = {}
        self._buffers_pid: int | None = None
        self._pool = BufferPool()  # batch buffers of this process, reused once nobody holds them

    # -- description ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sample_ids)

    def __repr__(self) -> str:
        crop = f"{self.crop.size} px {self.crop.mode}" if self.crop else "none"
        at = f", at={self.at!r}" if self.at else ""
        return (f"CubeDataset({self.location!r}{at}, {len(self)} samples, modalities={self.modalities}, crop={crop}, "
                f"normalize={self.normalize})")

    @property
    def normalizer(self) -> Normalize:
        """The cube's normalisation of the loaded continuous modalities (the same one eo_models uses)."""
        if self._normalizer is None:
            self._normalizer = Normalize.from_cube(self.meta, self.modalities)
        return self._normalizer

    @property
    def side_px(self) -> int:
        """Side of the returned window in base pixels (the crop, or the whole sample)."""
        return self.crop.size if self.crop else self.patch_px

    @property
    def shapes(self) -> Shapes:
        """``{modality: ((C, H, W), dtype)}`` of the tensors this dataset returns."""
        out = {}
        for m, i in self.info.items():
            side = self.side_px // i.factor
            dtype = torch.from_numpy(np.zeros(0, dtype=i.dtype)).dtype  # as stored
            if self.normalize and i.kind == "continuous":
                dtype = torch.float32
            elif self.normalize and i.kind == "categorical":
                dtype = torch.int64
            out[m] = ((len(i.bands), side, side), dtype)
        return out

    @property
    def collate_fn(self) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        """:func:`collate` bound to this dataset's shapes (picklable, for ``DataLoader(collate_fn=...)``)."""
        return partial(collate, shapes=self.shapes)

    # -- reading -------------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample (see the module docstring for its keys)."""
        batch = self._read([self._index(index)], shared=False)  # a sample leaves a worker through torch's own sharing
        sample = _unbatch(batch, self.modalities)[0]
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def __getitems__(self, indices: Sequence[int]) -> Sequence[dict[str, Any]]:
        """Samples for a DataLoader batch, read together straight into the batch's tensors.

        Returns the same sample dicts as ``[self[i] for i in indices]`` (a sequence that makes them when first
        asked for); :func:`collate` then hands over the already stacked batch (in shared memory when called in a
        DataLoader worker) instead of copying it again.
        With ``transforms`` the samples are read one by one.
        """
        if self.transforms is not None:
            return [self[i] for i in indices]
        batch = self._read([self._index(i) for i in indices], shared=get_worker_info() is not None)
        return CollatedSamples(batch, self.modalities)

    def get_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """A collated batch of samples (as ``collate([self[i] for i in indices])``, read in one go)."""
        return collate(self.__getitems__(list(indices)), self.shapes)

    def _index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"sample index {index} out of range for a cube of {n} samples")
        return i % n

    def _read(self, indices: list[int], shared: bool) -> dict[str, Any]:
        """Read samples into batch tensors: ``<m>`` ``(B, C, H, W)``, zeros (and valid False) where unavailable.

        Each array is read in spans of neighbouring samples (see :func:`read_spans`): one zarr selection decodes a
        span's chunks several times faster than one selection per sample, and a :class:`ShardSampler` batch is
        mostly one span. Whole samples are decoded (a chunk is one sample, so a crop costs the same), then
        cropped, converted and normalised into the batch tensors.
        """
        b, side, shapes = len(indices), self.side_px, self.shapes
        offsets = [crop_offset(self.crop) if self.crop else (0, 0) for _ in indices]
        layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for m in self.modalities:
            shape, dtype = shapes[m]
            layout[m], layout[f"{m}_valid"] = ((b, *shape), dtype), ((b, *shape[1:]), torch.bool)
        layout |= {"index": ((b,), torch.int64), "bounds": ((b, 4), torch.float64), "time": ((b,), torch.float64)}
        for m in self.modalities:
            layout[f"{m}_available"], layout[f"{m}_time"] = ((b,), torch.bool), ((b,), torch.float64)
        batch = self._pool.allocate(layout, shared)
        requests: list[tuple[str, tuple[Any, ...], np.ndarray | None]] = []
        decoded: dict[str, tuple[np.ndarray, np.ndarray, dict[int, int]]] = {}
        for k, m in enumerate(self.modalities):
            info = self.info[m]
            spans = read_spans([i for i in indices if self.availability[i, k]], self.shard_samples)
            n = sum(hi - lo for lo, hi in spans)
            full = self.patch_px // info.factor
            buf = self._scratch(m, n, (len(info.bands), full, full), info.dtype)
            vbuf = self._scratch(f"{m}_valid", n, (full, full), np.dtype(bool))
            pos: dict[int, int] = {}
            at = 0
            for lo, hi in spans:
                requests.append((m, (slice(lo, hi),), buf[at:at + hi - lo]))
                requests.append((f"{m}_valid", (slice(lo, hi),), vbuf[at:at + hi - lo]))
                pos.update({i: at + i - lo for i in range(lo, hi)})
                at += hi - lo
            decoded[m] = (buf, vbuf, pos)
        caption_spans = read_spans(indices, self.shard_samples) if self.has_caption else []
        requests += [("caption", (slice(lo, hi),), None) for lo, hi in caption_spans]
        arrays = self.handle.read(requests)

        for m in self.modalities:
            info, (buf, vbuf, pos), f = self.info[m], decoded[m], self.info[m].factor
            x, valid = batch[m], batch[f"{m}_valid"]
            for j, i in enumerate(indices):
                if i not in pos:
                    x[j].zero_()
                    valid[j].zero_()
                    continue
                r0, c0 = offsets[j]
                rows, cols = slice(r0 // f, (r0 + side) // f), slice(c0 // f, (c0 + side) // f)
                valid[j].copy_(torch.from_numpy(vbuf[pos[i], rows, cols]))
                src = torch.from_numpy(buf[pos[i], :, rows, cols])
                if self.normalize and info.kind == "continuous":
                    self.normalizer.normalize(m, src, valid[j], out=x[j])
                else:
                    x[j].copy_(src)
            if self.normalize and info.kind not in ("continuous", "categorical"):
                _zero_invalid(x, valid)

        idx = np.asarray(indices)
        rows = np.array([o[0] for o in offsets], dtype=np.float64)
        cols = np.array([o[1] for o in offsets], dtype=np.float64)
        xmin = self.x0[idx] + cols * self.base_m
        ymax = self.y0[idx] - rows * self.base_m
        size_m = side * self.base_m
        captions: dict[int, str] = {}
        for (lo, hi), values in zip(caption_spans, arrays[len(arrays) - len(caption_spans):], strict=True):
            captions.update({lo + k: str(v) for k, v in enumerate(np.asarray(values).reshape(-1)[: hi - lo])})
        batch["sample_id"] = [str(s) for s in self.sample_ids[idx]]
        batch["index"].copy_(torch.from_numpy(idx.astype(np.int64)))
        batch["caption"] = [captions[i] for i in indices] if self.has_caption else [""] * b
        batch["crs"] = [f"EPSG:{int(e)}" for e in self.epsg[idx]]
        batch["bounds"].copy_(torch.from_numpy(np.stack([xmin, ymax - size_m, xmin + size_m, ymax], axis=1)))
        batch["time"].copy_(torch.from_numpy(self.time[idx]))
        for k, m in enumerate(self.modalities):
            batch[f"{m}_available"].copy_(torch.from_numpy(self.availability[idx, k]))
            batch[f"{m}_time"].copy_(torch.from_numpy(self.times[idx, k]))
        return batch

    def _scratch(self, name: str, n: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A per-process decode buffer of ``n`` samples, reused across batches (no fresh pages every batch)."""
        if self._buffers_pid != os.getpid():
            self._buffers, self._buffers_pid = {}, os.getpid()
        have = self._buffers.get(name)
        if have is None or len(have) < n or have.shape[1:] != shape:
            have = self._buffers[name] = np.empty((n, *shape), dtype=dtype)
        return have[:n]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_buffers={}, _buffers_pid=None)  # the pool pickles empty by itself
        return state


class CollatedSamples(Sequence[dict[str, Any]]):
    """Samples of one batch that also carry the batch already stacked (see :meth:`CubeDataset.__getitems__`). The
    sample dicts (views of the batch) are made on first access: :func:`collate` hands over the batch without them."""

    def __init__(self, batch: dict[str, Any], modalities: list[str]) -> None:
        self.batch = batch
        self._modalities = modalities
        self._samples: list[dict[str, Any]] | None = None

    def _list(self) -> list[dict[str, Any]]:
        if self._samples is None:
            self._samples = _unbatch(self.batch, self._modalities)
        return self._samples

    def __len__(self) -> int:
        return len(self.batch["sample_id"])

    def __getitem__(self, i: Any) -> Any:
        return self._list()[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._list())


def read_spans(indices: Sequence[int], shard: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` sample ranges covering ``indices``, each inside one shard, read as one zarr selection each.

    A shard's indices become one range when it is at most twice as long as the number of samples wanted from it
    (decoding a few unwanted chunks is cheaper than a selection per sample); otherwise each run of consecutive
    indices is its own range.
    """
    out: list[tuple[int, int]] = []
    for _, group in itertools.groupby(sorted(set(indices)), key=lambda i: i // shard):
        g = list(group)
        if g[-1] + 1 - g[0] <= 2 * len(g):
            out.append((g[0], g[-1] + 1))
            continue
        start = prev = g[0]
        for i in g[1:]:
            if i != prev + 1:
                out.append((start, prev + 1))
                start = i
            prev = i
        out.append((start, prev + 1))
    return out


def _zero_invalid(x: torch.Tensor, valid: torch.Tensor) -> None:
    """Set ``x`` (``(B, C, H, W)``) to 0 where ``valid`` (``(B, H, W)``) is False, in place."""
    if bool(valid.all()):
        return
    if x.is_floating_point():  # may hold NaN fill values, which a multiply would keep
        x.masked_fill_(~valid.unsqueeze(1).expand(x.shape), 0)
    else:  # several times faster than masked_fill with a broadcast mask
        x.mul_(valid.unsqueeze(1))


def _unbatch(batch: dict[str, Any], modalities: list[str]) -> list[dict[str, Any]]:
    """Per-sample views of a batch; a modality's tensors are left out where it is unavailable."""
    out = []
    pixel_keys = {k for m in modalities for k in (m, f"{m}_valid")}
    for j in range(len(batch["sample_id"])):
        sample = {k: v[j] for k, v in batch.items() if k not in pixel_keys}
        sample["index"] = int(sample["index"])
        for m in modalities:
            if bool(batch[f"{m}_available"][j]):
                sample[m], sample[f"{m}_valid"] = batch[m][j], batch[f"{m}_valid"][j]
        out.append(sample)
    return out
