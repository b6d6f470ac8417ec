"""The ``overpass`` source: OpenStreetMap features of small regions, asked of an Overpass API through osmnx.

A search returns one item per build block: the block's lon/lat box (at most ``max_area_km2``, else the search
fails with the reason), with the query settings in its properties. Reading it asks the API once per block and key
set, through osmnx's own client (``osmnx.features_from_bbox`` with ``settings.overpass_url`` set to the source's
``href``), and turns the answer into the :class:`~eo_dataset.sources.osm.Extract` an ``.osm`` file gives, so
rasterisation is shared. The extract's coverage is the box asked for: Overpass holds the whole planet, so inside it
a ``0`` means "nothing mapped here".

Etiquette: queries are sent one at a time per process; with ``rate_limit`` osmnx waits for a free slot on the
server's ``/status`` first; answers are kept per process (the block's other samples do not ask again) and, with
``cache``, in osmnx's response cache on disk (a rerun does not ask again either). Network failures, timeouts and
429/5xx answers are retried by the one retry policy (:mod:`eo_dataset.sources.retry`): a query is sent at most
``retries + 1`` times; what still fails is a :class:`SourceError` naming the endpoint, which makes that block's
samples unavailable for the modality, not the build. The engine reaches all this through
:meth:`OverpassSource.osm_extract`, as it reaches an extract file through the ``osm_file`` source.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pystac
from shapely.geometry import box, mapping

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import cache_dir
from eo_dataset.sources.osm import Extract, features_of
from eo_dataset.sources.retry import RETRY_STATUS, RetryPolicy, is_transient
from eo_dataset.spec.recipe import OVERPASS_ENDPOINT, SourceSpec

__all__ = ["OVERPASS_ENDPOINT", "OverpassQuery", "OverpassSource", "bbox_area_km2", "clear_cache", "load_overpass"]

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
CACHE_KIND = "overpass"  # the cache's sub-folder (eo_dataset.sources.base.cache_dir)
MEMO_SIZE = 8  # answers kept per process (one block's, a few blocks back)
_PREFIX = "overpass:"
_LOCK = threading.Lock()  # one query at a time per process; osmnx's settings are process-wide
_MEMO: OrderedDict[tuple[OverpassQuery, tuple[str, ...]], Extract | SourceError] = OrderedDict()


def bbox_area_km2(bbox: Sequence[float]) -> float:
    """Area of a lon/lat box on the sphere (km2)."""
    w, s, e, n = bbox
    return EARTH_RADIUS_KM**2 * math.radians(e - w) * (math.sin(math.radians(n)) - math.sin(math.radians(s)))


@dataclass(frozen=True)
class OverpassQuery:
    """Everything one Overpass request needs; written into the item's properties, so the item alone says it."""

    endpoint: str
    bbox: tuple[float, float, float, float]
    timeout_s: float
    retries: int
    backoff_s: float
    rate_limit: bool
    cache_dir: str | None

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of the query (its source's ``retries`` and ``backoff_s``)."""
        return RetryPolicy(attempts=self.retries + 1, backoff_s=self.backoff_s)

    def properties(self) -> dict[str, Any]:
        """As item properties (``overpass:endpoint``, ...)."""
        return {_PREFIX + k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def of_item(cls, item: pystac.Item) -> OverpassQuery:
        """The query an item of this source describes."""
        props = {k[len(_PREFIX):]: v for k, v in item.properties.items() if k.startswith(_PREFIX)}
        try:
            props["bbox"] = tuple(float(v) for v in props["bbox"])
            return cls(**props)
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"item {item.id} does not describe an Overpass query ({exc}); expected the "
                              f"{_PREFIX}* properties an overpass source writes") from None


class OverpassSource:
    """An Overpass API; answers searches for any collection name with one item per searched box.

    Opening it sends nothing: an unreachable server costs the samples that need it, not the build.

    Args:
        spec: The recipe's source (``type: overpass``): ``href`` is the API's base URL.
    """

    reads_snapshots = False

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.endpoint = spec.href.rstrip("/")
        folder = cache_dir(spec, CACHE_KIND)
        self.cache_dir = None if folder is None else str(folder)

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> OverpassSource:
        """See :class:`eo_dataset.sources.base.SourceType`."""
        return cls(spec)

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None, end: dt.datetime | None,
               query: dict[str, dict[str, Any]] | None = None, filter: dict[str, Any] | None = None
               ) -> list[pystac.Item]:
        """One item covering ``bbox`` (time, query and filter do not apply: Overpass answers with today's map).

        Raises:
            SourceError: the box is larger than the source's ``max_area_km2``.
        """
        w, s, e, n = (math.floor(bbox[0] * 1e6) / 1e6, math.floor(bbox[1] * 1e6) / 1e6,
                      math.ceil(bbox[2] * 1e6) / 1e6, math.ceil(bbox[3] * 1e6) / 1e6)
        area = bbox_area_km2((w, s, e, n))
        if area > self.spec.max_area_km2:
            raise SourceError(
                f"the block's box {w:g},{s:g},{e:g},{n:g} spans {area:,.0f} km2, more than the overpass source's "
                f"max_area_km2 ({self.spec.max_area_km2:g}); Overpass is for small regions: use an osm_file "
                "extract (.osm.pbf) for large ones, keep each block compact (samples in grid order, fewer "
                "build.shard_samples), or raise max_area_km2")
        q = OverpassQuery(self.endpoint, (w, s, e, n), self.spec.timeout_s, self.spec.retries, self.spec.backoff_s,
                          self.spec.rate_limit, self.cache_dir)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        item = pystac.Item(f"overpass-{w:.6f}_{s:.6f}_{e:.6f}_{n:.6f}", mapping(box(w, s, e, n)), [w, s, e, n],
                           now, q.properties(), collection=collection)
        item.add_asset("data", pystac.Asset(f"{self.endpoint}/interpreter", media_type="application/json",
                                            roles=["data"]))
        return [item]

    def osm_extract(self, item: pystac.Item, keys: tuple[str, ...]) -> Extract:
        """The features with any of the tag ``keys`` in the item's box (:func:`load_overpass`).

        Raises:
            SourceError: the API is unreachable, times out, refuses or stops the query (after the retries).
        """
        return load_overpass(item, keys)


def clear_cache() -> None:
    """Forget the answers kept in this process (not osmnx's disk cache)."""
    with _LOCK:
        _MEMO.clear()


def load_overpass(item: pystac.Item, keys: tuple[str, ...]) -> Extract:
    """The features with any of ``keys`` in the item's box, asked once per process (a failure too).

    Raises:
        SourceError: the API is unreachable, times out, refuses or stops the query (after the retries).
    """
    q = OverpassQuery.of_item(item)
    with _LOCK:
        hit = _MEMO.get((q, keys))
        if hit is None:
            try:
                hit = _fetch(q, keys)
            except SourceError as exc:  # kept: the block's other samples fail at once with the same reason
                hit = exc
            _MEMO[(q, keys)] = hit
            while len(_MEMO) > MEMO_SIZE:
                _MEMO.popitem(last=False)
        _MEMO.move_to_end((q, keys))
    if isinstance(hit, SourceError):
        raise SourceError(str(hit))
    return hit


class _Answer(Exception):
    """A bad answer seen in the response hook, before osmnx (which would wait 55 s and retry 429/504 forever)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _check_answer(response: Any, *args: Any, **kwargs: Any) -> None:
    """requests' response hook: refuse HTTP errors, and answers whose ``remark`` reports a runtime error."""
    if not response.url.split("?", 1)[0].endswith("/interpreter"):
        return
    if not response.ok:
        text = " ".join(re.sub(r"<[^>]*>", " ", response.text).split())[:300]  # Overpass explains in HTML
        raise _Answer(f"answered HTTP {response.status_code} {response.reason}: {text}",
                      response.status_code in RETRY_STATUS)
    try:
        remark = response.json().get("remark", "")
    except (ValueError, AttributeError):  # not a JSON object: osmnx reports it
        return
    if "error" in str(remark).lower():  # e.g. "runtime error: Query timed out": the elements are incomplete
        raise _Answer(f"stopped the query: {remark!r}; raise the source's timeout_s or make the blocks smaller "
                      "(build.shard_samples)", False)


@contextmanager
def _osmnx_settings(q: OverpassQuery) -> Iterator[Any]:
    """osmnx's settings for one query, restored afterwards (also the DNS pin osmnx puts on the process)."""
    import osmnx

    new = {"overpass_url": q.endpoint, "requests_timeout": math.ceil(q.timeout_s),
           "overpass_rate_limit": q.rate_limit, "use_cache": q.cache_dir is not None,
           "cache_folder": q.cache_dir or osmnx.settings.cache_folder, "cache_only_mode": False,
           "doh_url_template": None,  # never ask a third party (Google's DNS-over-HTTPS) for the host
           "requests_kwargs": {"hooks": {"response": [_check_answer]}}}
    old = {k: getattr(osmnx.settings, k) for k in new}
    getaddrinfo = socket.getaddrinfo
    try:
        for k, v in new.items():
            setattr(osmnx.settings, k, v)
        yield osmnx
    finally:
        for k, v in old.items():
            setattr(osmnx.settings, k, v)
        socket.getaddrinfo = getaddrinfo  # osmnx replaces it to pin the endpoint's address, process-wide


def _status(q: OverpassQuery) -> None:
    """Ask ``/status`` first: osmnx would wait 60 s on an unreachable or unparsable one before querying."""
    import osmnx
    import requests

    url = f"{q.endpoint}/status"
    response = requests.get(url, timeout=min(q.timeout_s, 20), headers={"User-Agent": osmnx.settings.http_user_agent})
    lines = response.text.splitlines()
    if response.status_code in RETRY_STATUS:
        raise _Answer(f"answered HTTP {response.status_code} {response.reason} on {url}", True)
    if not response.ok or len(lines) < 5:
        raise _Answer(f"has no usable {url} (HTTP {response.status_code}, {len(lines)} line(s); osmnx reads the "
                      "free slots from its 5th line); set rate_limit: false for a server without /status", False)


def _fetch(q: OverpassQuery, keys: tuple[str, ...]) -> Extract:
    import osmnx
    import requests

    where = f"Overpass API at {q.endpoint}"

    def ask() -> Any:
        with _osmnx_settings(q):
            if q.rate_limit:
                _status(q)
            try:
                return osmnx.features_from_bbox(q.bbox, dict.fromkeys(keys, True))
            except osmnx._errors.InsufficientResponseError as exc:
                if str(exc).startswith("No matching features"):  # a real answer: nothing with these keys here
                    return None
                raise

    policy = q.retry
    try:
        gdf = policy.call(ask, what=where)
    except Exception as exc:  # mapped to a SourceError saying what went wrong, and how often it was tried
        after = f" (after {policy.attempts} attempt(s))" if is_transient(exc) else ""
        if isinstance(exc, _Answer):
            raise SourceError(f"{where} {exc}{after}") from None
        if isinstance(exc, osmnx._errors.InsufficientResponseError):
            raise SourceError(f"{where} gave an unusable answer: {exc}") from None
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
            raise SourceError(_unreachable(q, exc) + after) from None
        if isinstance(exc, (requests.RequestException, osmnx._errors.ResponseStatusCodeError)):
            raise SourceError(f"{where} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(exc, OSError):  # e.g. the host name does not resolve
            raise SourceError(_unreachable(q, exc) + after) from None
        raise
    geoms, tags = features_of(gdf) if gdf is not None else ([], [])
    w, s, e, n = q.bbox
    return Extract.of(f"{q.endpoint} bbox={w},{s},{e},{n}", geoms, tags, box(*q.bbox))


def _unreachable(q: OverpassQuery, exc: BaseException) -> str:
    return (f"Overpass API at {q.endpoint} is unreachable or did not answer within {q.timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); check the endpoint (the API's base URL, e.g. {OVERPASS_ENDPOINT}) and "
            "that the server is up, or read an osm_file extract instead")
