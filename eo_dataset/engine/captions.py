"""Captions: the text modality, written from each sample's own aligned data.

The default :class:`TemplateCaptioner` states only what the sample's arrays support: land-cover fractions, elevation
and relief, canopy height, OpenStreetMap coverage, the anchor scene's season and cloudiness, and the place (from the
offline GeoNames gazetteer of ``reverse_geocode`` when a town lies within 50 km, else latitude/longitude words).
Phrasing varies between several templates, chosen deterministically from the seed and the sample id. Any callable
with the :class:`Captioner` signature (a vision-language model, say) can replace it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import Recipe

PLACE_RADIUS_KM = 50.0


class Captioner(Protocol):
    """Turns one sample's aligned arrays into a caption."""

    def __call__(self, sample: Sample, arrays: Mapping[str, Any], recipe: Recipe) -> str:
        """``arrays`` holds the sample's slice of every cube variable (``<m>``, ``<m>_valid``, ``<m>_available``,
        ``<m>_time``, ``anchor_time``)."""
        ...


@dataclass(frozen=True)
class Facts:
    """What a caption may say, each item None when the data do not support it."""

    sample_id: str
    lon: float
    lat: float
    available: tuple[str, ...]
    land_cover: tuple[tuple[str, float], ...] | None = None  # (class name, fraction), largest first, >= 5 %
    elevation_m: float | None = None  # mean
    relief_m: float | None = None  # max - min
    canopy_cover: float | None = None  # fraction of pixels with canopy >= 2 m
    canopy_height_m: float | None = None  # 95th percentile of canopy where >= 2 m
    osm_cover: tuple[tuple[str, float], ...] | None = None  # (layer, fraction) for layers covering >= 1 %
    season: str | None = None
    month: str | None = None
    cloud_fraction: float | None = None  # of the anchor's pixels that have data
    place: str | None = None


def _role(recipe: Recipe, name: str) -> str | None:
    """What a caption may take from a modality: its collection's ``caption_role`` (data, not guessed from names)."""
    return recipe.modalities[name].collection.caption_role


def _season(month: int, lat: float) -> str:
    north = ["winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer", "autumn", "autumn",
             "autumn", "winter"]
    season = north[month - 1]
    if lat < 0:
        season = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}[season]
    return season


@lru_cache(maxsize=4096)
def place_name(lat: float, lon: float) -> str | None:
    """'near Irschenberg, Bavaria, Germany' when a GeoNames town lies within 50 km, else None (offline)."""
    try:
        import reverse_geocode
    except ImportError:  # optional dependency
        return None
    hit = reverse_geocode.get((lat, lon))
    d = _km(lat, lon, hit["latitude"], hit["longitude"])
    if d > PLACE_RADIUS_KM:
        return None
    parts = [hit.get("city"), hit.get("state"), hit.get("country")]
    return "near " + ", ".join(p for p in parts if p)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0 * math.acos(max(-1.0, min(1.0, c)))


def latlon_words(lat: float, lon: float) -> str:
    """'at 47.83 N, 11.95 E'."""
    return f"at {abs(lat):.2f} {'N' if lat >= 0 else 'S'}, {abs(lon):.2f} {'E' if lon >= 0 else 'W'}"


def facts(sample: Sample, arrays: Mapping[str, Any], recipe: Recipe) -> Facts:
    """Everything the sample's data support, computed from its arrays (valid pixels of available modalities)."""
    lon, lat = sample.center_lonlat
    available = tuple(m for m in recipe.modalities if bool(arrays[f"{m}_available"]))
    out: dict[str, Any] = {}
    for name in available:
        role, valid = _role(recipe, name), np.asarray(arrays[f"{name}_valid"], bool)
        data = np.asarray(arrays[name])
        if not valid.any():
            continue
        m = recipe.modalities[name]
        if role == "land_cover" and "land_cover" not in out:
            ids, counts = np.unique(data[0][valid], return_counts=True)
            frac = counts / counts.sum()
            names = m.collection.classes or {}
            pairs = sorted(((names.get(int(i), f"class {int(i)}"), float(f)) for i, f in zip(ids, frac, strict=True)
                            if f >= 0.05 and int(i) in names), key=lambda p: -p[1])
            out["land_cover"] = tuple(pairs) or None
        elif role == "elevation" and "elevation_m" not in out:
            z = data[0][valid].astype(np.float64) * m.collection.scale + m.collection.offset
            out["elevation_m"], out["relief_m"] = float(z.mean()), float(z.max() - z.min())
        elif role == "canopy" and "canopy_cover" not in out:
            h = data[0][valid].astype(np.float64) * m.collection.scale + m.collection.offset
            trees = h >= 2
            out["canopy_cover"] = float(trees.mean())
            out["canopy_height_m"] = float(np.percentile(h[trees], 95)) if trees.any() else None
        elif role == "osm" and "osm_cover" not in out:
            layers = [(b, float((data[i][valid] > 0).mean())) for i, b in enumerate(m.band_names)]
            out["osm_cover"] = tuple((b, f) for b, f in layers if f >= 0.01) or None
    anchor = recipe.time.anchor
    if anchor in available:
        t = np.datetime64(arrays["anchor_time"], "s").astype(dt.datetime)
        out["season"], out["month"] = _season(t.month, lat), t.strftime("%B")
        data, valid = np.asarray(arrays[anchor]), np.asarray(arrays[f"{anchor}_valid"], bool)
        fill = recipe.modalities[anchor].fill_value
        has = ~np.all(np.isnan(data) if isinstance(fill, float) and math.isnan(fill) else data == fill, axis=0)
        if has.any():
            out["cloud_fraction"] = float((has & ~valid).sum() / has.sum())
    return Facts(sample.id, lon, lat, available, place=place_name(round(lat, 3), round(lon, 3)), **out)


def _pct(f: float) -> str:
    return f"{round(100 * f)}%"


def make_captioner(spec: Any) -> Captioner:
    """The captioner a recipe's ``captions`` section names (``captioner: package.module:factory``, else templates)."""
    if spec.captioner is None:
        return TemplateCaptioner(spec.seed)
    import importlib

    module, _, attr = spec.captioner.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"captions.captioner {spec.captioner!r} cannot be imported: {exc}") from exc
    return factory(seed=spec.seed)


class TemplateCaptioner:
    """The default captioner: facts -> one of several phrasings, picked by ``seed`` and the sample id."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _pick(self, sample_id: str, key: str, options: list[str]) -> str:
        h = hashlib.sha256(f"{self.seed}:{sample_id}:{key}".encode()).digest()
        return options[h[0] % len(options)]

    def __call__(self, sample: Sample, arrays: Mapping[str, Any], recipe: Recipe) -> str:
        """A caption for one sample."""
        return self.caption(facts(sample, arrays, recipe))

    def caption(self, f: Facts) -> str:
        """Phrase the facts."""
        where = f.place or latlon_words(f.lat, f.lon)
        pick = lambda key, options: self._pick(f.sample_id, key, options)  # noqa: E731
        if not f.available:
            return f"No data is available for this {where.split(',')[0]} sample ({where}); nothing can be said."
        sentences = []
        if f.land_cover:
            (c0, p0), rest = f.land_cover[0], f.land_cover[1:]
            tail = "".join(f", {c} ({_pct(p)})" for c, p in rest[:2])
            plain = "".join(f", {c} {_pct(p)}" for c, p in rest[:2])
            sentences.append(pick("lc", [
                f"A landscape {where} of mostly {c0} ({_pct(p0)}){tail}.",
                f"Land cover {where}: {c0} {_pct(p0)}{plain}.",
                f"{c0.capitalize()} ({_pct(p0)}){tail.replace(', ', ' and ', 1) if tail else ''} {where}.",
            ]))
        else:
            sentences.append(pick("where", [f"A scene {where}.", f"An area {where}."]))
        if f.elevation_m is not None:
            relief = ("flat" if f.relief_m < 20 else "gently rolling" if f.relief_m < 100
                      else "hilly" if f.relief_m < 400 else "mountainous")
            sentences.append(pick("dem", [
                f"The terrain is {relief}, about {round(f.elevation_m)} m above sea level with "
                f"{round(f.relief_m)} m of relief.",
                f"Elevation averages {round(f.elevation_m)} m and varies by {round(f.relief_m)} m ({relief}).",
            ]))
        if f.canopy_cover is not None:
            if f.canopy_height_m is None:
                sentences.append("No tree canopy above 2 m.")
            else:
                sentences.append(pick("canopy", [
                    f"Trees cover {_pct(f.canopy_cover)} of it, reaching {round(f.canopy_height_m)} m.",
                    f"Canopy of {round(f.canopy_height_m)} m (95th percentile) over {_pct(f.canopy_cover)} of the "
                    "area.",
                ]))
        if f.osm_cover:
            parts = ", ".join(f"{b.replace('_', ' ')} {_pct(p)}" for b, p in f.osm_cover)
            sentences.append(f"OpenStreetMap layers cover: {parts}.")
        if f.season:
            cloud = ("" if f.cloud_fraction is None else
                     " under clear skies" if f.cloud_fraction < 0.01 else
                     f" with {_pct(f.cloud_fraction)} of the scene cloudy or shadowed")
            sentences.append(pick("time", [f"Seen in {f.month} ({f.season}){cloud}.",
                                           f"Imaged in {f.season} ({f.month}){cloud}."]))
        return " ".join(sentences)
