"""The overview's data: one row per sample (footprint, anchor date, availability, valid fractions, caption), the
filters of the overview page and what they match, counted and drawn server-side.

A query (:class:`Query`) keeps the samples that have every modality of ``has``, none of ``lacks``, a valid fraction
of modality ``valid`` (the share of its pixels whose ``<m>_valid`` is True; 0 for a sample without it) within
``[valid_min, valid_max]``, an anchor date within ``[date_from, date_to]`` (days, inclusive; samples without an
anchor scene are dropped when a date bound is given), ``text`` in the caption and ``id`` in the sample id (both
case-insensitive). Its answer (:meth:`CubeIndex.query`) holds the counts per modality and the co-availability of
the matched samples, a page of them, and what the map draws: one footprint per sample, or, when more than
``max_points`` samples match, one feature per Major TOM cell (or per lon/lat bin when even the cells are too many),
so the browser never receives millions of shapes.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pyproj import Transformer

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.errors import CubeError

MAX_POINTS = 5000  #: default: above this many matched samples the map shows cells or bins, not footprints
BIN_STEPS_DEG = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  #: lon/lat bin sides tried, finest first
PER_PAGE = 50


class Query(BaseModel):
    """The overview's filters, its colouring and its page (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    has: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()
    valid: str | None = Field(None, description="the modality whose valid fraction valid_min/valid_max bound "
                              "(default: the anchor modality)")
    valid_min: float | None = Field(None, ge=0, le=1)
    valid_max: float | None = Field(None, ge=0, le=1)
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    text: str = ""
    id: str = ""
    colour: str = Field("", description="'available:<m>', 'valid:<m>' or 'date' (default: the anchor's availability)")
    page: int = Field(0, ge=0)
    per_page: int = Field(PER_PAGE, ge=1, le=500)

    @field_validator("has", "lacks", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(m for m in (x.strip() for x in v.split(",")) if m)
        return v

    @classmethod
    def from_params(cls, params: dict[str, str]) -> Query:
        """A query from URL parameters (empty values are unset).

        Raises:
            CubeError: an unknown parameter or a value of the wrong type (one line).
        """
        try:
            return cls.model_validate({k: v for k, v in params.items() if v != ""})
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e["loc"])
            raise CubeError(f"query parameter {where}={e.get('input')!r}: {e['msg']}") from None


class CubeIndex:
    """Per-sample columns of a cube, read once; valid fractions are read from the masks when first asked for.

    Args:
        ds: The cube, opened without dask (``xr.open_zarr(path, chunks=None)``) or with it.
        meta: Its metadata.
        max_points: Above this many matched samples, the map aggregates.
    """

    def __init__(self, ds: xr.Dataset, meta: CubeMeta, max_points: int = MAX_POINTS) -> None:
        self.ds, self.meta, self.max_points = ds, meta, max_points
        self.ids = np.array([str(i) for i in ds["sample_id"].values])
        self.n = len(self.ids)
        self.position = {sid: i for i, sid in enumerate(self.ids)}
        self.modalities = list(meta.modalities)
        self.available = {m: np.asarray(ds[f"{m}_available"].values, dtype=bool) for m in self.modalities}
        anchor = np.asarray(ds["anchor_time"].values, dtype="datetime64[ns]")
        self.anchor_day = np.where(np.isnat(anchor), np.nan,
                                   anchor.astype("datetime64[D]").astype(np.int64).astype(float))
        self.captions = np.array([str(c) for c in ds["caption"].values]) if "caption" in ds else np.full(self.n, "")
        self._lower_captions = np.char.lower(self.captions.astype(str))
        self._lower_ids = np.char.lower(self.ids)
        self.cells = np.array([sid.rsplit("_", 2)[0] if sid.count("_") >= 2 else sid for sid in self.ids])
        self.lon = np.asarray(ds["lon"].values, dtype=float)
        self.lat = np.asarray(ds["lat"].values, dtype=float)
        self.x0 = np.asarray(ds["x0"].values, dtype=float)
        self.y0 = np.asarray(ds["y0"].values, dtype=float)
        self.epsg = np.asarray(ds["epsg"].values, dtype=int)
        self.rings = footprints(self.x0, self.y0, self.epsg, meta.patch_px * meta.pixel_size_m)
        self.anchor_time = anchor
        self.times = {m: np.asarray(ds[f"{m}_time"].values, dtype="datetime64[ns]") for m in self.modalities}
        self._valid: dict[str, np.ndarray] = {}

    # -- columns -------------------------------------------------------------------------------------------------
    def valid_fraction(self, modality: str) -> np.ndarray:
        """Share of valid pixels of ``modality`` per sample (0 where the sample lacks it), read once, by shard."""
        self.meta.modality(modality)
        if modality not in self._valid:
            var = self.ds[f"{modality}_valid"]
            step = max(1, int((var.encoding.get("shards") or var.encoding.get("chunks") or (64,))[0]))
            out = np.empty(self.n)
            for a in range(0, self.n, step):
                out[a:a + step] = np.asarray(var[a:a + step].values, dtype=bool).mean(axis=(1, 2))
            self._valid[modality] = out
        return self._valid[modality]

    def bbox(self) -> list[float]:
        """West, south, east, north of every footprint."""
        if not self.n:
            return [-180.0, -90.0, 180.0, 90.0]
        lon, lat = self.rings[..., 0], self.rings[..., 1]
        return [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]

    def date_range(self) -> list[str | None]:
        """First and last anchor date (ISO), None when no sample has an anchor scene."""
        days = self.anchor_day[np.isfinite(self.anchor_day)]
        return [_iso(days.min()), _iso(days.max())] if days.size else [None, None]

    # -- queries -------------------------------------------------------------------------------------------------
    def match(self, q: Query) -> np.ndarray:
        """Boolean mask of the samples that pass the filters of ``q``.

        Raises:
            CubeError: a modality the cube does not have.
        """
        keep = np.ones(self.n, dtype=bool)
        for m in q.has:
            keep &= self.available[self.meta.modality(m).name]
        for m in q.lacks:
            keep &= ~self.available[self.meta.modality(m).name]
        if q.valid_min is not None or q.valid_max is not None:
            frac = self.valid_fraction(q.valid or self.meta.anchor or self.modalities[0])
            if q.valid_min is not None:
                keep &= frac >= q.valid_min
            if q.valid_max is not None:
                keep &= frac <= q.valid_max
        if q.date_from is not None or q.date_to is not None:
            days = self.anchor_day
            keep &= np.isfinite(days)
            if q.date_from is not None:
                keep &= days >= _day(q.date_from)
            if q.date_to is not None:
                keep &= days <= _day(q.date_to)
        if q.text.strip():
            keep &= np.char.find(self._lower_captions, q.text.strip().lower()) >= 0
        if q.id.strip():
            keep &= np.char.find(self._lower_ids, q.id.strip().lower()) >= 0
        return keep

    def colour_values(self, colour: str) -> tuple[str, np.ndarray]:
        """The colouring a query asks for, normalised, and its value per sample (NaN: none).

        Raises:
            CubeError: not ``available:<m>``, ``valid:<m>`` or ``date``.
        """
        what, _, m = (colour or f"available:{self.meta.anchor or self.modalities[0]}").partition(":")
        if what == "date" and not m:
            return "date", self.anchor_day
        if what in ("available", "valid") and m:
            self.meta.modality(m)
            values = self.available[m].astype(float) if what == "available" else self.valid_fraction(m)
            return f"{what}:{m}", values
        raise CubeError(f"colour={colour!r}: expected 'available:<modality>', 'valid:<modality>' or 'date'")

    def query(self, q: Query) -> dict[str, Any]:
        """What the overview shows for ``q`` (JSON-able): counts, co-availability, map features, one page."""
        keep = self.match(q)
        idx = np.flatnonzero(keep)
        colour, values = self.colour_values(q.colour)
        avail = np.stack([self.available[m][idx] for m in self.modalities]).astype(np.int64) if self.modalities \
            else np.zeros((0, idx.size), dtype=np.int64)
        co = avail @ avail.T
        pages = max(1, math.ceil(idx.size / q.per_page))
        page = min(q.page, pages - 1)
        shown = idx[page * q.per_page:(page + 1) * q.per_page]
        return {
            "total": self.n, "matched": int(idx.size),
            "counts": {m: int(co[i, i]) for i, m in enumerate(self.modalities)},
            "co": {"modalities": self.modalities, "counts": co.tolist()},
            "colour": colour,
            "map": self.features(idx, values),
            "page": page, "pages": pages, "per_page": q.per_page,
            "samples": [self.row(int(i)) for i in shown],
        }

    def row(self, i: int) -> dict[str, Any]:
        """One line of the sample list."""
        return {"id": str(self.ids[i]), "anchor": _iso(self.anchor_day[i]),
                "available": [m for m in self.modalities if self.available[m][i]],
                "caption": str(self.captions[i])}

    def features(self, idx: np.ndarray, values: np.ndarray) -> dict[str, Any]:
        """Map features of the samples ``idx``: footprints, or aggregates when there are more than ``max_points``."""
        if idx.size <= self.max_points:
            return {"level": "sample", "features": [
                {"id": str(self.ids[i]), "ring": _ring(self.rings[i]), "n": 1, "value": _num(values[i])}
                for i in idx]}
        frame = pd.DataFrame({"cell": self.cells[idx], "value": values[idx],
                              "west": self.rings[idx, :, 0].min(axis=1), "east": self.rings[idx, :, 0].max(axis=1),
                              "south": self.rings[idx, :, 1].min(axis=1), "north": self.rings[idx, :, 1].max(axis=1)})
        if frame["cell"].nunique() <= self.max_points:
            g = frame.groupby("cell", sort=True).agg(west=("west", "min"), east=("east", "max"),
                                                     south=("south", "min"), north=("north", "max"),
                                                     size=("value", "size"), mean=("value", "mean"))
            return {"level": "cell", "features": [
                {"id": str(cell), "ring": _box(r["west"], r["south"], r["east"], r["north"]), "n": int(r["size"]),
                 "value": _num(r["mean"])} for cell, r in g.iterrows()]}
        lon, lat = self.lon[idx], self.lat[idx]
        for step in BIN_STEPS_DEG:
            bx, by = np.floor(lon / step).astype(np.int64), np.floor(lat / step).astype(np.int64)
            if len(set(zip(bx.tolist(), by.tolist(), strict=True))) <= self.max_points or step == BIN_STEPS_DEG[-1]:
                break
        g = pd.DataFrame({"bx": bx, "by": by, "value": values[idx]}).groupby(["bx", "by"], sort=True)["value"]
        stats = g.agg(["size", "mean"])
        return {"level": "bin", "step_deg": step, "features": [
            {"id": f"{bx * step:g},{by * step:g}", "ring": _box(bx * step, by * step, (bx + 1) * step,
                                                                 (by + 1) * step),
             "n": int(r["size"]), "value": _num(r["mean"])} for (bx, by), r in stats.iterrows()]}

    def table(self) -> dict[str, Any]:
        """Every sample's columns (what a static export filters in the browser): rings, cells, anchor days,
        availability and valid fraction per modality, captions."""
        return {"ids": self.ids.tolist(), "cells": self.cells.tolist(),
                "rings": [_ring(r) for r in self.rings],
                "anchor": [_num(d) for d in self.anchor_day],
                "available": {m: self.available[m].astype(int).tolist() for m in self.modalities},
                "valid": {m: self.valid_fraction(m).tolist() for m in self.modalities},
                "captions": self.captions.tolist()}


def footprints(x0: np.ndarray, y0: np.ndarray, epsg: np.ndarray, size_m: float) -> np.ndarray:
    """Footprint corners in lon/lat, ``(n, 4, 2)``, clockwise from the top-left, of squares of side ``size_m`` whose
    top-left corners are ``x0``, ``y0`` in their ``epsg``; a footprint across the antimeridian keeps longitudes
    past 180 so it stays one shape."""
    xs = np.stack([x0, x0 + size_m, x0 + size_m, x0], axis=1)
    ys = np.stack([y0, y0, y0 - size_m, y0 - size_m], axis=1)
    out = np.empty((len(x0), 4, 2))
    for code in np.unique(epsg):
        sel = epsg == code
        lon, lat = Transformer.from_crs(int(code), 4326, always_xy=True).transform(xs[sel], ys[sel])
        out[sel, :, 0], out[sel, :, 1] = lon, lat
    lon = out[..., 0]
    wrap = lon.max(axis=1) - lon.min(axis=1) > 180
    lon[wrap] = np.where(lon[wrap] < 0, lon[wrap] + 360, lon[wrap])
    return out


def _ring(r: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 6), round(float(y), 6)] for x, y in r]


def _box(w: float, s: float, e: float, n: float) -> list[list[float]]:
    return _ring(np.array([[w, n], [e, n], [e, s], [w, s]]))


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _day(d: dt.date) -> float:
    return float((d - dt.date(1970, 1, 1)).days)


def _iso(day: float) -> str | None:
    return None if not math.isfinite(day) else (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()
