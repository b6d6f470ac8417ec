"""Derived modalities of one block: computed from the block's aligned input modalities (or, for an update that
rebuilds only a derived modality, from the inputs the cube already holds).

For each derived modality (:mod:`eo_dataset.spec.derived`), per sample:

- available only where every input modality is available, and at least one pixel is valid;
- a pixel is valid where every input band it reads is valid (its modality's ``<m>_valid`` and not its nodata), every
  divisor is non-zero, the result is finite and fits the storage dtype (integers: after ``scale``/``offset``);
  elsewhere it holds the modality's fill value;
- ``<m>_time`` is the time of the first input modality the expression reads; ``<m>_item`` the inputs' items.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np

from eo_dataset.errors import CubeError
from eo_dataset.spec.derived import BandRef, parse_expression
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import ModalitySpec, Recipe

log = logging.getLogger(__name__)


def derive_block(recipe: Recipe, samples: Sequence[Sample], names: Sequence[str],
                 arrays: MutableMapping[str, np.ndarray], reasons: MutableMapping[str, dict[str, str]],
                 stored: Mapping[str, np.ndarray] | None = None) -> None:
    """Compute the derived modalities ``names`` of a block into ``arrays`` (``<m>``, ``<m>_valid``,
    ``<m>_available``, ``<m>_time``, ``<m>_item``), recording why a sample has none in ``reasons``.

    Args:
        recipe: The recipe.
        samples: The block's samples.
        names: The derived modalities to compute (computed in dependency order).
        arrays: The block's aligned arrays; inputs are read from here first.
        reasons: ``reasons[sample_id][modality]``, updated for samples left unavailable.
        stored: The cube's arrays of the block (an update): inputs not aligned in this block are read from here.

    Raises:
        CubeError: an input modality is neither aligned in this block nor given in ``stored``.
    """
    for name in recipe.derived_order:
        if name in names:
            _derive(recipe, name, samples, arrays, reasons, stored or {})


def _derive(recipe: Recipe, name: str, samples: Sequence[Sample], arrays: MutableMapping[str, np.ndarray],
            reasons: MutableMapping[str, dict[str, str]], stored: Mapping[str, np.ndarray]) -> None:
    m = recipe.modalities[name]
    expr = parse_expression(m.derived.expression, m.derived.inputs)
    inputs = list(dict.fromkeys(ref.modality for ref in expr.refs))
    source: dict[str, Mapping[str, np.ndarray]] = {}
    for mod in inputs:
        source[mod] = arrays if mod in arrays else stored if mod in stored else {}
        if not source[mod]:
            raise CubeError(f"derived modality {name!r} reads {mod!r}, which is neither built in this block nor in "
                            f"the cube; build {mod!r} too (e.g. --update {mod},{name})")
    n = len(samples)
    h, w = samples[0].shape(m.resolution_m) if n else (0, 0)
    available = np.ones(n, bool)
    for mod in inputs:
        available &= np.asarray(source[mod][f"{mod}_available"], bool)
    ok = np.broadcast_to(available[:, None, None], (n, h, w)).copy()
    values: dict[BandRef, np.ndarray] = {}
    for ref in expr.refs:
        spec = recipe.modalities[ref.modality]
        data = np.asarray(source[ref.modality][ref.modality])[:, spec.band_names.index(ref.band)]
        ok &= np.asarray(source[ref.modality][f"{ref.modality}_valid"], bool) & _has_data(data, spec)
        values[ref] = data.astype(np.float64) * spec.collection.scale + spec.collection.offset
    result, defined = expr.evaluate(values)
    ok &= defined
    out = _encode(result, ok, m)
    for i, sample in enumerate(samples):
        if not available[i]:
            missing = [mod for mod in inputs if not source[mod][f"{mod}_available"][i]]
            reasons.setdefault(sample.id, {})[name] = f"input modality {', '.join(missing)} has no data"
        elif not ok[i].any():
            available[i] = False
            reasons.setdefault(sample.id, {})[name] = (f"no pixel where every input of {m.derived.expression!r} is "
                                                       "valid and the expression is defined")
    ok &= available[:, None, None]
    data = np.full((n, 1, h, w), m.fill_value, dtype=m.storage_dtype)
    data[:, 0][ok] = out[ok]
    first = inputs[0]
    arrays[name] = data
    arrays[f"{name}_valid"] = ok
    arrays[f"{name}_available"] = available
    arrays[f"{name}_time"] = np.where(available, np.asarray(source[first][f"{first}_time"], "datetime64[ns]"),
                                      np.datetime64("NaT", "ns"))
    items = np.full(n, "", dtype=object)
    for i in np.flatnonzero(available):
        ids = (str(source[mod][f"{mod}_item"][i]) for mod in inputs)
        items[i] = ",".join(dict.fromkeys(x for s in ids for x in s.split(",") if x))
    arrays[f"{name}_item"] = items
    log.debug("%s: derived for %d of %d samples", name, int(available.sum()), n)


def _has_data(data: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    """Where stored values are not the modality's nodata (and not NaN)."""
    nodata = spec.collection.nodata
    has = ~np.isnan(data) if data.dtype.kind == "f" else np.ones(data.shape, bool)
    return has if nodata is None else has & (data != spec.storage_dtype.type(nodata))


def _encode(result: np.ndarray, ok: np.ndarray, m: ModalitySpec) -> np.ndarray:
    """Physical values -> stored values of the modality's dtype; ``ok`` loses pixels the dtype cannot hold."""
    c, dtype = m.collection, m.storage_dtype
    stored = (result - c.offset) / c.scale
    with np.errstate(all="ignore"):
        if dtype.kind in "iu":
            stored = np.rint(stored)
            info = np.iinfo(dtype)
            ok &= np.isfinite(stored) & (stored >= info.min) & (stored <= info.max)
            stored = np.where(ok, stored, 0).astype(dtype)
        else:
            stored = stored.astype(dtype)
            ok &= np.isfinite(stored)
    if c.nodata is not None:
        ok &= stored != dtype.type(c.nodata)  # would read back as missing
    return stored
