"""The ``stac_api`` source: a STAC API (e.g. the Planetary Computer's) searched with pystac-client.

One search per block and modality: the block's lon/lat box, the rule's time window, the modality's ``query`` and
CQL2 ``filter``; pystac-client follows the ``next`` links (``page_size`` items a page). Transient HTTP failures
(429, 5xx, dropped connections) are retried by the one retry policy (:mod:`eo_dataset.sources.retry`) as urllib3's
``Retry``, the mechanism pystac-client exposes: each request is sent at most ``retries + 1`` times. Results are
checked again on the client (a server that ignores ``query`` cannot let a wrong item through) and cached on disk per
search (:func:`eo_dataset.sources.base.cache_dir`), so a resumed or repeated build does not search again.

Items are kept exactly as the API returns them: asset hrefs are signed later, right before reading
(:mod:`eo_dataset.sources.signing`), so neither the cache nor a snapshot nor the cube ever holds a token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import pystac

from eo_dataset.errors import SourceError
from eo_dataset.sources.base import CqlFilter, cache_dir, matches_query, query_to_cql2
from eo_dataset.sources.retry import RetryPolicy
from eo_dataset.spec.recipe import SourceSpec

log = logging.getLogger(__name__)

CACHE_KIND = "searches"  # the cache's sub-folder (eo_dataset.sources.base.cache_dir)
CACHE_VERSION = 1


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StacApiSource:
    """A STAC API, searched with pystac-client (retries, paging, a per-search disk cache).

    Args:
        spec: The recipe's source (``type: stac_api``): ``href`` is the API's landing page.

    Raises:
        SourceError: the API's landing page cannot be read (after the retries).
    """

    reads_snapshots = True

    def __init__(self, spec: SourceSpec) -> None:
        from pystac_client import Client
        from pystac_client.stac_api_io import StacApiIO

        self.spec = spec
        self.href = spec.href
        self.retry = RetryPolicy.of(spec)
        self._io = StacApiIO(timeout=spec.timeout_s, max_retries=self.retry.urllib3())
        try:
            self._client = Client.open(spec.href, stac_io=self._io)
        except Exception as exc:  # requests, pystac-client and pystac raise many types
            raise SourceError(f"cannot open the STAC API at {spec.href!r}: {exc}; check the URL (the API's "
                              "landing page) and that it is reachable") from exc
        self.cache_dir = cache_dir(spec, CACHE_KIND)
        self.searches = 0  # searches sent to the API (not answered from the cache), for tests and logs

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> StacApiSource:
        """See :class:`eo_dataset.sources.base.SourceType`."""
        return cls(spec)

    def _key(self, params: dict[str, Any]) -> str:
        text = json.dumps({"v": CACHE_VERSION, "api": self.href.rstrip("/"), **params}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _cached(self, key: str) -> list[pystac.Item] | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        except Exception as exc:  # a damaged cache file is searched again, not trusted
            log.warning("ignoring unreadable search cache %s: %s", path, exc)
            return None

    def _store(self, key: str, params: dict[str, Any], items: list[pystac.Item]) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        data = {"type": "FeatureCollection", "search": params,
                "features": [i.to_dict(include_self_link=False, transform_hrefs=False) for i in items]}
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.cache_dir / f"{key}.json")  # atomic: parallel workers never see half a file

    def extent(self, collection: str) -> tuple[float, float, float, float] | None:
        """The collection's spatial extent as the API declares it (None if it cannot be read).

        Raises:
            SourceError: the API does not have that collection.
        """
        try:
            found = self._client.get_collection(collection)
        except Exception as exc:  # pystac-client raises APIError (or others) for a missing collection
            if "404" in str(exc) or "not found" in str(exc).lower():
                raise SourceError(f"the STAC API at {self.href} has no collection {collection!r}") from None
            log.info("cannot read the extent of %s at %s: %s", collection, self.href, exc)
            return None
        bboxes = found.extent.spatial.bboxes if found is not None else None
        if not bboxes or len(bboxes[0]) < 4:
            return None
        b = bboxes[0]
        return (float(b[0]), float(b[1]), float(b[-3]), float(b[-2])) if len(b) == 6 else tuple(map(float, b))

    def search(self, collection: str, bbox: Sequence[float], start: dt.datetime | None,
               end: dt.datetime | None, query: dict[str, dict[str, Any]] | None = None,
               filter: dict[str, Any] | None = None) -> list[pystac.Item]:
        """See :meth:`eo_dataset.sources.ItemSource.search`.

        Raises:
            SourceError: the search failed after the retries (the message says why).
        """
        params: dict[str, Any] = {"collections": [collection], "bbox": [round(float(v), 9) for v in bbox]}
        if start is not None or end is not None:
            params["datetime"] = f"{_iso(start) or '..'}/{_iso(end) or '..'}"
        if query and filter:  # pgstac refuses both at once ("db error"): send the query as CQL2 too
            params["filter"] = {"op": "and", "args": [filter, query_to_cql2(query)]}
            params["filter_lang"] = "cql2-json"
        elif query:
            params["query"] = query
        elif filter:
            params["filter"] = filter
            params["filter_lang"] = "cql2-json"
        key = self._key(params)
        cached = self._cached(key)
        if cached is not None:
            return cached
        cql = CqlFilter(filter) if filter else None
        try:
            with warnings.catch_warnings():
                # APIs such as pgstac evaluate `query` without declaring it; it is checked again below anyway
                warnings.filterwarnings("ignore", message=".*does not conform to.*")
                warnings.filterwarnings("ignore", message="numberMatched or context.matched not in response")
                search = self._client.search(**params, limit=self.spec.page_size)
                found = list(search.items())
        except Exception as exc:  # APIError, requests errors after the retries, bad JSON
            raise SourceError(f"STAC API search at {self.href} failed for collection {collection!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
        self.searches += 1
        items = [i for i in found if _keep(i, query, cql)]
        if len(items) < len(found):
            log.info("%s: the API returned %d items that fail the query/filter; dropped", collection,
                     len(found) - len(items))
        self._store(key, params, items)
        return items


def _keep(item: pystac.Item, query: dict[str, dict[str, Any]] | None, cql: CqlFilter | None) -> bool:
    """The client-side check of an API result; what the local CQL2 evaluator cannot decide, the server did."""
    if not matches_query(item.properties, query):
        return False
    try:
        return cql is None or cql.matches(item)
    except SourceError:
        return True
