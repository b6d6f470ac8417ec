"""The cube's metadata, read and written in one place: :class:`CubeMeta` (the store) and :class:`ModalityMeta` (each
modality). Every reader of a cube (the loader, eo_models, ``eo-dataset info``/``report``/``plan``, the token store)
goes through :meth:`CubeMeta.from_attrs`; every writer through :meth:`CubeMeta.to_attrs` /
:meth:`ModalityMeta.to_attrs`. Derived stores (tokens, embeddings, generated modalities) declare themselves with the
same schema (``store``), so ``eo-dataset info`` understands them.

The attrs on disk (Zarr v3 ``zarr.json``), as before this module existed::

    title, recipe, recipe_hash, eo_dataset_version, grid, anchor, conventions, stats,
    modalities: {<m>: {collection, title, kind, bands, units, scale, offset, nodata, licence, [citation],
                       resolution_m,
                       resampling, rule, source, [classes], [transform], [display], [caption_role],
                       [derived: {expression, inputs, reads}]}}
    eo_store: tokens | embeddings | generated   (derived stores only)

A derived modality (computed at build time from other modalities' bands) has ``derived`` (its expression, the
aliases it declares, and ``reads``: every ``modality.band`` it reads) instead of ``rule`` and ``source``.

``nodata`` is a number or null (no nodata value: float arrays are filled with NaN). Cubes written before this
module stored the string ``"nan"`` and the kind ``osm``; both are read as ``None`` and ``multilabel``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eo_dataset.errors import CubeError
from eo_dataset.spec.meaning import KIND_ALIASES, CaptionRole, DisplaySpec, Kind, Transform
from eo_dataset.spec.recipe import ModalitySpec

#: What kind of store a set of attrs describes: a cube built by eo-dataset, or a store derived from one.
StoreKind = Literal["cube", "tokens", "embeddings", "generated"]
CONVENTIONS = "physical = stored * scale + offset; <m>_available False means no data (fill values)"
_ROOT_KEYS = ("title", "recipe", "recipe_hash", "eo_dataset_version", "grid", "modalities", "anchor", "conventions",
              "stats", "eo_store")


class DerivedMeta(BaseModel):
    """How a derived modality was computed: ``expression`` over the bands in ``reads`` (physical values)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    expression: str
    inputs: dict[str, str] = Field(default_factory=dict, description="aliases the expression uses")
    reads: tuple[str, ...] = Field(default=(), description="every band read, as modality.band")


class ModalityMeta(BaseModel):
    """One modality of a cube: what its stored numbers are and what they mean."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    bands: tuple[str, ...] = Field(min_length=1)
    kind: Kind = "continuous"
    collection: str = ""
    title: str = ""
    units: str = ""
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = Field(None, description="stored value of missing pixels; None: NaN (floats)")
    licence: str = ""
    citation: str | None = Field(None, description="how to cite the product (paper, DOI), from its collection")
    resolution_m: float = Field(gt=0)
    resampling: str = ""
    rule: dict[str, Any] | None = None
    source: str | None = None
    classes: dict[int, str] | None = None
    transform: Transform | None = None
    display: DisplaySpec | None = None
    caption_role: CaptionRole | None = None
    derived: DerivedMeta | None = Field(None, description="for a derived modality: how it was computed")

    @field_validator("kind", mode="before")
    @classmethod
    def _kind_alias(cls, v: Any) -> Any:
        return KIND_ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("nodata", mode="before")
    @classmethod
    def _nodata(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "nan":  # cubes written before this schema
            return None
        if isinstance(v, float) and math.isnan(v):
            return None
        return v

    @classmethod
    def from_spec(cls, name: str, m: ModalitySpec) -> ModalityMeta:
        """The metadata a build writes for a recipe's modality."""
        c = m.collection
        fill = m.fill_value
        nodata = None if isinstance(fill, float) and math.isnan(fill) else fill
        display = c.display
        if display is not None and not set(display.bands_used()) <= set(m.band_names):
            display = None  # the recipe selected bands without those the picture needs: drawn as a plain band
        return cls(name=name, bands=m.band_names, kind=c.kind, collection=c.name, title=c.title, units=c.units,
                   scale=c.scale, offset=c.offset, nodata=nodata,
                   licence=c.licence, citation=c.citation, resolution_m=m.resolution_m,
                   resampling="rasterised" if c.reads_osm else "derived" if m.derived else m.resampling_method,
                   rule=m.rule.model_dump(mode="json") if m.rule else None, source=m.source,
                   classes=dict(c.classes) if c.classes else None, transform=c.transform, display=display,
                   caption_role=c.caption_role,
                   derived=DerivedMeta(expression=m.derived.expression, inputs=dict(m.derived.inputs),
                                       reads=tuple(map(str, m.derived.references()))) if m.derived else None)

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able attrs (the name is the key they are stored under)."""
        out = self.model_dump(mode="json", exclude={"name"}, exclude_none=True)
        if self.classes:
            out["classes"] = {str(k): v for k, v in self.classes.items()}
        out["nodata"] = self.nodata if self.nodata is None or not float(self.nodata).is_integer() else int(self.nodata)
        return out

    @property
    def fill_value(self) -> float:
        """The stored value of missing pixels (NaN when there is no nodata value)."""
        return float("nan") if self.nodata is None else float(self.nodata)

    @property
    def class_table(self) -> dict[int, str]:
        """Class id -> name (empty for modalities without classes)."""
        return dict(sorted((self.classes or {}).items()))


class CubeMeta(BaseModel):
    """A cube's (or a derived store's) root metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: StoreKind = "cube"
    title: str = ""
    modalities: dict[str, ModalityMeta]
    grid: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    recipe_hash: str | None = None
    version: str | None = Field(None, description="the eo-dataset version that wrote it")
    anchor: str | None = None
    stats: dict[str, Any] | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="other attrs, e.g. a derived store's own")

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str = "the store") -> CubeMeta:
        """Parse root attrs (``xr.open_zarr(path).attrs`` or ``zarr.open_group(path).attrs``).

        Raises:
            CubeError: the attrs are not those of an eo-dataset cube or derived store, or are malformed.
        """
        attrs = dict(attrs)
        store = attrs.get("eo_store") or ("tokens" if "eo_models_tokens" in attrs else "cube")
        modalities = attrs.get("modalities")
        if store == "cube" and (not isinstance(modalities, dict) or not modalities or "grid" not in attrs):
            raise CubeError(f"{where} is a Zarr store but not an eo-dataset cube (no 'modalities'/'grid' attrs)")
        try:
            return cls(store=store, title=attrs.get("title", ""),
                       modalities={n: ModalityMeta(name=n, **a) for n, a in (modalities or {}).items()},
                       grid=attrs.get("grid"), recipe=attrs.get("recipe"), recipe_hash=attrs.get("recipe_hash"),
                       version=attrs.get("eo_dataset_version"), anchor=attrs.get("anchor"), stats=attrs.get("stats"),
                       extra={k: v for k, v in attrs.items() if k not in _ROOT_KEYS})
        except (ValidationError, TypeError) as exc:
            raise CubeError(f"{where}: malformed eo-dataset attrs: {_first_error(exc)}") from None

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able root attrs, in the layout of the module docstring."""
        out: dict[str, Any] = {"title": self.title}
        if self.store != "cube":
            out["eo_store"] = self.store
        for key, value in (("recipe", self.recipe), ("recipe_hash", self.recipe_hash),
                           ("eo_dataset_version", self.version), ("grid", self.grid)):
            if value is not None:
                out[key] = value
        out["modalities"] = {n: m.to_attrs() for n, m in self.modalities.items()}
        if self.anchor is not None:
            out["anchor"] = self.anchor
        if self.store == "cube":
            out["conventions"] = CONVENTIONS
        if self.stats is not None:
            out["stats"] = self.stats
        return out | self.extra

    def modality(self, name: str) -> ModalityMeta:
        """One modality's metadata.

        Raises:
            CubeError: no such modality (the message lists those there are).
        """
        if name not in self.modalities:
            raise CubeError(f"no modality {name!r} in the cube; it has {list(self.modalities)}")
        return self.modalities[name]

    @property
    def pixel_size_m(self) -> float:
        """The grid's base resolution."""
        return float(self._grid("pixel_size_m"))

    @property
    def patch_px(self) -> int:
        """The sample side in base pixels."""
        return int(self._grid("patch_px"))

    def _grid(self, key: str) -> Any:
        if not self.grid or key not in self.grid:
            raise CubeError(f"the {self.store}'s attrs have no grid.{key}")
        return self.grid[key]

    def band_stats(self, modality: str) -> tuple[list[str], list[float], list[float]]:
        """Band names, means and standard deviations (stored units) of one modality.

        A band without valid pixels in the whole cube (count 0) gets mean 0 and std 1, and a band with std 0 gets
        std 1, each with a warning, so normalising never divides by zero.

        Raises:
            CubeError: the cube has no ``stats`` attr (built before statistics existed) or not this modality.
        """
        stats = self.stats
        if not stats:
            raise CubeError("the cube has no 'stats' attr (normalisation statistics); rebuild it with this version "
                            "of eo-dataset, or pass normalize=False and normalise yourself")
        if modality not in stats:
            raise CubeError(f"the cube's stats have no modality {modality!r}; they have {sorted(stats)}")
        per_band = stats[modality]["bands"]
        bands = list(self.modalities[modality].bands) if modality in self.modalities else list(per_band)
        means, stds = [], []
        for band in bands:
            s = per_band.get(band)
            if s is None or not s.get("count") or s.get("mean") is None:
                warnings.warn(f"{modality}/{band}: no valid pixels in the cube's statistics; using mean 0, std 1",
                              stacklevel=3)
                means.append(0.0)
                stds.append(1.0)
                continue
            std = float(s["std"])
            if not math.isfinite(std) or std == 0.0:
                warnings.warn(f"{modality}/{band}: standard deviation is {std}; using 1", stacklevel=3)
                std = 1.0
            means.append(float(s["mean"]))
            stds.append(std)
        return bands, means, stds


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(exc)
