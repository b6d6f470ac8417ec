"""Alignment: one block of samples -> aligned arrays, availability and validity masks, provenance.

A failure in one sample and modality (an unreadable file, a broken item) marks just that sample and modality
unavailable, with its reason; the rest of the block is unaffected.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import shapely

from eo_dataset.cube.block import AlignedBlock
from eo_dataset.engine.captions import make_captioner
from eo_dataset.engine.derived import derive_block
from eo_dataset.engine.read import dataset_cache, read_modality
from eo_dataset.engine.select import Candidates, NoChoice, choose, search_bbox, search_window
from eo_dataset.sources import open_source
from eo_dataset.sources.signing import redact_urls, signer
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import Recipe

log = logging.getLogger(__name__)


def _to_datetime64(t: dt.datetime | None) -> np.datetime64:
    if t is None:
        return np.datetime64("NaT", "ns")
    return np.datetime64(t.astimezone(dt.UTC).replace(tzinfo=None), "ns")


def align_block(recipe: Recipe, samples: Sequence[Sample], only: Sequence[str] | None = None,
                anchor_times: Sequence[dt.datetime | None] | None = None,
                stored: Mapping[str, np.ndarray] | None = None) -> AlignedBlock:
    """Select, read and align every modality of ``samples``.

    The anchor modality is done first so the others can match its date. One search per modality covers the whole
    block (the union of the sample footprints). Derived modalities are computed last, from the aligned arrays
    (:mod:`eo_dataset.engine.derived`).

    Args:
        recipe: The recipe.
        samples: The block's samples.
        only: Align just these modalities (updating a cube); the anchor's times then come from ``anchor_times``.
        anchor_times: The anchor times already in the cube, per sample (with ``only``).
        stored: The cube's arrays of these samples (with ``only``): the inputs of derived modalities that are
            updated without them.
    """
    n = len(samples)
    footprints = [s.footprint() for s in samples]
    bbox = shapely.union_all(footprints).bounds
    reasons: dict[str, dict[str, str]] = {}
    anchor = recipe.time.anchor
    read = recipe.read_modalities
    order = [m for m in [anchor] + [m for m in read if m != anchor] if only is None or m in only]
    arrays: dict[str, np.ndarray] = {"anchor_time": np.full(n, np.datetime64("NaT", "ns"))} if anchor in order else {}
    anchor_times = list(anchor_times) if anchor_times is not None else [None] * n
    with dataset_cache() as cache:
        for name in order:
            modality = recipe.modalities[name]
            h, w = samples[0].shape(modality.resolution_m)
            data = np.full((n, len(modality.band_specs), h, w), modality.fill_value, dtype=modality.storage_dtype)
            valid = np.zeros((n, h, w), dtype=bool)
            available = np.zeros(n, dtype=bool)
            times = np.full(n, np.datetime64("NaT", "ns"))
            items = np.full(n, "", dtype=object)
            start, end = search_window(recipe, modality)
            source_spec = recipe.sources[modality.source]
            try:
                source = open_source(source_spec)
                candidates = source.search(modality.collection.name, search_bbox(bbox), start, end, modality.query,
                                           modality.filter)
                sign = signer(source_spec.sign)
                search_error = None
            except Exception as exc:  # one failed search loses this modality for the block, not the build
                candidates, search_error = [], f"search failed: {redact_urls(str(exc))}"
                log.warning("%s: %s", name, search_error)
            try:  # each item's geometry once for the block, not once per sample
                candidates = Candidates(candidates)
            except Exception:  # an unusable item geometry: each sample's choose fails on it and says why
                pass
            for i, sample in enumerate(samples):
                if search_error:
                    reasons.setdefault(sample.id, {})[name] = search_error
                    continue
                try:
                    choice = choose(recipe, name, candidates, footprints[i], sample.epsg,
                                    None if name == anchor else anchor_times[i])
                    if isinstance(choice, NoChoice):
                        reasons.setdefault(sample.id, {})[name] = choice.reason
                        continue
                    # no retry around the read: GDAL retries each request (the policy of eo_dataset.sources.retry)
                    raster = read_modality(modality, choice, sample, cache, sign, source)
                except Exception as exc:  # isolate the failure to this sample and modality
                    reason = f"{type(exc).__name__}: {redact_urls(str(exc))}"  # never a token in the manifest
                    log.warning("sample %s, modality %s: %s", sample.id, name, reason)
                    reasons.setdefault(sample.id, {})[name] = reason
                    continue
                if not raster.has_data:
                    reasons.setdefault(sample.id, {})[name] = f"items {choice.item_ids} hold no data over the sample"
                    continue
                data[i], valid[i], available[i] = raster.data, raster.valid, True
                times[i], items[i] = _to_datetime64(choice.time), choice.item_ids
                if name == anchor:
                    anchor_times[i] = choice.time
                    arrays["anchor_time"][i] = times[i]
            arrays[name] = data
            arrays[f"{name}_valid"] = valid
            arrays[f"{name}_available"] = available
            arrays[f"{name}_time"] = times
            arrays[f"{name}_item"] = items
    derive_block(recipe, samples, [m for m in recipe.derived_order if only is None or m in only], arrays, reasons,
                 stored)
    if recipe.captions is not None and only is None:  # the text modality, from everything aligned above
        captioner = make_captioner(recipe.captions)
        arrays["caption"] = np.array([captioner(s, {k: v[i] for k, v in arrays.items()}, recipe)
                                      for i, s in enumerate(samples)], dtype=object)
    return AlignedBlock(arrays, reasons)
