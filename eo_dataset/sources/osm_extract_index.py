"""The ``osm_extract_index`` source: OpenStreetMap at planet scale, from per-region PBF extracts listed in an index.

Geofabrik publishes its extracts with one index, ``https://download.geofabrik.de/index-v1.json``: a GeoJSON
FeatureCollection with one feature per region, its polygon as geometry and, in its properties, ``id``, ``name``,
``parent`` and ``urls`` (``urls.pbf`` is the region's ``.osm.pbf``). This source reads such an index (a local file
or a URL) and answers a block's search with **the smallest extract whose polygon covers the whole block** (the
block's lon/lat box), unless smaller extracts together cover it with less area (a block across a border reads the
two countries, not their continent). Each item's asset ``data`` is the extract's ``urls.pbf``.

Reading an item (:meth:`OsmExtractIndexSource.osm_extract`) fetches its PBF once into the source's cache folder
(``cache_dir``, else ``$EO_DATASET_CACHE/osm-extracts``; with ``cache: false`` a folder under ``$TMPDIR``; downloads
are retried by the one retry policy) and reads it
once per process (:func:`eo_dataset.sources.osm.load_extract`, pyosmium). The features are valid only inside the
region's polygon (not the PBF's header box), so where extracts overlap or meet, "no buildings" is never said
outside what an extract holds. An extract's time is its PBF replication timestamp once it is on disk; an extract
not fetched yet is dated at search time (Geofabrik's ``-latest`` files are at most a day old).

Relative ``urls.pbf`` are relative to the index (a folder of extracts with its own index works offline). Overpass
(:mod:`~eo_dataset.sources.overpass`) stays the choice for small regions; docs/catalogs.md describes the planet-file
alternative (``osmium extract`` per block).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pystac
import shapely
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import cache_dir
from eo_dataset.sources.osm import Extract, extract_timestamp, load_extract
from eo_dataset.sources.retry import RETRY_STATUS, RetryPolicy, is_transient
from eo_dataset.spec.recipe import SourceSpec

__all__ = ["GEOFABRIK_INDEX", "OsmExtractIndexSource", "Region"]

GEOFABRIK_INDEX = "https://download.geofabrik.de/index-v1.json"  # never contacted by the tests
CACHE_KIND = "osm-extracts"  # the cache's sub-folder (eo_dataset.sources.base.cache_dir)
_LOCK = threading.Lock()  # one download at a time per process


@dataclass(frozen=True)
class Region:
    """One extract of the index: its id, polygon (lon/lat), PBF href and polygon area (square degrees)."""

    id: str
    geometry: BaseGeometry
    pbf: str
    area: float


def _read_index(href: str, policy: RetryPolicy, timeout_s: float) -> dict[str, Any]:
    if "://" not in href:
        path = Path(href)
        if not path.is_file():
            raise SourceError(f"OSM extract index {href!r} not found; expected a GeoJSON FeatureCollection of "
                              f"regions with urls.pbf per region, like Geofabrik's {GEOFABRIK_INDEX}")
        text = path.read_text()
    else:
        import requests

        def get() -> str:
            response = requests.get(href, timeout=timeout_s)
            response.raise_for_status()
            return response.text

        try:
            text = policy.call(get, what=f"OSM extract index {href}")
        except Exception as exc:  # requests' errors, after the retries
            raise SourceError(f"OSM extract index {href!r} cannot be fetched ({type(exc).__name__}: {exc}); check "
                              f"the URL (Geofabrik's is {GEOFABRIK_INDEX}) or use a local copy") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise SourceError(f"OSM extract index {href!r} is not a GeoJSON FeatureCollection; expected one feature "
                          "per region with properties id and urls.pbf (Geofabrik's index-v1.json)")
    return data


def _regions(data: dict[str, Any], href: str) -> list[Region]:
    base = href if "://" in href else None
    folder = None if base else Path(href).resolve().parent
    out = []
    for i, feature in enumerate(data.get("features") or []):
        props = feature.get("properties") or {}
        pbf = (props.get("urls") or {}).get("pbf")
        if not pbf or not feature.get("geometry"):  # e.g. index-v1-nogeom.json, or a region without a PBF
            continue
        rid = str(props.get("id") or props.get("name") or f"region-{i}")
        if "://" not in pbf and not Path(pbf).is_absolute():
            pbf = urljoin(base, pbf) if base else str(folder / pbf)
        geom = shape(feature["geometry"])
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        out.append(Region(rid, geom, pbf, float(geom.area)))
    if not out:
        raise SourceError(f"OSM extract index {href!r} lists no region with a geometry and urls.pbf; expected "
                          f"Geofabrik's index-v1.json schema (not index-v1-nogeom.json)")
    return out


class OsmExtractIndexSource:
    """An index of OpenStreetMap extracts; answers searches for any collection name.

    Args:
        spec: The recipe's source (``type: osm_extract_index``): ``href`` is the index (path or URL); ``cache``,
            ``cache_dir``, ``retries``, ``backoff_s`` and ``timeout_s`` apply to the downloads.
    """

    reads_snapshots = False

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.policy = RetryPolicy.of(spec)
        self.regions = _regions(_read_index(spec.href, self.policy, spec.timeout_s), spec.href)
        self._tree = shapely.STRtree([r.geometry for r in self.regions])
        shapely.prepare([r.geometry for r in self.regions])
        folder = cache_dir(spec, CACHE_KIND)
        self.cache_dir = None if folder is None else Path(folder)
        self._by_id = {r.id: r for r in self.regions}

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> OsmExtractIndexSource:
        """See :class:`eo_dataset.sources.base.SourceType`."""
        return cls(spec)

    def extent(self, collection: str) -> tuple[float, float, float, float]:
        """The lon/lat box of every region (any collection name)."""
        w, s, e, n = shapely.total_bounds([r.geometry for r in self.regions])
        return (float(w), float(s), float(e), float(n))

    def covering(self, bbox: Sequence[float]) -> list[Region]:
        """The extracts a block with this lon/lat box reads: the smallest region that covers the whole box, unless
        smaller regions together cover it with less area (a block across a border reads both countries, not their
        continent); where nothing covers it all, the smallest regions that cover what they can. None when no region
        touches the box.
        """
        area = box(*bbox)
        hits = sorted((self.regions[i] for i in self._tree.query(area, predicate="intersects")),
                      key=lambda r: (r.area, r.id))
        single = next((r for r in hits if r.geometry.covers(area)), None)
        limit = single.area if single is not None else float("inf")
        chosen: list[Region] = []
        left = area
        for r in hits:  # greedy, smallest first: each region taken must cover something still uncovered
            if left.is_empty or r.area >= limit or sum(c.area for c in chosen) + r.area >= limit:
                break
            if not r.geometry.intersection(left).is_empty:
                chosen.append(r)
                left = left.difference(r.geometry)
        if single is not None and (not left.is_empty or not chosen):
            return [single]
        return chosen

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               query: dict[str, dict[str, Any]] | None = None, filter: dict[str, Any] | None = None
               ) -> list[pystac.Item]:
        """One item per extract :meth:`covering` the box (time, query and filter do not apply to a static map)."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        items = []
        for r in self.covering(bbox):
            local = self._local_path(r.pbf)
            when = (extract_timestamp(local) if local.is_file() else None) or now
            item = pystac.Item(r.id, mapping(r.geometry), list(r.geometry.bounds), when, {"osm:extract": r.id},
                               collection=collection)
            item.add_asset("data", pystac.Asset(r.pbf, media_type="application/vnd.openstreetmap.data+pbf",
                                                roles=["data"]))
            items.append(item)
        return items

    def osm_extract(self, item: pystac.Item, keys: tuple[str, ...]) -> Extract:
        """The features of the item's extract with any of the tag ``keys``, valid inside the region's polygon.

        Raises:
            SourceError: the extract cannot be fetched or read.
        """
        href = item.assets["data"].href
        path = self.fetch(href)
        extract = load_extract(str(path), keys)
        region = self._by_id.get(item.id)
        polygon = region.geometry if region is not None else shape(item.geometry)
        coverage = polygon.intersection(extract.coverage)
        return Extract(extract.path, extract.geometries, extract.tags, coverage, extract.tree)

    def _local_path(self, href: str) -> Path:
        if "://" not in href:
            return Path(href)
        if href.startswith("file://"):
            return Path(urlsplit(href).path)
        if self.cache_dir is None:
            folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"eo-dataset-{CACHE_KIND}"
        else:
            folder = self.cache_dir
        parts = urlsplit(href)
        digest = hashlib.sha256(href.encode()).hexdigest()[:12]  # one file per URL, readable name kept
        return folder / parts.hostname / f"{digest}-{Path(parts.path).name}"

    def fetch(self, href: str) -> Path:
        """The extract's PBF on disk: a local file as it is, a URL downloaded once into the cache folder.

        Raises:
            SourceError: the file is missing, or the download fails after the retries.
        """
        path = self._local_path(href)
        if "://" not in href or href.startswith("file://"):
            if not path.is_file():
                raise SourceError(f"OSM extract {href!r} (listed in {self.spec.href}) not found; expected an "
                                  ".osm.pbf file there")
            return path
        with _LOCK:
            if not path.is_file():
                self._download(href, path)
        return path

    def _download(self, href: str, path: Path) -> None:
        import requests

        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")

        def get() -> None:
            with requests.get(href, stream=True, timeout=self.spec.timeout_s) as response:
                response.raise_for_status()
                with open(part, "wb") as f:
                    for chunk in response.iter_content(1 << 20):
                        f.write(chunk)
            os.replace(part, path)  # atomic: a reader never sees half a file

        try:
            self.policy.call(get, what=f"OSM extract {href}",
                             retryable=lambda e: is_transient(e) or _retry_status(e))
        except Exception as exc:  # requests' errors, after the retries
            part.unlink(missing_ok=True)
            raise SourceError(f"OSM extract {href!r} cannot be downloaded ({type(exc).__name__}: {exc}) after "
                              f"{self.policy.attempts} attempt(s); check the index's urls.pbf or the network") from None


def _retry_status(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return response is not None and getattr(response, "status_code", None) in RETRY_STATUS
