"""Recipes: a YAML file in ``catalogs/`` -> one validated, frozen :class:`Recipe`.

A recipe names the grid, the time rule and, per modality, the collection (bands, dtype, nodata, scale/offset,
quality mask, licence; from ``catalogs/collections/<name>.yaml`` or inline), the source to search and how to pick
items. Validation is done by pydantic; every problem is reported in one :class:`~eo_dataset.errors.RecipeError`
naming the YAML key path, what was found and what was expected.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from eo_dataset.errors import RecipeError
from eo_dataset.spec.derived import DerivedError, DerivedSpec, check_references, derivation_order, parse_expression
from eo_dataset.spec.grid import GridSpec
from eo_dataset.spec.meaning import KIND_ALIASES, CaptionRole, DisplaySpec, Kind, Transform

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_PACKAGE_CATALOGS = Path(__file__).parents[1] / "catalogs"  # inside an installed wheel
_REPO_CATALOGS = Path(__file__).parents[2] / "catalogs"  # in a source checkout / editable install


def catalogs_dir() -> Path:
    """The directory holding the bundled recipes and collection specs."""
    return _PACKAGE_CATALOGS if _PACKAGE_CATALOGS.is_dir() else _REPO_CATALOGS


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DropNone(_Spec):
    """A spec whose optional fields listed in ``_drop_if_none`` are left out of its dump while unset.

    Fields added after the first release are listed there, so recipes that do not use them keep their hash
    (:attr:`Recipe.hash`) and existing cubes can still be resumed.
    """

    _drop_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        data = handler(self)
        for key in self._drop_if_none:
            if data.get(key, 0) is None:
                del data[key]
        return data


class OsmLayerSpec(_Spec):
    """What an OpenStreetMap band holds: elements matching any tag filter; lines drawn ``width_m`` wide."""

    tags: dict[str, bool | tuple[str, ...]] = Field(min_length=1, description="key: true (any value) or values")
    width_m: float | None = Field(None, gt=0, description="line width in metres (None: lines 1 pixel wide)")


class BandSpec(_DropNone):
    """One band of a collection."""

    _drop_if_none: ClassVar[tuple[str, ...]] = ("osm",)

    name: str
    asset: str | None = Field(None, description="STAC asset key; defaults to the band name")
    index: int = Field(1, ge=1, description="1-based band index inside the asset's file")
    resolution_m: float | None = Field(None, gt=0, description="native resolution (informative)")
    description: str = ""
    osm: OsmLayerSpec | None = Field(None, description="OpenStreetMap layers (kind 'multilabel'): the tag filter")

    @property
    def asset_key(self) -> str:
        """The STAC asset key holding this band."""
        return self.asset or self.name


class QualitySpec(_Spec):
    """How a collection's quality asset marks pixels valid: exactly one of the three rules."""

    asset: str
    valid_values: tuple[int, ...] | None = None
    invalid_values: tuple[int, ...] | None = None
    invalid_bits: tuple[int, ...] | None = None


class HarmonizeSpec(_Spec):
    """Shift the digital numbers of items whose processing version is at least ``min_version``.

    Sentinel-2 L2A from processing baseline 04.00 on (25 Jan 2022) stores reflectance * 10000 + 1000
    (``BOA_ADD_OFFSET`` = -1000); ``{property: s2:processing_baseline, min_version: "04.00", add: -1000,
    min_value: 1}`` brings those items back to the scale of older baselines, so values compare across years.
    """

    property: str = Field(description="item property holding a dotted version, e.g. s2:processing_baseline")
    min_version: str = Field(description="items with property >= this version (compared numerically) are shifted")
    add: float = Field(description="added to every data band's value (not to the quality asset)")
    min_value: float | None = Field(None, description="shifted values are clipped to at least this")

    @field_validator("min_version")
    @classmethod
    def _version(cls, v: str) -> str:
        version_tuple(v)
        return v

    def applies(self, properties: dict[str, Any]) -> bool:
        """Whether an item with these properties is shifted (items without the property are not)."""
        value = properties.get(self.property)
        if value is None:
            return False
        try:
            return version_tuple(str(value)) >= version_tuple(self.min_version)
        except ValueError:
            return False


def version_tuple(text: str) -> tuple[int, ...]:
    """``"04.00"`` -> ``(4, 0)``.

    Raises:
        ValueError: not a dotted number.
    """
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ValueError(f"found {text!r}, expected a dotted version number such as '04.00'") from None


#: Collection fields that say what a modality means (how to model, draw and caption it), not what the cube holds:
#: left out of :attr:`Recipe.hash`, so adding or editing them never makes a built cube "another recipe".
MEANING_ONLY = ("transform", "caption_role", "display")


class CollectionSpec(_DropNone):
    """A collection as the engine needs it: bands, native dtype, nodata, scale/offset, quality rule, licence, and
    what the modality means (:mod:`eo_dataset.spec.meaning`: kind, transform, display, caption role)."""

    _drop_if_none: ClassVar[tuple[str, ...]] = ("harmonize", "citation", *MEANING_ONLY)

    name: str
    title: str = ""
    kind: Kind = "continuous"
    transform: Transform | None = Field(None, description="model the values as 10 log10(x) ('db', SAR power)")
    caption_role: CaptionRole | None = Field(None, description="what captions may say from this collection")
    display: DisplaySpec | None = Field(None, description="how to draw it (quicklooks, browser, figures)")
    temporal: Literal["dynamic", "annual", "static"] = "dynamic"
    bands: tuple[BandSpec, ...] = Field(min_length=1)
    dtype: str
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    units: str
    licence: str
    citation: str | None = Field(None, description="how to cite the product (paper, DOI)")
    quality: QualitySpec | None = None
    classes: dict[int, str] | None = None
    cloud_cover_property: str | None = "eo:cloud_cover"
    harmonize: HarmonizeSpec | None = Field(None, description="DN shift for newer processing versions")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        return _check_dtype(v)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind_alias(cls, v: Any) -> Any:
        return KIND_ALIASES.get(v, v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _meaning(self) -> CollectionSpec:
        names = [b.name for b in self.bands]
        layers = [b.osm is not None for b in self.bands]
        if any(layers) and not all(layers):
            raise ValueError("either every band has an 'osm' tag filter (OpenStreetMap layers) or none; found "
                             f"filters on {[n for n, o in zip(names, layers, strict=True) if o]} only")
        if any(layers) and self.kind != "multilabel":
            raise ValueError(f"OpenStreetMap layers are presence layers: expected kind 'multilabel', found "
                             f"{self.kind!r}")
        if self.kind == "text":
            raise ValueError("kind 'text' is for derived stores (captions), not for a raster collection")
        if self.display is not None:
            unknown = [b for b in self.display.bands_used() if b not in names]
            if unknown:
                raise ValueError(f"display: bands {unknown} are not bands of the collection; it has {names}")
        return self

    @property
    def reads_osm(self) -> bool:
        """Whether the bands are OpenStreetMap layers (rasterised from an extract rather than read from COGs)."""
        return self.bands[0].osm is not None


class LeastCloudy(_Spec):
    """The anchor rule: the least cloudy scene of the recipe's time window."""

    type: Literal["least_cloudy"]
    max_cloud_cover: float = Field(100.0, ge=0, le=100)
    min_coverage: float = Field(0.5, ge=0, le=1, description="fraction of the sample the scene must cover")


class Nearest(_Spec):
    """The scene nearest in time to the anchor date, within a tolerance."""

    type: Literal["nearest"]
    tolerance_days: float = Field(ge=0)
    max_cloud_cover: float = Field(100.0, ge=0, le=100)
    min_coverage: float = Field(0.5, ge=0, le=1)


class SameYear(_Spec):
    """An annual product of the anchor's year (the recipe window's middle year when the anchor is missing)."""

    type: Literal["same_year"]
    min_coverage: float = Field(0.0, ge=0, le=1)


class Static(_Spec):
    """A time-less product (DEM, canopy height): every intersecting item, mosaicked."""

    type: Literal["static"]
    min_coverage: float = Field(0.0, ge=0, le=1)


Rule = Annotated[LeastCloudy | Nearest | SameYear | Static, Field(discriminator="type")]
RESAMPLINGS = ("nearest", "bilinear", "cubic", "average", "mode")
QUERY_OPERATORS = ("eq", "neq", "lt", "lte", "gt", "gte", "in")  # the STAC API query extension's


class ModalitySpec(_DropNone):
    """One modality of the cube: a collection from a source, on the sample grid at one resolution; or, with
    ``derived``, computed from other modalities' bands (:mod:`eo_dataset.spec.derived`)."""

    _drop_if_none: ClassVar[tuple[str, ...]] = ("filter", "derived", "source", "rule")
    collection: CollectionSpec
    source: str | None = Field(None, description="the source its items come from (not for derived modalities)")
    rule: Rule | None = Field(None, description="how items are picked (not for derived modalities)")
    resolution_m: float = Field(gt=0)
    bands: tuple[str, ...] | None = Field(None, description="subset of the collection's bands; default all")
    dtype: str | None = Field(None, description="storage dtype; default the collection's")
    resampling: Literal["nearest", "bilinear", "cubic", "average", "mode"] | None = None
    query: dict[str, dict[str, Any]] = Field(default_factory=dict, description="STAC query on item properties")
    filter: dict[str, Any] | None = Field(None, description="CQL2 filter on items (CQL2 text or JSON; stored as JSON)")
    derived: DerivedSpec | None = Field(None, description="computed at build time from other modalities' bands")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        return None if v is None else _check_dtype(v)

    @model_validator(mode="after")
    def _read_or_derived(self) -> ModalitySpec:
        if self.derived is not None:
            odd = [k for k in ("source", "rule", "resampling", "filter") if getattr(self, k) is not None]
            odd += ["query"] if self.query else []
            if odd:
                raise ValueError(f"a derived modality is computed from other modalities, not read: found "
                                 f"{', '.join(odd)}; remove {'it' if len(odd) == 1 else 'them'}")
            return self
        missing = [k for k in ("source", "rule") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"missing {' and '.join(missing)}: a modality is read from a source (source: NAME, "
                             "rule: {type: ...}) or computed from other modalities (derived: {expression: ...})")
        return self

    @field_validator("filter", mode="before")
    @classmethod
    def _filter(cls, v: Any) -> dict[str, Any] | None:
        if v is None:
            return None
        if not isinstance(v, str | dict):
            raise ValueError(f"expected CQL2 text (e.g. \"eo:cloud_cover < 20\") or a CQL2-JSON mapping, found "
                             f"{type(v).__name__}")
        import cql2

        try:
            expr = cql2.Expr(v)
            expr.validate()
        except Exception as exc:  # cql2 raises its own ParseError/ValidationError and ValueError
            lines = [line.strip(" |") for line in str(exc).strip().splitlines() if line.strip(" |")]
            where = lines[0].lstrip("-> ") if lines and lines[0].startswith("-->") else ""
            what = lines[-1].lstrip("= ") if lines else type(exc).__name__
            raise ValueError(f"not a valid CQL2 expression{' at ' + where if where else ''}: {what}") from None
        return expr.to_json()

    @field_validator("query")
    @classmethod
    def _query(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for prop, ops in v.items():
            bad = sorted(set(ops) - set(QUERY_OPERATORS))
            if bad:
                raise ValueError(f"query on {prop!r}: unknown operator(s) {bad}, expected {list(QUERY_OPERATORS)}")
        return v

    @property
    def band_specs(self) -> tuple[BandSpec, ...]:
        """The selected bands, in recipe order."""
        by_name = {b.name: b for b in self.collection.bands}
        return tuple(by_name[n] for n in self.bands) if self.bands else self.collection.bands

    @property
    def band_names(self) -> tuple[str, ...]:
        """Names of the selected bands."""
        return tuple(b.name for b in self.band_specs)

    @property
    def storage_dtype(self) -> np.dtype:
        """The dtype the cube stores."""
        return np.dtype(self.dtype or self.collection.dtype)

    @property
    def fill_value(self) -> float | int:
        """Value of pixels with no data: the collection's nodata, else NaN for floats, else 0."""
        if self.collection.nodata is not None:
            return self.storage_dtype.type(self.collection.nodata).item()
        return float("nan") if self.storage_dtype.kind == "f" else 0

    @property
    def resampling_method(self) -> str:
        """The resampling used onto the sample grid (nearest for categorical data unless set)."""
        return self.resampling or ("nearest" if self.collection.kind == "categorical" else "bilinear")


OVERPASS_ENDPOINT = "https://overpass-api.de/api"  # the public instance: the overpass default, never contacted in tests
# the options that only some source types take, and those types
_TYPED_OPTIONS: dict[str, tuple[str, ...]] = {
    "page_size": ("stac_api",),
    **dict.fromkeys(("retries", "backoff_s", "timeout_s", "cache", "cache_dir"),
                    ("stac_api", "overpass", "osm_extract_index")),
    **dict.fromkeys(("max_area_km2", "rate_limit"), ("overpass",)),
    "href_template": ("tile_index",),
}


class SourceSpec(_Spec):
    """Where items come from, and how their assets are read.

    ``static_catalog``: a STAC catalog / item collection JSON on disk; ``stac_api``: a STAC API searched with
    pystac-client; ``geoparquet``: a stac-geoparquet file (e.g. an ``eo-dataset snapshot``); ``tile_index``: a
    GeoJSON/GeoParquet index of COG tiles; ``osm_file``: an OpenStreetMap extract (.osm, .osm.bz2, .osm.pbf);
    ``overpass``: an Overpass API (``href`` its base URL, default the public instance), for small regions;
    ``osm_extract_index``: an index of OSM extracts (Geofabrik's ``index-v1.json`` schema), the smallest covering
    extract per block; ``synthetic``: pixels made from the sample id (benchmarks of the orchestration).
    Source settings are not part of the recipe hash: a build can move from an API to its snapshot and resume.
    """

    type: Literal["static_catalog", "stac_api", "geoparquet", "tile_index", "osm_file", "overpass",
                  "osm_extract_index", "synthetic"] = Field(
        description="static_catalog (JSON on disk), stac_api (STAC API URL), geoparquet (stac-geoparquet file), "
                    "tile_index (index of COG tiles), osm_file (OpenStreetMap extract), overpass (Overpass API), "
                    "osm_extract_index (an index of OpenStreetMap extracts, e.g. Geofabrik's index-v1.json), "
                    "synthetic (pixels made from the sample id: benchmarks of the orchestration)")
    href: str = Field(description="path or URL; relative paths are relative to the working directory; for "
                                  f"overpass the API's base URL (default {OVERPASS_ENDPOINT})")
    sign: Literal["planetary_computer"] | None = Field(
        None, description="sign asset hrefs right before reading (never stored): planetary_computer SAS tokens")
    page_size: int = Field(100, gt=0, le=10_000, description="stac_api: items per page (the search 'limit')")
    retries: int = Field(5, ge=0, le=20, description="stac_api, overpass: retries of a failed request (429, 5xx, "
                                                     "network)")
    backoff_s: float = Field(0.5, ge=0, le=60, description="stac_api, overpass: backoff factor between retries (s)")
    timeout_s: float = Field(60.0, gt=0, description="stac_api, overpass: timeout of one HTTP request (s); for "
                                                     "overpass also the query's server-side [timeout:]")
    cache: bool = Field(True, description="stac_api: keep each block's search results on disk; overpass: keep "
                                          "each block's answer on disk (osmnx's response cache); a rerun reuses them")
    cache_dir: str | None = Field(None, description="stac_api, overpass: cache folder (default $EO_DATASET_CACHE or "
                                                    "~/.cache/eo-dataset, then searches/ or overpass/)")
    max_area_km2: float = Field(500.0, gt=0, description="overpass: the largest block box asked for (km2); Overpass "
                                                         "is for small regions, use osm_file extracts beyond")
    rate_limit: bool = Field(True, description="overpass: ask the server's /status for a free slot before each "
                                               "query (osmnx's overpass_rate_limit); off for a server without it")
    href_template: str | None = Field(None, description="tile_index: each tile's href made from its index "
                                                        "properties, e.g. 'https://host/chm/{tile}.tif'")

    @model_validator(mode="before")
    @classmethod
    def _default_endpoint(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "overpass" and data.get("href") is None:
            return {**data, "href": OVERPASS_ENDPOINT}
        return data

    @field_validator("href")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("type") == "overpass":
            return _check_endpoint(v)
        return v

    @model_validator(mode="after")
    def _options_fit_type(self) -> SourceSpec:
        fields = type(self).model_fields
        odd = [k for k, types in _TYPED_OPTIONS.items()
               if self.type not in types and getattr(self, k) != fields[k].default]
        if odd:
            common = [t for t in _TYPED_OPTIONS[odd[0]] if all(t in _TYPED_OPTIONS[k] for k in odd)]
            if not common:
                per = ", ".join(f"{k} ({' or '.join(_TYPED_OPTIONS[k])})" for k in odd)
                raise ValueError(f"found options of other source types for type {self.type!r}: {per}; remove them")
            verb = "applies" if len(odd) == 1 else "apply"
            raise ValueError(f"{', '.join(odd)} only {verb} to type {' or '.join(map(repr, common))} (found type "
                             f"{self.type!r}); remove {'it' if len(odd) == 1 else 'them'}")
        return self


def _check_endpoint(url: str) -> str:
    """An Overpass API base URL: http(s), a host, no query; the ``/interpreter`` path is osmnx's to add."""
    parts = urlsplit(url)
    example = f"expected the API's base URL, e.g. {OVERPASS_ENDPOINT} or http://127.0.0.1:12345/api"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host; {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"a URL with a query string or fragment; {example}")
    if parts.path.rstrip("/").endswith(("/interpreter", "/status")):
        raise ValueError(f"the URL of one of the API's endpoints (osmnx adds /interpreter itself); {example}")
    return url.rstrip("/")


class TimeSpec(_Spec):
    """The anchor modality and the window its scenes are picked from."""

    anchor: str
    start: dt.date
    end: dt.date

    @property
    def middle(self) -> dt.datetime:
        """The middle of the window (UTC)."""
        a = dt.datetime.combine(self.start, dt.time(), dt.UTC)
        b = dt.datetime.combine(self.end, dt.time(23, 59, 59), dt.UTC)
        return a + (b - a) / 2


class GridModel(_Spec):
    """The recipe's ``grid`` section (see :class:`eo_dataset.spec.grid.GridSpec`)."""

    cell_size_m: float = Field(10_000.0, gt=0)
    margin_m: float = Field(340.0, ge=0)
    patch_px: int = Field(264, gt=0, strict=True)
    pixel_size_m: float = Field(10.0, gt=0)
    subcells: int = Field(4, gt=0)
    origin: Literal["exact", "snap"] = "exact"
    snap_m: float = Field(60.0, gt=0)

    def spec(self) -> GridSpec:
        """As the grid module's dataclass."""
        return GridSpec(**self.model_dump())


class BuildSpec(_DropNone):
    """Storage layout of the cube."""

    _drop_if_none: ClassVar[tuple[str, ...]] = ("codec",)

    shard_samples: int = Field(16, gt=0, description="samples per shard = samples per build block")
    zstd_level: int = Field(3, ge=-7, le=22, description="level of the zstd and blosc-zstd codecs")
    codec: Literal["blosc-lz4", "blosc-zstd", "zstd", "none"] | None = Field(
        None, description="compressor of the pixel and valid-mask arrays; unset: zstd (as cubes built before this "
                          "option); the bundled recipes use blosc-lz4, the cheapest to load (docs/loading.md)")

    @model_validator(mode="after")
    def _blosc_level(self) -> BuildSpec:
        if self.codec == "blosc-zstd" and not 0 <= self.zstd_level <= 9:
            raise ValueError(f"codec blosc-zstd takes zstd_level 0-9 (found {self.zstd_level}); lower it or use "
                             "codec zstd")
        return self


class CaptionSpec(_DropNone):
    """The text modality: a caption per sample, written from the sample's own aligned data."""

    _drop_if_none: ClassVar[tuple[str, ...]] = ("captioner",)

    seed: int = Field(0, description="picks among phrasings; the same seed gives the same captions")
    captioner: str | None = Field(None, description="'package.module:factory' returning a Captioner (called with "
                                                    "seed=...); default: the offline template captioner")


class Recipe(_DropNone):
    """A validated recipe; collections are resolved (inlined), so the recipe alone describes the cube."""

    _drop_if_none: ClassVar[tuple[str, ...]] = ("captions",)

    name: str
    description: str = ""
    grid: GridModel = GridModel()
    time: TimeSpec
    sources: dict[str, SourceSpec] = Field(min_length=1)
    modalities: dict[str, ModalitySpec] = Field(min_length=1)
    build: BuildSpec = BuildSpec()
    captions: CaptionSpec | None = Field(None, description="write a `caption` per sample (the text modality)")

    @property
    def read_modalities(self) -> dict[str, ModalitySpec]:
        """The modalities read from sources (every one but the derived)."""
        return {k: m for k, m in self.modalities.items() if m.derived is None}

    @property
    def derived_order(self) -> list[str]:
        """The derived modalities, each after the derived modalities it reads."""
        return derivation_order({k: tuple(dict.fromkeys(r.modality for r in m.derived.references()))
                                 for k, m in self.modalities.items() if m.derived is not None})

    def derived_from(self, names: Sequence[str]) -> list[str]:
        """The derived modalities that read any of ``names``, directly or through other derived modalities."""
        out: list[str] = []
        for k in self.derived_order:
            reads = {r.modality for r in self.modalities[k].derived.references()}
            if reads & (set(names) | set(out)):
                out.append(k)
        return out

    def resolved(self) -> dict[str, Any]:
        """The recipe as plain JSON-able data (stored in the cube's attrs)."""
        return self.model_dump(mode="json")

    @property
    def hash(self) -> str:
        """A stable hash of everything that determines the cube's layout and content.

        Source locations are left out: moving a catalog (or pointing ``--source`` at a mirror) is not a new recipe.
        """
        data = {k: v for k, v in self.resolved().items() if k != "sources"}
        for m in data["modalities"].values():  # what a modality means is not what the cube holds
            c = m["collection"]
            for key in MEANING_ONLY:
                c.pop(key, None)
            if c["kind"] == "multilabel" and c["bands"][0].get("osm"):
                c["kind"] = "osm"  # spelled so before the kinds had one vocabulary: older cubes keep their hash
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    #: Source fields ``--source NAME.FIELD=VALUE`` may replace besides the href (locations, not content).
    LOCATION_FIELDS: ClassVar[tuple[str, ...]] = ("href", "href_template")

    def with_sources(self, overrides: dict[str, str]) -> Recipe:
        """A copy with source locations replaced: ``NAME`` -> a new href (``--source NAME=HREF``), or
        ``NAME.FIELD`` -> a new value of a location field (``--source canopy_tiles.href_template=URL/{tile}.tif``:
        the tiles of a mirror). Locations are not part of the recipe's hash."""
        changes: dict[str, dict[str, str]] = {}
        for key, value in overrides.items():
            name, _, field = key.partition(".")
            if name not in self.sources:
                raise RecipeError(f"--source names {[name]}, but the recipe's sources are {sorted(self.sources)}")
            if (field or "href") not in self.LOCATION_FIELDS:
                raise RecipeError(f"--source {key}=...: {field!r} is not a location field of a source; use one of "
                                  f"{list(self.LOCATION_FIELDS)} (e.g. --source {name}=HREF)")
            kind = self.sources[name].type
            if field and kind not in _TYPED_OPTIONS.get(field, (kind,)):
                raise RecipeError(f"--source {key}=...: source {name!r} is a {kind} source, which has no {field}")
            changes.setdefault(name, {})[field or "href"] = value
        sources = {k: v.model_copy(update=changes.get(k, {})) for k, v in self.sources.items()}
        return self.model_copy(update={"sources": sources})


def _check_dtype(v: str) -> str:
    try:
        dtype = np.dtype(v)
    except TypeError as exc:
        raise ValueError(f"not a numpy dtype name: {v!r} (expected e.g. 'uint16', 'int16', 'float32')") from exc
    if dtype.kind not in "uif":
        raise ValueError(f"dtype {v!r} is not numeric; expected an integer or float dtype such as 'uint16'")
    return dtype.name


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("least_cloudy", "nearest", "same_year", "static") and out.endswith("rule"):
            continue  # pydantic's discriminator tag, not a YAML key
        else:
            out += f".{part}" if out else str(part)
    return out or "<top level>"


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _load_collection(name: str, search: list[Path], where: str) -> dict[str, Any]:
    for folder in search:
        path = folder / f"{name}.yaml"
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise RecipeError(f"{where}: collection file {path} is not valid YAML: {exc}") from None
            if not isinstance(data, dict):
                raise RecipeError(f"{where}: collection file {path} does not hold a mapping")
            return data
    known = sorted({p.stem for folder in search if folder.is_dir() for p in folder.glob("*.yaml")})
    raise RecipeError(f"{where}: found collection {name!r}, expected one of {known} "
                      f"(files <name>.yaml in {', '.join(str(f) for f in search)}) or an inline mapping")


def parse_recipe(data: Any, base_dir: Path | None = None, origin: str = "recipe") -> Recipe:
    """Validate recipe data (already parsed YAML) into a :class:`Recipe`.

    Args:
        data: The mapping read from YAML.
        base_dir: Directory of the recipe file; ``<base_dir>/collections`` is searched first for collections.
        origin: Name used in error messages (usually the file path).

    Raises:
        RecipeError: listing every problem with its key path.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: found {type(data).__name__}, expected a mapping with keys name, time, "
                          "sources, modalities")
    data = copy.deepcopy(data)
    search = list(dict.fromkeys(p.resolve() for p in ([base_dir / "collections"] if base_dir else [])
                                + [catalogs_dir() / "collections"]))
    problems: list[str] = []
    modalities = data.get("modalities")
    for mname, mod in (modalities.items() if isinstance(modalities, dict) else ()):
        if not isinstance(mname, str) or not _NAME_RE.match(mname):
            problems.append(f"modalities.{mname}: found name {mname!r}, expected lowercase letters, digits and _ "
                            "starting with a letter (it becomes a variable name)")
        if isinstance(mod, dict) and isinstance(mod.get("collection"), str):
            try:
                mod["collection"] = _load_collection(mod["collection"], search, f"modalities.{mname}.collection")
            except RecipeError as exc:
                problems.append(str(exc))
    if problems:
        raise RecipeError(f"{origin} is not a valid recipe:\n  - " + "\n  - ".join(problems))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            found = "" if err["type"] == "missing" else f" (found {_describe(err.get('input'))})"
            problems.append(f"{_path(err['loc'])}: {err['msg']}{found}")
        raise RecipeError(f"{origin} is not a valid recipe:\n  - " + "\n  - ".join(problems)) from None
    problems = _cross_checks(recipe)
    if problems:
        raise RecipeError(f"{origin} is not a valid recipe:\n  - " + "\n  - ".join(problems))
    return recipe


def _cross_checks(r: Recipe) -> list[str]:
    problems = []
    if r.time.anchor not in r.modalities:
        problems.append(f"time.anchor: found {r.time.anchor!r}, expected one of the modalities "
                        f"{sorted(r.modalities)}")
    elif r.modalities[r.time.anchor].derived is not None:
        problems.append(f"time.anchor: found the derived modality {r.time.anchor!r}, expected a modality read "
                        "from a source (its scene dates the sample)")
    elif r.modalities[r.time.anchor].rule.type != "least_cloudy":
        problems.append(f"modalities.{r.time.anchor}.rule.type: the anchor modality must use 'least_cloudy' "
                        f"(found {r.modalities[r.time.anchor].rule.type!r})")
    if r.time.end < r.time.start:
        problems.append(f"time.end: found {r.time.end}, expected a date on or after time.start ({r.time.start})")
    patch_m = r.grid.patch_px * r.grid.pixel_size_m
    problems += _derived_checks(r)
    for name, m in r.modalities.items():
        where = f"modalities.{name}"
        if m.derived is None and m.source not in r.sources:
            problems.append(f"{where}.source: found {m.source!r}, expected one of {sorted(r.sources)}")
        k = m.resolution_m / r.grid.pixel_size_m
        if abs(k - round(k)) > 1e-9 or round(k) < 1 or r.grid.patch_px % round(k):
            fits = [f"{r.grid.pixel_size_m * d:g}" for d in range(1, r.grid.patch_px + 1) if r.grid.patch_px % d == 0]
            problems.append(f"{where}.resolution_m: found {m.resolution_m}, expected a multiple of the base "
                            f"{r.grid.pixel_size_m} m that divides the {patch_m:g} m patch "
                            f"(e.g. {', '.join(fits[:8])})")
        known = [b.name for b in m.collection.bands]
        if m.bands is not None and not m.bands:
            problems.append(f"{where}.bands: found an empty list, expected band names (or leave it out for all)")
        for i, band in enumerate(m.bands or ()):
            if band not in known:
                problems.append(f"{where}.bands[{i}]: found {band!r}, expected one of {known}")
            elif band in (m.bands or ())[:i]:
                problems.append(f"{where}.bands[{i}]: found {band!r} a second time, expected each band once")
        if m.collection.kind == "categorical" and m.resampling_method not in ("nearest", "mode"):
            problems.append(f"{where}.resampling: found {m.resampling!r} for categorical data, expected 'nearest' "
                            "or 'mode' (interpolating class ids invents classes)")
        if m.collection.kind == "multilabel" and m.collection.reads_osm:
            for i, band in enumerate(m.collection.bands):
                if band.osm is None:
                    problems.append(f"{where}.collection.bands[{i}]: OpenStreetMap band {band.name!r} has no 'osm' "
                                    "tag filter; expected e.g. {osm: {tags: {building: true}}}")
            if m.storage_dtype != np.uint8:
                problems.append(f"{where}.dtype: found {m.storage_dtype.name}, expected uint8 for OpenStreetMap "
                                "layers")
        want = {"static": "static", "annual": "same_year"}.get(m.collection.temporal)
        if want and m.rule is not None and m.rule.type != want:
            problems.append(f"{where}.rule.type: collection {m.collection.name!r} is {m.collection.temporal}, "
                            f"found rule {m.rule.type!r}, expected {want!r}")
        q = m.collection.quality
        if q is not None and sum(x is not None for x in (q.valid_values, q.invalid_values, q.invalid_bits)) != 1:
            problems.append(f"{where}.collection.quality: expected exactly one of valid_values, invalid_values, "
                            "invalid_bits")
        nodata = m.collection.nodata
        if not _holds(np.dtype(m.collection.dtype), nodata):
            problems.append(f"{where}.collection.nodata: found {nodata}, which the collection's dtype "
                            f"{m.collection.dtype} cannot hold; expected a value of that dtype")
        elif not _holds(m.storage_dtype, nodata):
            problems.append(f"{where}.dtype: storage dtype {m.storage_dtype.name} cannot hold the collection's "
                            f"nodata {nodata}; expected a dtype that can (e.g. the collection's "
                            f"{m.collection.dtype})")
    return problems


def _derived_checks(r: Recipe) -> list[str]:
    """Every derived modality's band references, resolution and band count; no cycles among them."""
    problems = []
    bands = {k: tuple(m.bands or (b.name for b in m.collection.bands)) for k, m in r.modalities.items()}
    for name, m in r.modalities.items():
        if m.derived is None:
            continue
        where = f"modalities.{name}"
        expr = parse_expression(m.derived.expression, m.derived.inputs)
        problems += [f"{where}.derived.expression: {p}" for p in check_references(expr.direct, bands)]
        for alias, ref in expr.aliases.items():
            problems += [f"{where}.derived.inputs.{alias}: {p}" for p in check_references((ref,), bands)]
        for modality in dict.fromkeys(ref.modality for ref in expr.refs):
            other = r.modalities.get(modality)
            if other is not None and other.resolution_m != m.resolution_m:
                problems.append(f"{where}.resolution_m: found {m.resolution_m:g}, but input modality {modality!r} "
                                f"is at {other.resolution_m:g} m; expected the resolution of its inputs "
                                f"({other.resolution_m:g})")
        if len(bands[name]) != 1:
            problems.append(f"{where}.bands: a derived modality computes one band (its expression), found "
                            f"{list(bands[name])}; select one with bands: [NAME] or use a one-band collection")
    if not problems:
        try:
            r.derived_order  # noqa: B018 (checks for cycles)
        except DerivedError as exc:
            first = exc.cycle[0] if exc.cycle else next(iter(r.modalities))
            problems.append(f"modalities.{first}.derived.expression: {exc}")
    return problems


def _holds(dtype: np.dtype, value: float | None) -> bool:
    if value is None or dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return bool(np.isfinite(value) and value == int(value) and info.min <= value <= info.max)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file.

    Args:
        path: A file path, or the name of a bundled recipe (``demo`` -> ``catalogs/demo.yaml``).

    Raises:
        RecipeError: the file is missing, not YAML, or not a valid recipe.
    """
    p = Path(path)
    if not p.is_file() and (catalogs_dir() / f"{path}.yaml").is_file():
        p = catalogs_dir() / f"{path}.yaml"
    if not p.is_file():
        raise RecipeError(f"recipe file {str(path)!r} not found; pass a YAML path or a bundled recipe name "
                          f"({', '.join(sorted(x.stem for x in catalogs_dir().glob('*.yaml')))})")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{p}: not valid YAML: {exc}") from None
    return parse_recipe(data, base_dir=p.parent, origin=str(p))
