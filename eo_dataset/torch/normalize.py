"""Per-band normalisation from the statistics a cube stores (root attr ``stats``, see :mod:`eo_dataset.cube.stats`).

The statistics are computed at build time over the *valid* pixels of available samples, in stored units. So the
normalisation of stored values is ``(stored - mean) / std`` per band, with no scale/offset step: the same numbers
work for every consumer (the loader, TorchGeo, ``eo_models``) and travel with the cube. :class:`Normalize` is the
one implementation; it is an ``nn.Module`` so its means and stds move with ``.to(device)``, and
:meth:`Normalize.to_dict` / :meth:`Normalize.from_dict` round-trip it through a model's ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.errors import CubeError


def band_stats(attrs: Mapping[str, Any] | CubeMeta, modality: str) -> tuple[list[str], list[float], list[float]]:
    """Band names, means and standard deviations (stored units) of one modality of a cube
    (:meth:`CubeMeta.band_stats <eo_dataset.cube.schema.CubeMeta.band_stats>`).

    Args:
        attrs: The cube's metadata, or its root attributes (``xr.open_zarr(cube).attrs``).
        modality: A modality name of the cube.

    Returns:
        ``(bands, mean, std)``, bands in cube order.

    Raises:
        CubeError: the cube has no ``stats`` attr (built before statistics existed) or not this modality.
    """
    return _meta(attrs).band_stats(modality)


def _meta(attrs: Mapping[str, Any] | CubeMeta) -> CubeMeta:
    return attrs if isinstance(attrs, CubeMeta) else CubeMeta.from_attrs(attrs, "the cube")


class Normalize(nn.Module):
    """``(stored - mean) / std`` per band for the modalities of a sample or batch dict; invalid pixels set to 0.

    Works on single samples (``(C, H, W)``) and batches (``(B, C, H, W)``) alike, on any device. Keys that are
    not one of its modalities are passed through. Only ``continuous`` modalities are normalised: class ids and
    0/1 presence layers (``osm``) are not.

    Example:
        >>> norm = Normalize.from_cube(xr.open_zarr("demo.zarr").attrs, ["s2l2a", "s1rtc"])  # doctest: +SKIP
        >>> batch = norm(batch)  # e.g. on the GPU, after a loader with normalize=False  # doctest: +SKIP
    """

    def __init__(self, stats: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                 bands: Mapping[str, Sequence[str]] | None = None) -> None:
        """Create from per-modality ``(mean, std)`` sequences (one number per band, stored units).

        Args:
            stats: ``{modality: (means, stds)}``.
            bands: Optional band names per modality (kept for :meth:`to_dict` and model cards).
        """
        super().__init__()
        self.modalities = list(stats)
        self.bands = {m: list(bands[m]) for m in stats} if bands else {}
        for m, (mean, std) in stats.items():
            if len(mean) != len(std):
                raise ValueError(f"{m}: {len(mean)} means but {len(std)} stds; expected one of each per band")
            self.register_buffer(f"{m}_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
            self.register_buffer(f"{m}_inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    @classmethod
    def from_cube(cls, attrs: Mapping[str, Any] | CubeMeta, modalities: Sequence[str] | None = None) -> Normalize:
        """The normalisation of a cube's continuous modalities from its root attrs.

        Args:
            attrs: The cube's metadata (:class:`~eo_dataset.cube.schema.CubeMeta`) or root attributes.
            modalities: Modalities to include (default: all); only those of kind ``continuous`` are kept (class ids
                and presence layers are not normalised).
        """
        cube = _meta(attrs)
        meta = cube.modalities
        names = list(meta) if modalities is None else list(modalities)
        unknown = [m for m in names if m not in meta]
        if unknown:
            raise CubeError(f"modalities {unknown} are not in the cube; it has {sorted(meta)}")
        names = [m for m in names if meta[m].kind == "continuous"]
        stats, bands = {}, {}
        for m in names:
            bands[m], mean, std = cube.band_stats(m)
            stats[m] = (mean, std)
        return cls(stats, bands)

    def mean(self, modality: str) -> Tensor:
        """Per-band means of a modality, shape ``(C, 1, 1)``."""
        return getattr(self, f"{modality}_mean")

    def std(self, modality: str) -> Tensor:
        """Per-band standard deviations of a modality, shape ``(C, 1, 1)``."""
        return 1.0 / getattr(self, f"{modality}_inv_std")

    def normalize(self, modality: str, x: Tensor, valid: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """Normalise one modality's stored values (``(..., C, H, W)``), zeroing pixels where ``valid`` is False.

        Args:
            modality: Which modality's statistics to use.
            x: Stored values, any real dtype.
            valid: Optional validity mask ``(..., H, W)``.
            out: Optional float32 tensor of ``x``'s shape to write into.
        """
        mean, inv = getattr(self, f"{modality}_mean"), getattr(self, f"{modality}_inv_std")
        if out is None:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        if x.dim() > 3 and x.device.type == "cpu":  # a batch on the CPU: one sample at a time, so that the three
            for i in range(x.shape[0]):           # passes below find it in the cache (twice as fast for S2)
                self.normalize(modality, x[i], None if valid is None else valid[i], out[i])
            return out
        torch.sub(x, mean, out=out).mul_(inv)
        if valid is not None and not bool(valid.all()):
            keep = valid.unsqueeze(-3).to(torch.bool)
            if x.is_floating_point():  # fill values may be NaN: multiplying would keep them
                out.masked_fill_(~keep.expand(out.shape), 0.0)
            else:  # finite inputs: a multiply by the mask is several times faster than masked_fill
                out.mul_(keep)
        return out

    def denormalize(self, modality: str, x: Tensor) -> Tensor:
        """Back to stored units (float): ``x * std + mean``."""
        return x / getattr(self, f"{modality}_inv_std") + getattr(self, f"{modality}_mean")

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Normalise every modality of this normaliser found in a sample or batch dict (a shallow copy)."""
        out = dict(sample)
        for m in self.modalities:
            if m in out:
                out[m] = self.normalize(m, out[m], out.get(f"{m}_valid"))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): ``{modality: {"bands": [...], "mean": [...], "std": [...]}}``."""
        return {m: {"bands": self.bands.get(m, []), "mean": self.mean(m).flatten().tolist(),
                    "std": self.std(m).flatten().tolist()} for m in self.modalities}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Normalize:
        """Inverse of :meth:`to_dict`."""
        return cls({m: (d["mean"], d["std"]) for m, d in data.items()},
                   {m: d.get("bands", []) for m, d in data.items()})

    def extra_repr(self) -> str:
        return ", ".join(f"{m}: {self.mean(m).numel()} bands" for m in self.modalities)
