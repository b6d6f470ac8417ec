"""Before and after a build: does any source cover the region, and did each modality find data?

A build that finds nothing must say so loudly, with the reason. Before anything is written,
:func:`check_region` compares the region with what each modality's source covers (its collection's extent) and
refuses a region outside every one of them (e.g. longitude and latitude swapped); a collection id that a source
does not hold is refused too. After the build, :func:`empty_warnings` reads the manifest and names every modality
that found no data for any sample, and says when most samples have nothing at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pyproj import Transformer

from eo_dataset.engine.select import search_window
from eo_dataset.errors import GridError, SourceError
from eo_dataset.sources import open_source
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import Recipe

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]


def fmt_bbox(b: Sequence[float]) -> str:
    """``W,S,E,N`` with 4 decimals, as ``--region`` takes it."""
    return ",".join(f"{v:.4f}".rstrip("0").rstrip(".") for v in b)


def _intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def region_bbox(samples: Sequence[Sample], margin_deg: float = 0.05) -> BBox:
    """The lon/lat box around the samples' centres, widened by ``margin_deg`` (a sample is ~0.03 degrees wide)."""
    lons, lats = [], []
    for start in range(0, len(samples), 1 << 16):  # chunk by chunk: never every Sample of a planet's list at once
        by_epsg: dict[int, list[Sample]] = {}
        for s in samples[start:start + (1 << 16)]:
            by_epsg.setdefault(s.epsg, []).append(s)
        for epsg, group in by_epsg.items():  # one transform per zone: fast for a planet's sample list
            x = np.array([s.x0 + s.size_m / 2 for s in group])
            y = np.array([s.y0 - s.size_m / 2 for s in group])
            lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
            lons += [float(np.min(lon)), float(np.max(lon))]
            lats += [float(np.min(lat)), float(np.max(lat))]
    w, e = min(lons) - margin_deg, max(lons) + margin_deg
    if e - w > 180 or w < -180 or e > 180:  # on both sides of, or past, the antimeridian: every longitude
        w, e = -180.0, 180.0
    return (w, max(min(lats) - margin_deg, -90.0), e, min(max(lats) + margin_deg, 90.0))


def _describe(recipe: Recipe, name: str) -> str:
    m = recipe.modalities[name]
    if m.derived is not None:
        return f"nothing (it is derived from {m.derived.expression!r}: see its inputs)"
    src = recipe.sources[m.source]
    start, end = search_window(recipe, m)
    when = "any time" if start is None else f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
    return f"collection {m.collection.name!r} of source {m.source!r} ({src.href.split('?', 1)[0]}), {when}"


def check_region(recipe: Recipe, region: BBox, *, local_only: bool = False) -> list[str]:
    """Compare the region with the extent of every modality's collection.

    With ``local_only`` (``plan``, which must work offline and without the data), sources behind a URL, and local
    sources that cannot be opened, are not asked.

    Returns:
        One warning per modality whose collection lies entirely outside the region or that its source does not
        hold at all (a typo in a collection id).

    Raises:
        GridError: the region lies outside every collection whose extent is known.
        SourceError: no source holds any of the recipe's collections.
    """
    warnings: list[str] = []
    extents: list[tuple[float, float, float, float]] = []
    known = outside = 0
    for name, m in recipe.read_modalities.items():
        spec = recipe.sources[m.source]
        if local_only and "://" in spec.href:
            continue
        try:
            source = open_source(spec)
        except SourceError:
            if local_only:
                continue
            raise
        extent_of = getattr(source, "extent", None)
        if extent_of is None:
            continue
        try:
            extent = extent_of(m.collection.name)
        except SourceError as exc:  # e.g. a collection id the source does not hold: this modality stays empty
            known += 1
            outside += 1
            warnings.append(f"modality {name!r}: {exc}; it will have no data (fix the collection id in the "
                            "recipe or the source's href)")
            continue
        if extent is None:
            continue
        known += 1
        extents.append(extent)
        if not _intersects(extent, region):
            outside += 1
            warnings.append(f"modality {name!r}: the region {fmt_bbox(region)} lies outside {_describe(recipe, name)}"
                            f", which covers {fmt_bbox(extent)}; it will have no data")
    if known and outside == known:
        if not extents:
            raise SourceError(f"no modality of recipe {recipe.name!r} can find data: " + "; ".join(warnings))
        w, s, e, n = zip(*extents, strict=True)
        raise GridError(f"the region {fmt_bbox(region)} (W,S,E,N in degrees) lies outside every source of recipe "
                        f"{recipe.name!r}: together they cover {fmt_bbox((min(w), min(s), max(e), max(n)))}. Check "
                        "the region (longitude first: WEST,SOUTH,EAST,NORTH) or the recipe's sources")
    return warnings


def empty_warnings(recipe: Recipe, entries: Iterable[dict[str, Any]],
                   n_samples: int) -> tuple[list[str], int, int]:
    """What a finished build found nothing for, from its manifest's block entries (read in one pass: an iterator
    of a planet's entries is never held whole).

    Returns:
        A warning per modality that has no data in any sample (with the commonest reason and what was searched),
        and one when more than half of the samples have no data in any modality; the number of such samples; and the
        number of missing sample/modality pairs.
    """
    per_modality: dict[str, Counter[str]] = {m: Counter() for m in recipe.modalities}
    empty_samples = missing = 0
    for entry in entries:
        for per in entry["missing"].values():
            missing += len(per)
            for m, why in per.items():
                if m in per_modality:
                    per_modality[m][why] += 1
            if set(recipe.modalities) <= set(per):
                empty_samples += 1
    out = []
    for m, reasons in per_modality.items():
        if n_samples and sum(reasons.values()) >= n_samples:
            why, k = reasons.most_common(1)[0]
            out.append(f"modality {m!r} found no data for any of the {n_samples} samples ({k} x {why!r}); searched "
                       f"{_describe(recipe, m)}")
    if n_samples and empty_samples * 2 > n_samples:
        out.append(f"{empty_samples} of {n_samples} samples have no data in any modality")
    for w in out:
        log.warning(w)
    return out, empty_samples, missing


def expected_availability(recipe: Recipe, samples: Sequence[Sample], limit: int = 400) -> dict[str, float]:
    """Per modality with a local source: the fraction of samples over which that source holds an item in the
    modality's search window (the search a build runs, on up to ``limit`` evenly spaced samples).

    An estimate of data availability before building (``plan``): a build may still reject a found scene (clouds,
    coverage), so it is an upper bound. Modalities behind a URL or whose source cannot be opened are left out
    (``plan`` works offline and without the data).
    """
    step = max(1, len(samples) // limit)
    chosen = [samples[i] for i in range(0, len(samples), step)]
    if not chosen:
        return {}
    out: dict[str, float] = {}
    for name, m in recipe.read_modalities.items():
        spec = recipe.sources[m.source]
        if "://" in spec.href:
            continue
        try:
            source = open_source(spec)
        except SourceError:  # not here (plan runs without the data): no estimate
            continue
        start, end = search_window(recipe, m)
        found = 0
        for s in chosen:
            w, south, e, n = s.footprint(densify=1).bounds
            if e > 180:  # unwrapped past the antimeridian: the longitude band it touches
                w, e = -180.0, 180.0
            try:
                found += bool(source.search(m.collection.name, (w, south, e, n), start, end, m.query, m.filter))
            except SourceError:
                break
        else:
            out[name] = found / len(chosen)
    return out
