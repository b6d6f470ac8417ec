"""Non-learned references for the stage-1 comparison: what a reader gets without learning anything, at the bits per
sample of the learned tokenizers (``eo-models experiment tokenizers``).

A learned tokenizer spends ``tokens_per_sample * log2(codebook_size)`` bits on a sample (:func:`token_bits`). The
references code the same crop with at most as many bits (closest to, never above, the budget):

- **block average + bicubic** (:func:`block_bicubic`): each band is averaged over a ``g x g`` grid of blocks, the
  block means are quantised uniformly to ``b`` bits over ``mean ± 4 std`` of the band (the modality's statistics,
  in the head's units: dB for SAR) and up-sampled with bicubic interpolation; ``bands * g * g * b`` bits. Of the
  ``(g, b)`` pairs that spend the most of the budget for each ``g``, the one with the lowest error on the evaluated
  samples is kept (a choice an encoder can make: it sees its input). Class maps (``categorical``) take the majority
  class of each block, 0/1 layers (``multilabel``) each layer's majority, up-sampled by nearest neighbour:
  ``ceil(g * g * log2(classes))`` or ``layers * g * g`` bits, the largest ``g`` that fits.
- **JPEG 2000** (:func:`jpeg2000`, OpenJPEG through the ``imagecodecs`` package), continuous modalities only (a lossy
  image codec has no meaning for class ids): the bands, invalid pixels filled with the band mean, are mapped to
  16 bits over the same ``mean ± 4 std`` range and coded as one multi-component codestream (no colour transform);
  per sample the highest quality whose codestream fits the budget is found by bisection over OpenJPEG's quality
  (PSNR) target. Below a certain budget even the coarsest quality does not fit a full-resolution crop, so the
  crop may first be block-averaged to ``g x g`` (and up-sampled with bicubic interpolation after decoding); the
  ``g`` with the lowest error on the evaluated samples that fits every sample is kept. Counted: the codestream
  without its main header (the SIZ/COD/QCD markers, 100-200 bytes, the same for every sample of one shape and
  setting: like a tokenizer's codebook and decoder weights, part of the codec both sides know); the tile-part
  header and all packets are counted.

Each reference is a :class:`Reference`: a callable with ``Tokenizer.reconstruct``'s contract, so
:func:`eo_models.evaluation.evaluate.evaluate_reconstruction` scores it with exactly the tokenizers' metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eo_models.config import ModalityConfig
from eo_models.errors import ConfigError
from eo_models.modality import to_db

#: How far from the band mean (in band standard deviations) the uniform quantisers reach.
RANGE_STD = 4.0
MAX_VALUE_BITS = 16  #: the most bits block_bicubic spends on one block mean
BISECTIONS = 8  #: bisection steps of JPEG 2000's quality target per sample
_SOT = b"\xff\x90"  # JPEG 2000 start-of-tile marker: the end of the main header


def token_bits(tokens_per_sample: int, codebook_size: int) -> float:
    """Bits a tokenizer spends on one sample: ``tokens_per_sample * log2(codebook_size)``."""
    return tokens_per_sample * math.log2(codebook_size)


@dataclass(frozen=True)
class Reference:
    """A non-learned codec at a bit budget; call it like ``Tokenizer.reconstruct``: ``ref(x, valid)`` with stored
    values ``(B, C, H, W)`` and the valid mask ``(B, H, W)``.

    ``name``: for tables and figures; ``bits``: bits per sample (``block_bicubic``: exact; ``jpeg2000``: the mean
    over the samples it selected its settings on, each at most ``budget``); ``params``: its settings (JSON-able).
    """

    name: str
    modality: ModalityConfig
    budget: float
    bits: float
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: Tensor, valid: Tensor) -> Tensor:
        g = int(self.params["grid"])
        if self.params["codec"] == "block_bicubic":
            if self.modality.kind == "continuous":
                return _block_bicubic(self.modality, x, valid, g, int(self.params["value_bits"]))
            return _block_majority(self.modality, x, valid, g)
        return _jpeg2000(self.modality, x, valid, g, self.budget)[0]


# -- helpers -------------------------------------------------------------------------------------------------------
def _units(m: ModalityConfig, x: Tensor) -> Tensor:
    """Stored values in the head's units (dB for ``transform: db``), float64."""
    return (to_db(x) if m.transform == "db" else x.float()).double()


def _stats(m: ModalityConfig) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(m.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(m.std, dtype=torch.float64).view(1, -1, 1, 1).clamp_min(1e-12)
    return mean, std


def _filled(m: ModalityConfig, x: Tensor, valid: Tensor) -> Tensor:
    """Head units, invalid (or non-finite) pixels replaced by the band mean."""
    z = _units(m, x)
    mean, _ = _stats(m)
    ok = valid.bool().unsqueeze(1) & torch.isfinite(z)
    return torch.where(ok, z, mean.expand_as(z))


def _quantise(z: Tensor, m: ModalityConfig, bits: int) -> Tensor:
    """Uniform ``bits``-bit quantisation over ``mean ± RANGE_STD std`` per band (values returned dequantised)."""
    mean, std = _stats(m)
    lo, span = mean - RANGE_STD * std, 2 * RANGE_STD * std
    levels = 2**bits - 1
    q = torch.round(((z - lo) / span).clamp(0, 1) * levels)
    return lo + q / levels * span


def _bicubic(z: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(z.shape[-2:]) == tuple(size):
        return z
    return F.interpolate(z, size=size, mode="bicubic", align_corners=False)


def _block_bicubic(m: ModalityConfig, x: Tensor, valid: Tensor, grid: int, value_bits: int) -> Tensor:
    z = _filled(m, x, valid)
    down = F.adaptive_avg_pool2d(z, grid)
    return _bicubic(_quantise(down, m, value_bits), tuple(z.shape[-2:])).float()


def _block_majority(m: ModalityConfig, x: Tensor, valid: Tensor, grid: int) -> Tensor:
    """Majority class (categorical) or majority per layer (multilabel) of each block, over its valid pixels."""
    size = tuple(x.shape[-2:])
    v = valid.bool().unsqueeze(1).double()
    if m.kind == "categorical":
        classes = torch.tensor(m.classes, dtype=x.dtype)
        onehot = (x[:, :1] == classes.view(1, -1, 1, 1)).double() * v  # (B, K, H, W)
        votes = F.adaptive_avg_pool2d(onehot, grid)
        ids = classes[votes.argmax(1)].unsqueeze(1)  # (B, 1, g, g); an all-invalid block: the first class
        return F.interpolate(ids.double(), size=size, mode="nearest").to(x.dtype)
    on = (x > 0).double() * v
    share = F.adaptive_avg_pool2d(on, grid) / F.adaptive_avg_pool2d(v, grid).clamp_min(1e-12)
    return F.interpolate((share >= 0.5).double(), size=size, mode="nearest").float()


def _error(m: ModalityConfig, pred: Tensor, x: Tensor, valid: Tensor) -> float:
    """Sum over valid pixels of the squared error in band standard deviations (continuous), or of wrong pixels."""
    v = valid.bool()
    if m.kind == "continuous":
        _, std = _stats(m)
        e = ((pred.double() - _units(m, x)) / std).pow(2).mean(1)
    elif m.kind == "categorical":
        e = (pred[:, 0] != x[:, 0]).double()
    else:
        e = (pred != (x > 0).to(pred.dtype)).double().mean(1)
    return float(torch.nan_to_num(e[v], nan=0.0).sum())


def _discrete_bits(m: ModalityConfig, grid: int) -> float:
    if m.kind == "categorical":
        return float(math.ceil(grid * grid * math.log2(len(m.classes))))
    return float(len(m.bands) * grid * grid)


# -- block average + bicubic ------------------------------------------------------------------------------------
def block_bicubic(m: ModalityConfig, budget: float, batches: Iterable[tuple[Tensor, Tensor]]) -> Reference:
    """The block-average + bicubic reference for modality ``m`` at no more than ``budget`` bits per sample.

    Args:
        m: The modality (a tokenizer's ``cfg.modality``).
        budget: Bits per sample (:func:`token_bits` of the learned tokenizers).
        batches: ``(x, valid)`` batches of stored values the settings are chosen on (those evaluated).

    Raises:
        ConfigError: not even one value per sample fits the budget.
    """
    batches = list(batches)
    side = min(batches[0][0].shape[-2:]) if batches else 1
    if m.kind != "continuous":
        fits = [g for g in range(1, side + 1) if _discrete_bits(m, g) <= budget]
        if not fits:
            raise ConfigError(f"{m.name}: a budget of {budget:.1f} bits per sample is below one block's "
                              f"{_discrete_bits(m, 1):.0f} bits; no block reference fits it")
        g = max(fits)
        return Reference("block majority + nearest", m, budget, _discrete_bits(m, g),
                         {"codec": "block_bicubic", "grid": g, "value_bits": None})
    c = len(m.bands)
    candidates = []
    for g in range(1, side + 1):
        b = min(MAX_VALUE_BITS, int(budget // (c * g * g)))
        if b >= 1:
            candidates.append((g, b))
    if not candidates:
        raise ConfigError(f"{m.name}: a budget of {budget:.1f} bits per sample is below one bit per band "
                          f"({c} bands); no block reference fits it")
    errors = {gb: sum(_error(m, _block_bicubic(m, x, v, *gb), x, v) for x, v in batches) for gb in candidates}
    g, b = min(candidates, key=lambda gb: (errors[gb], -gb[0]))
    return Reference("block average + bicubic", m, budget, float(c * g * g * b),
                     {"codec": "block_bicubic", "grid": g, "value_bits": b, "range_std": RANGE_STD})


# -- JPEG 2000 ---------------------------------------------------------------------------------------------------
def jpeg2000_available() -> bool:
    """Whether ``imagecodecs`` with its JPEG 2000 codec (OpenJPEG) is installed."""
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG2K.available)


def _to_uint16(m: ModalityConfig, z: Tensor) -> np.ndarray:
    mean, std = _stats(m)
    lo, span = mean - RANGE_STD * std, 2 * RANGE_STD * std
    return torch.round(((z - lo) / span).clamp(0, 1) * 65535).numpy().astype(np.uint16)


def _from_uint16(m: ModalityConfig, a: np.ndarray) -> Tensor:
    mean, std = _stats(m)
    lo, span = mean - RANGE_STD * std, 2 * RANGE_STD * std
    return lo + torch.from_numpy(a.astype(np.float64)) / 65535 * span


def _encode_fitting(img: np.ndarray, budget: float, coarsest: bool = False) -> tuple[bytes | None, int]:
    """The highest-quality codestream of ``img`` ``(C, H, W)`` uint16 whose payload fits ``budget`` bits (bisection
    over OpenJPEG's quality target), and its payload bits; ``(None, bits of the coarsest)`` when none fits."""
    import imagecodecs

    def encode(level: float) -> tuple[bytes, int]:
        data = imagecodecs.jpeg2k_encode(img, level=level, codecformat="J2K", planar=True, mct=False,
                                          resolutions=max(1, min(6, int(math.log2(min(img.shape[1:]))) + 1)))
        return data, 8 * (len(data) - data.find(_SOT))

    lo, hi = 1.0, 120.0
    best: tuple[bytes | None, int] = (None, 0)
    data, bits = encode(lo)
    if bits > budget:
        return None, bits
    best = (data, bits)
    if coarsest:
        return best
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        data, bits = encode(mid)
        if bits <= budget:
            lo, best = mid, (data, bits) if bits >= best[1] else best
        else:
            hi = mid
    return best


def _jpeg2000(m: ModalityConfig, x: Tensor, valid: Tensor, grid: int, budget: float) -> tuple[Tensor, list[int]]:
    """Reconstructions and payload bits per sample; raises ConfigError when a sample does not fit."""
    import imagecodecs

    z = _filled(m, x, valid)
    size = tuple(z.shape[-2:])
    down = F.adaptive_avg_pool2d(z, grid) if grid != size[0] or grid != size[1] else z
    out, bits = [], []
    for sample in _to_uint16(m, down):
        data, b = _encode_fitting(sample, budget)
        if data is None:
            raise ConfigError(f"{m.name}: the coarsest JPEG 2000 codestream of a {grid} x {grid} px crop takes {b} "
                              f"bits, above the budget of {budget:.1f}")
        dec = imagecodecs.jpeg2k_decode(data)
        dec = dec.reshape(dec.shape[0], dec.shape[1], -1).transpose(2, 0, 1)
        out.append(_from_uint16(m, dec[None])[0])
        bits.append(b)
    return _bicubic(torch.stack(out), size).float(), bits


def jpeg2000(m: ModalityConfig, budget: float, batches: Iterable[tuple[Tensor, Tensor]]) -> Reference | None:
    """The JPEG 2000 reference for continuous modality ``m`` at no more than ``budget`` bits per sample, or None
    for a class or 0/1 modality (a lossy image codec does not apply to them).

    Args:
        m: The modality (a tokenizer's ``cfg.modality``).
        budget: Bits per sample.
        batches: ``(x, valid)`` batches the resolution is chosen on (those evaluated).

    Raises:
        ConfigError: ``imagecodecs`` (with JPEG 2000) is not installed, or no resolution fits every sample.
    """
    if m.kind != "continuous":
        return None
    if not jpeg2000_available():
        raise ConfigError("the JPEG 2000 reference needs the imagecodecs package with OpenJPEG: pip install "
                          "imagecodecs (or pip install -e '.[models]')")
    batches = list(batches)
    side = min(batches[0][0].shape[-2:]) if batches else 1
    grids, g = [], side
    while g >= 2:
        grids.append(g)
        g //= 2
    results: dict[int, tuple[float, float]] = {}
    first = _to_uint16(m, _filled(m, *batches[0])[:1])[0] if batches else None
    for g in grids:
        if first is not None:  # cheap check: does the coarsest codestream of the first sample fit at all?
            small = torch.from_numpy(first.astype(np.float64))[None]
            small = F.adaptive_avg_pool2d(small, g) if g != side else small
            if _encode_fitting(torch.round(small[0]).numpy().astype(np.uint16), budget, coarsest=True)[0] is None:
                continue
        try:
            err, bits = 0.0, []
            for x, v in batches:
                pred, b = _jpeg2000(m, x, v, g, budget)
                err += _error(m, pred, x, v)
                bits += b
        except ConfigError:
            continue
        results[g] = (err, sum(bits) / max(1, len(bits)))
    if not results:
        raise ConfigError(f"{m.name}: no JPEG 2000 codestream fits {budget:.1f} bits per sample at any resolution "
                          f"down to {grids[-1] if grids else side} px (it needs a larger budget: more tokens per "
                          "sample, larger crops)")
    g = min(results, key=lambda k: (results[k][0], -k))
    return Reference("JPEG 2000", m, budget, results[g][1],
                     {"codec": "jpeg2000", "grid": g, "range_std": RANGE_STD, "value_bits": 16,
                      "library": _library()})


def _library() -> str:
    import imagecodecs

    return f"imagecodecs {imagecodecs.__version__}, {imagecodecs.jpeg2k_version()}"


def references(m: ModalityConfig, budget: float,
               batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[list[Reference], dict[str, str]]:
    """The references of ``m`` at ``budget`` bits per sample (block reference first), and ``{name: why}`` for those
    that do not apply or do not fit (reported in the tables rather than failing the experiment)."""
    batches = list(batches)
    refs, skipped = [], {}
    for name, make in (("block average + bicubic", block_bicubic), ("JPEG 2000", jpeg2000)):
        try:
            ref = make(m, budget, batches)
        except ConfigError as exc:
            skipped[name] = str(exc)
            continue
        if ref is None:
            skipped[name] = f"a lossy image codec does not apply to {m.kind} values"
        else:
            refs.append(ref)
    return refs, skipped
