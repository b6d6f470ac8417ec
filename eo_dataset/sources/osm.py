"""OpenStreetMap -> multi-band rasters on a sample's grid.

Each band is a tag filter (``{building: true}``, ``{highway: [primary, secondary]}``): areas matching it are filled,
lines are drawn ``width_m`` wide. Extracts are read once per process and file (``.osm``/``.osm.bz2`` through
``osmnx.features_from_xml``; ``.osm.pbf`` through pyosmium), indexed, and every sample takes only the features that
intersect it. Pixels outside the extract's coverage (its ``<bounds>`` / PBF header box) are not valid, so "no
buildings" is never confused with "not mapped here". An Overpass answer (:mod:`eo_dataset.sources.overpass`) becomes
the same :class:`Extract`, its coverage the box asked for.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from pyproj import Transformer
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from eo_dataset.errors import SourceError
from eo_dataset.spec.grid import Sample

TagFilter = Mapping[str, bool | Sequence[str]]


@dataclass(frozen=True)
class Layer:
    """One output band: the features whose tags match ``tags``; lines drawn ``width_m`` wide (None: 1 pixel)."""

    name: str
    tags: TagFilter
    width_m: float | None = None

    def matches(self, tags: Mapping[str, str]) -> bool:
        """Whether an element with these tags belongs to the layer."""
        for key, want in self.tags.items():
            value = tags.get(key)
            if value is None:
                continue
            if want is True and value != "no" or (not isinstance(want, bool) and value in want):
                return True
        return False


@dataclass
class Extract:
    """The features of one OSM file (lon/lat), their tags, a spatial index, and what the file covers."""

    path: str
    geometries: list[BaseGeometry]
    tags: list[dict[str, str]]
    coverage: BaseGeometry
    tree: shapely.STRtree

    @classmethod
    def of(cls, path: str, geometries: list[BaseGeometry], tags: list[dict[str, str]],
           coverage: BaseGeometry) -> Extract:
        """An extract of these features (lon/lat), spatially indexed; ``path`` names where they came from."""
        return cls(path, geometries, tags, coverage, shapely.STRtree(geometries))

    def query(self, area: BaseGeometry) -> list[int]:
        """Indices of the features intersecting ``area`` (lon/lat)."""
        return sorted(int(i) for i in self.tree.query(area, predicate="intersects"))


def _bounds_of_xml(path: Path) -> BaseGeometry | None:
    import bz2

    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        head = f.read(4096)
    m = re.search(r"<bounds\b([^>]*)>", head)
    if not m:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    return box(float(attrs["minlon"]), float(attrs["minlat"]), float(attrs["maxlon"]), float(attrs["maxlat"]))


def _read_xml(path: Path, keys: tuple[str, ...]) -> tuple[list[BaseGeometry], list[dict[str, str]]]:
    import osmnx

    try:
        gdf = osmnx.features_from_xml(path, tags=dict.fromkeys(keys, True))
    except osmnx._errors.InsufficientResponseError:  # no feature with these keys in the file
        return [], []
    return features_of(gdf)


def features_of(gdf: Any) -> tuple[list[BaseGeometry], list[dict[str, str]]]:
    """The geometries and tags of an osmnx features GeoDataFrame (from a file or an Overpass answer)."""
    columns = [c for c in gdf.columns if c != "geometry"]
    tags = [{c: str(v) for c, v in zip(columns, row, strict=True) if isinstance(v, str)}
            for row in gdf[columns].itertuples(index=False)]
    return list(gdf.geometry.values), tags


def _read_pbf(path: Path, keys: tuple[str, ...]) -> tuple[list[BaseGeometry], list[dict[str, str]]]:
    import osmium

    wkb = osmium.geom.WKBFactory()
    geoms, tags = [], []
    processor = (osmium.FileProcessor(str(path)).with_locations().with_areas()
                 .with_filter(osmium.filter.KeyFilter(*keys)))
    for obj in processor:
        try:
            if obj.is_area():
                if obj.from_way() and "highway" in obj.tags and obj.tags.get("area") != "yes":
                    continue  # a closed road (roundabout) stays a line, as osmnx reads it from XML
                g = wkb.create_multipolygon(obj)
            elif isinstance(obj, osmium.osm.Way):
                if obj.is_closed() and any(k in obj.tags for k in ("building", "landuse", "natural")):
                    continue  # closed ways of area keys come back as areas
                g = wkb.create_linestring(obj)
            else:
                continue
        except RuntimeError:  # a way with missing nodes (cut at the extract's edge)
            continue
        geoms.append(shapely.from_wkb(g))
        tags.append({t.k: t.v for t in obj.tags})
    return geoms, tags


def extract_coverage(path: str | Path) -> BaseGeometry:
    """The lon/lat box an OSM file declares it covers (``<bounds>`` or the PBF header), read without the data."""
    p = Path(path)
    if p.name.lower().endswith(".pbf"):
        import osmium

        reader = osmium.io.Reader(str(p), osmium.osm.osm_entity_bits.NOTHING)
        b = reader.header().box()
        reader.close()
        if b.valid():
            return box(b.bottom_left.lon, b.bottom_left.lat, b.top_right.lon, b.top_right.lat)
    else:
        bounds = _bounds_of_xml(p)
        if bounds is not None:
            return bounds
    raise SourceError(f"{path}: the extract declares no bounds (no <bounds> element / PBF header box); add them, "
                      "e.g. with 'osmium extract --bbox ... --set-bounds'")


def extract_timestamp(path: str | Path) -> dt.datetime | None:
    """The snapshot time an OSM file declares (XML ``<osm timestamp=...>``, PBF replication timestamp), if any."""
    p = Path(path)
    if p.name.lower().endswith(".pbf"):
        import osmium

        reader = osmium.io.Reader(str(p), osmium.osm.osm_entity_bits.NOTHING)
        text = reader.header().get("osmosis_replication_timestamp")
        reader.close()
    else:
        import bz2

        with (bz2.open if p.suffix == ".bz2" else open)(p, "rt", encoding="utf-8") as f:
            m = re.search(r"<osm\b[^>]*\btimestamp=\"([^\"]+)\"", f.read(4096))
        text = m.group(1) if m else None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


@lru_cache(maxsize=4)
def load_extract(path: str, keys: tuple[str, ...]) -> Extract:
    """Read an OSM file once per process (features with any of ``keys``)."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"OSM file {path!r} not found; expected a .osm, .osm.bz2 or .osm.pbf extract")
    name = p.name.lower()
    if name.endswith(".pbf"):
        geoms, tags = _read_pbf(p, keys)
    elif name.endswith((".osm", ".osm.bz2", ".xml")):
        geoms, tags = _read_xml(p, keys)
    else:
        raise SourceError(f"{path!r}: unknown OSM format; expected .osm, .osm.bz2 or .osm.pbf")
    try:
        coverage = extract_coverage(p)
    except SourceError:  # no declared bounds: the features' own extent is all we know
        coverage = box(*shapely.union_all(geoms).bounds) if geoms else box(0, 0, 0, 0)
    return Extract.of(path, geoms, tags, coverage)


def to_crs(geoms: Any, epsg: int) -> Any:
    """Lon/lat geometries (one or an array) -> EPSG ``epsg``, all coordinates in one pyproj call."""
    tr = Transformer.from_crs(4326, epsg, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def rasterize(extract: Extract, layers: Sequence[Layer], sample: Sample, resolution_m: float,
              nodata: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Burn the layers onto the sample grid: ``(uint8 (layer, y, x), valid (y, x))``; 1 = feature, 0 = none."""
    shape = sample.shape(resolution_m)
    transform = sample.transform(resolution_m)
    footprint = sample.footprint()
    coverage = to_crs(extract.coverage.intersection(footprint), sample.epsg)
    valid = (rasterio.features.geometry_mask([coverage], shape, transform, invert=True)
             if not coverage.is_empty else np.zeros(shape, bool))
    out = np.zeros((len(layers), *shape), np.uint8)
    hits = extract.query(footprint)
    projected = dict(zip(hits, to_crs(np.array([extract.geometries[i] for i in hits], dtype=object), sample.epsg),
                         strict=True)) if hits else {}
    for b, layer in enumerate(layers):
        areas: list[Any] = []
        lines: list[Any] = []
        for i in hits:
            if not layer.matches(extract.tags[i]):
                continue
            g = projected[i]
            if g.geom_type in ("Polygon", "MultiPolygon"):
                areas.append(g)
            elif g.geom_type in ("LineString", "MultiLineString"):
                lines.append(g.buffer(layer.width_m / 2) if layer.width_m else g)
        if areas:  # a pixel is in an area when its centre is: area-preserving on average
            out[b] |= rasterio.features.rasterize(areas, shape, transform=transform, dtype="uint8")
        if lines:  # every pixel a line (or its width) touches: lines stay connected at any width
            out[b] |= rasterio.features.rasterize(lines, shape, transform=transform, all_touched=True, dtype="uint8")
    out[:, ~valid] = nodata
    return out, valid
