"""Selection: which item(s) each sample takes for each modality, by the recipe's temporal rule.

Items of one acquisition day (tiles of one pass) form a *scene*; a sample takes one scene and mosaics its items.
Static products mosaic every intersecting item; annual products take the items of one year.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pystac
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from eo_dataset.sources import item_time_range
from eo_dataset.spec.recipe import ModalitySpec, Recipe


@dataclass(frozen=True)
class Choice:
    """The items a sample takes for one modality, in mosaic priority order, and the time they represent."""

    items: tuple[pystac.Item, ...]
    time: dt.datetime | None

    @property
    def item_ids(self) -> str:
        """Comma-separated item ids (the cube's ``<m>_item``)."""
        return ",".join(i.id for i in self.items)


@dataclass(frozen=True)
class NoChoice:
    """Why a sample has no item for a modality."""

    reason: str


def search_window(recipe: Recipe, modality: ModalitySpec) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The time range to search for a modality (None: any time)."""
    start = dt.datetime.combine(recipe.time.start, dt.time(), dt.UTC)
    end = dt.datetime.combine(recipe.time.end, dt.time(23, 59, 59), dt.UTC)
    rule = modality.rule
    if rule.type == "static":
        return None, None
    if rule.type == "nearest":
        tol = dt.timedelta(days=rule.tolerance_days)
        return start - tol, end + tol
    if rule.type == "same_year":
        return (dt.datetime(start.year, 1, 1, tzinfo=dt.UTC), dt.datetime(end.year, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
    return start, end


_FULL = 1 - 1e-9  # a required coverage this far below 1 is met by any footprint the items cover whole


class Candidates:
    """The items of one block's search for one modality, with each item's geometry built once.

    :func:`choose` runs for every sample of a block; this holds what does not depend on the sample: the items' shapes,
    a spatial index of them (:class:`shapely.STRtree`) and the unions of the item sets that samples share for the
    coverage test. Build one per search (``Candidates(source.search(...))``) and pass it to every :func:`choose` of
    the block; the results are the same as with the plain item list.
    """

    def __init__(self, items: Sequence[pystac.Item]) -> None:
        self.items: tuple[pystac.Item, ...] = tuple(items)
        self.geometries = np.array([shape(i.geometry) for i in self.items], dtype=object)
        self._tree = shapely.STRtree(self.geometries)
        self._unions: dict[tuple[tuple[int, ...], bool], BaseGeometry] = {}

    def __len__(self) -> int:
        return len(self.items)

    def intersecting(self, footprint: BaseGeometry) -> list[int]:
        """Indices (in search order) of the items that intersect ``footprint``; a footprint unwrapped past 180 also
        takes the items that intersect it shifted by -360 (the other side of the antimeridian)."""
        if not self.items:
            return []
        shapes = [footprint]
        if footprint.bounds[2] > 180:
            shapes.append(shapely.affinity.translate(footprint, xoff=-360))
        hits: set[int] = set()
        for geom in shapes:
            near = self._tree.query(geom)  # envelopes that meet: a superset, then the exact test on those alone
            hits.update(int(k) for k in near[shapely.intersects(self.geometries[near], geom)])
        return sorted(hits)

    def union(self, indices: Sequence[int], unwrapped: bool) -> BaseGeometry:
        """The union of the items ``indices`` (and of its copy shifted by +360 when ``unwrapped``), built once."""
        key = (tuple(indices), unwrapped)
        union = self._unions.get(key)
        if union is None:
            union = shapely.union_all(list(self.geometries[list(indices)]))
            if unwrapped:  # footprint unwrapped across the antimeridian
                union = shapely.union(union, shapely.affinity.translate(union, xoff=360))
            shapely.prepare(union)  # for the covers test of every sample that shares this union
            self._unions[key] = union
        return union


def _covers_enough(footprint: BaseGeometry, candidates: Candidates, indices: Sequence[int],
                   min_coverage: float) -> bool:
    """Whether the items ``indices`` together cover at least ``min_coverage`` of the footprint's area.

    The answer is the one of the plain test (the area of footprint ∩ union over the footprint's, compared with
    ``min_coverage``); two shortcuts only skip work whose outcome is known: no area is needed when any fraction is
    enough, and a footprint the union covers whole has the fraction 1 (up to rounding, far below ``_FULL``'s margin).
    """
    if min_coverage <= 0:  # a fraction is never negative
        return True
    area = footprint.area
    if not area:
        return False  # a degenerate footprint counts as uncovered
    union = candidates.union(indices, footprint.bounds[2] > 180)
    if min_coverage <= _FULL and shapely.covers(union, footprint):
        return True
    return not float(footprint.intersection(union).area / area) < min_coverage


def _cloud(item: pystac.Item, modality: ModalitySpec) -> float:
    prop = modality.collection.cloud_cover_property
    value = item.properties.get(prop) if prop else None
    return float(value) if value is not None else 0.0


def _epsg(item: pystac.Item) -> int | None:
    props = item.properties
    if "proj:epsg" in props:
        return props["proj:epsg"]
    code = props.get("proj:code")
    return int(code.split(":")[1]) if isinstance(code, str) and code.upper().startswith("EPSG:") else None


def _ordered(items: Sequence[pystac.Item], modality: ModalitySpec, epsg: int) -> tuple[pystac.Item, ...]:
    """Mosaic priority: items in the sample's own CRS first (no reprojection), then least cloudy, then by id."""
    return tuple(sorted(items, key=lambda i: (_epsg(i) != epsg, _cloud(i, modality), i.id)))


def _scenes(candidates: Candidates, indices: Sequence[int]) -> dict[dt.date, list[int]]:
    out: dict[dt.date, list[int]] = {}
    for k in indices:
        out.setdefault(item_time_range(candidates.items[k])[0].astimezone(dt.UTC).date(), []).append(k)
    return out


def _secs(a: dt.datetime, b: dt.datetime) -> float:
    return abs((a - b).total_seconds())


def choose(recipe: Recipe, name: str, candidates: Candidates | Sequence[pystac.Item], footprint: BaseGeometry,
           epsg: int, anchor_time: dt.datetime | None) -> Choice | NoChoice:
    """Apply modality ``name``'s rule to the candidate items of one sample.

    Args:
        recipe: The recipe.
        name: Modality name.
        candidates: Items of the block's search (any may miss this sample): a :class:`Candidates` built once for
            the block (fast), or the plain list.
        footprint: The sample's lon/lat footprint.
        epsg: The sample's CRS (items in it are preferred in the mosaic).
        anchor_time: The anchor modality's chosen time for this sample (None if unavailable or this is the anchor).
    """
    modality = recipe.modalities[name]
    rule = modality.rule
    if rule.type == "nearest" and anchor_time is None:
        return NoChoice("anchor modality unavailable, so there is no date to match")
    if not isinstance(candidates, Candidates):
        candidates = Candidates(candidates)
    indices = candidates.intersecting(footprint)
    if not indices:
        return NoChoice("no item intersects the sample" + ("" if rule.type == "static" else " in the search window"))
    if rule.type == "static":
        if not _covers_enough(footprint, candidates, indices, rule.min_coverage):
            return NoChoice(f"items cover less than {rule.min_coverage:.0%} of the sample")
        ordered = _ordered([candidates.items[k] for k in indices], modality, epsg)
        return Choice(ordered, item_time_range(ordered[0])[0])
    if rule.type == "same_year":
        year = (anchor_time or recipe.time.middle).year
        same = [k for k in indices if item_time_range(candidates.items[k])[0].year <= year
                <= item_time_range(candidates.items[k])[1].year]
        if not same:
            return NoChoice(f"no item for year {year}")
        if not _covers_enough(footprint, candidates, same, rule.min_coverage):
            return NoChoice(f"items of {year} cover less than {rule.min_coverage:.0%} of the sample")
        ordered = _ordered([candidates.items[k] for k in same], modality, epsg)
        return Choice(ordered, item_time_range(ordered[0])[0])

    ranked = []
    for day, members in _scenes(candidates, indices).items():
        scene = [candidates.items[k] for k in members]
        cloud = sum(_cloud(i, modality) for i in scene) / len(scene)
        t = item_time_range(scene[0])[0]
        if cloud > rule.max_cloud_cover or not _covers_enough(footprint, candidates, members,
                                                              rule.min_coverage):
            continue
        if rule.type == "nearest":
            gap = _secs(t, anchor_time)
            if gap > rule.tolerance_days * 86400:
                continue
            key = (gap, cloud, day.isoformat())
        else:  # least_cloudy
            key = (cloud, _secs(t, recipe.time.middle), day.isoformat())
        ranked.append((key, scene, t))
    if not ranked:
        when = (f"within {rule.tolerance_days:g} days of the anchor" if rule.type == "nearest"
                else "in the time window")
        cloud = f" with cloud cover <= {rule.max_cloud_cover:g}%" if rule.max_cloud_cover < 100 else ""
        return NoChoice(f"no scene {when}{cloud} covering >= {rule.min_coverage:.0%} of the sample")
    _, scene, t = min(ranked, key=lambda r: r[0])
    return Choice(_ordered(scene, modality, epsg), t)


def search_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A lon/lat bbox for search; footprints unwrapped past 180 search the whole longitude band they touch."""
    w, s, e, n = bbox
    if e > 180:
        return (-180.0, s, 180.0, n)
    return (w, s, e, n)
