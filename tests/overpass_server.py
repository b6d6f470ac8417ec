"""A local Overpass API on 127.0.0.1 that answers osmnx's real requests from a real OSM file.

It speaks the part of the protocol osmnx uses: ``GET {endpoint}/status`` (the slot report osmnx reads before a
query) and ``GET``/``POST {endpoint}/interpreter`` with ``data=`` Overpass QL, answered with Overpass JSON
(``{"version": 0.6, "elements": [...]}``: nodes with lat/lon, ways with node refs, relations with members). The QL
is what osmnx writes: a union of ``(node|way|relation [key] or [key=value] (poly:'lat lon ...') or (s,w,n,e);
(._;>;);)`` statements and ``out;``. Selection follows Overpass: a node inside the area, a way whose line
intersects it, a relation with a member that does; ``>`` adds the ways' nodes and the relations' members (and
their nodes). The file (``.osm``, ``.osm.bz2`` or ``.osm.pbf``) is read once with pyosmium.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import osmium
import shapely
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

_STATEMENT = re.compile(
    r"\((node|way|relation)\[(?P<key>'[^']*'|\"[^\"]*\")(?:=(?P<value>'[^']*'|\"[^\"]*\"))?\]"
    r"\((?:poly:(?P<poly>'[^']*'|\"[^\"]*\")|(?P<bbox>[-\d.]+,[-\d.]+,[-\d.]+,[-\d.]+))\);(?P<down>\(\._;>;\);)?\)")
STATUS = ("Connected as: 2130706433\nCurrent time: {now}\nAnnounced endpoint: none\nRate limit: 2\n"
          "2 slots available now.\nCurrently running queries (pid, space limit, time limit, start time):\n")


@dataclass
class OsmData:
    """Every node, way and relation of a file, indexed by tag key and by place."""

    node_ids: np.ndarray  # sorted
    lon: np.ndarray
    lat: np.ndarray
    node_tags: dict[int, dict[str, str]]
    ways: dict[int, tuple[list[int], dict[str, str]]]
    relations: dict[int, tuple[list[tuple[str, int, str]], dict[str, str]]]
    way_ids: np.ndarray = field(init=False)
    way_tree: shapely.STRtree = field(init=False)
    by_key: dict[str, dict[str, list[int]]] = field(init=False)

    def __post_init__(self) -> None:
        self.way_ids = np.array(sorted(self.ways), dtype=np.int64)
        self.way_tree = shapely.STRtree(self._lines())
        self.by_key = {"node": defaultdict(list), "way": defaultdict(list), "relation": defaultdict(list)}
        for kind, tagged in (("node", self.node_tags.items()), ("way", ((i, t) for i, (_, t) in self.ways.items())),
                             ("relation", ((i, t) for i, (_, t) in self.relations.items()))):
            for i, tags in tagged:
                for k in tags:
                    self.by_key[kind][k].append(i)

    def located(self, refs: list[int]) -> np.ndarray:
        """Indices into the node arrays of those of ``refs`` the file holds."""
        pos = np.searchsorted(self.node_ids, refs)
        pos = np.minimum(pos, len(self.node_ids) - 1)
        return pos[self.node_ids[pos] == np.asarray(refs, dtype=np.int64)]

    def _lines(self) -> np.ndarray:
        """Each way's line (lon/lat) through the nodes the file holds, in ``way_ids`` order, all at once."""
        refs = [self.ways[int(w)][0] for w in self.way_ids]
        flat = np.fromiter((r for rs in refs for r in rs), np.int64)
        which = np.repeat(np.arange(len(refs)), [len(rs) for rs in refs])
        pos = np.minimum(np.searchsorted(self.node_ids, flat), len(self.node_ids) - 1)
        ok = self.node_ids[pos] == flat
        pos, which = pos[ok], which[ok]
        count = np.bincount(which, minlength=len(refs))
        lines = np.full(len(refs), shapely.Point(), dtype=object)
        long = count[which] >= 2
        if long.any():
            ways, dense = np.unique(which[long], return_inverse=True)  # shapely wants indices 0..n-1
            lines[ways] = shapely.linestrings(self.lon[pos[long]], self.lat[pos[long]], indices=dense)
        single = count[which] == 1
        lines[which[single]] = shapely.points(self.lon[pos[single]], self.lat[pos[single]])
        return lines

    def way_geometry(self, way_id: int) -> BaseGeometry:
        return self.way_tree.geometries[int(np.searchsorted(self.way_ids, way_id))]


def load(path: str | Path) -> OsmData:
    """Read an OSM file with pyosmium (all elements, all tags)."""
    ids: list[int] = []
    lon: list[float] = []
    lat: list[float] = []
    node_tags: dict[int, dict[str, str]] = {}
    ways: dict[int, tuple[list[int], dict[str, str]]] = {}
    relations: dict[int, tuple[list[tuple[str, int, str]], dict[str, str]]] = {}
    kinds = {"n": "node", "w": "way", "r": "relation"}
    for obj in osmium.FileProcessor(str(path)):
        tags = {t.k: t.v for t in obj.tags} if len(obj.tags) else {}
        if obj.is_node():
            if not obj.location.valid():
                continue
            ids.append(obj.id)
            lon.append(obj.location.lon)
            lat.append(obj.location.lat)
            if tags:
                node_tags[obj.id] = tags
        elif obj.is_way():
            ways[obj.id] = ([n.ref for n in obj.nodes], tags)
        elif obj.is_relation():
            relations[obj.id] = ([(kinds[m.type], m.ref, m.role) for m in obj.members], tags)
    order = np.argsort(ids)
    return OsmData(np.asarray(ids, np.int64)[order], np.asarray(lon)[order], np.asarray(lat)[order], node_tags, ways,
                   relations)


def _unquote(text: str | None) -> str | None:
    return None if text is None else text[1:-1]


def _area(match: re.Match[str]) -> BaseGeometry:
    if match["poly"]:
        numbers = [float(v) for v in _unquote(match["poly"]).split()]
        return Polygon(list(zip(numbers[1::2], numbers[0::2], strict=True)))  # "lat lon lat lon ..."
    s, w, n, e = (float(v) for v in match["bbox"].split(","))
    return box(w, s, e, n)


def evaluate(data: OsmData, ql: str) -> dict[str, Any]:
    """The Overpass JSON answer to osmnx's QL.

    Raises:
        ValueError: the QL is not what osmnx sends (no ``[out:json]`` or no statement understood).
    """
    if "[out:json]" not in ql:
        raise ValueError("this test server answers only [out:json] queries")
    statements = list(_STATEMENT.finditer(ql))
    if not statements:
        raise ValueError(f"no statement understood in {ql[:200]!r}")
    nodes: set[int] = set()
    ways: set[int] = set()
    relations: set[int] = set()
    for m in statements:
        kind, key, value, area = m.group(1), _unquote(m["key"]), _unquote(m["value"]), _area(m)
        shapely.prepare(area)
        candidates = data.by_key[kind].get(key, [])
        if kind == "node":
            tags = data.node_tags
            pos = data.located(candidates)
            inside = shapely.intersects_xy(area, data.lon[pos], data.lat[pos])
            found = {int(i) for i in data.node_ids[pos][inside] if value is None or tags[int(i)][key] == value}
            nodes |= found
        elif kind == "way":
            near = {int(data.way_ids[i]) for i in data.way_tree.query(area, predicate="intersects")}
            found = {i for i in candidates if i in near and (value is None or data.ways[i][1][key] == value)}
            ways |= found
            if m["down"]:
                for i in found:
                    nodes |= set(data.ways[i][0])
        else:
            found = {i for i in candidates if (value is None or data.relations[i][1][key] == value)
                     and _relation_touches(data, i, area)}
            relations |= found
            if m["down"]:
                for i in found:
                    for mtype, ref, _ in data.relations[i][0]:
                        if mtype == "node":
                            nodes.add(ref)
                        elif mtype == "way" and ref in data.ways:
                            ways.add(ref)
                            nodes |= set(data.ways[ref][0])
    return {"version": 0.6, "generator": "eo-dataset test Overpass (tests/overpass_server.py)",
            "osm3s": {"timestamp_osm_base": "2022-07-01T00:00:00Z",
                      "copyright": "The data included in this document is from www.openstreetmap.org. The data is "
                                   "made available under ODbL."},
            "elements": _elements(data, nodes, ways, relations)}


def _relation_touches(data: OsmData, rel: int, area: BaseGeometry) -> bool:
    for mtype, ref, _ in data.relations[rel][0]:
        if mtype == "way" and ref in data.ways and data.way_geometry(ref).intersects(area):
            return True
        if mtype == "node":
            pos = data.located([ref])
            if len(pos) and shapely.intersects_xy(area, data.lon[pos[0]], data.lat[pos[0]]):
                return True
    return False


def _elements(data: OsmData, nodes: set[int], ways: set[int], relations: set[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    refs = sorted(nodes)
    for p in data.located(refs):
        i = int(data.node_ids[p])
        e: dict[str, Any] = {"type": "node", "id": i, "lat": float(data.lat[p]), "lon": float(data.lon[p])}
        if i in data.node_tags:
            e["tags"] = data.node_tags[i]
        out.append(e)
    for i in sorted(ways):
        w_refs, tags = data.ways[i]
        out.append({"type": "way", "id": i, "nodes": w_refs, **({"tags": tags} if tags else {})})
    for i in sorted(relations):
        members, tags = data.relations[i]
        out.append({"type": "relation", "id": i, "members": [{"type": t, "ref": r, "role": role}
                                                             for t, r, role in members],
                    **({"tags": tags} if tags else {})})
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        srv = self.server
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode()) if length else parse_qs(parts.query)
        srv.requests.append((self.command, parts.path))
        if parts.path == f"{srv.prefix}/status":
            import datetime as dt

            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return self._send(200, STATUS.format(now=now).encode(), "text/plain")
        if parts.path != f"{srv.prefix}/interpreter":
            return self._send(404, b"not found", "text/plain")
        srv.queries.append(form.get("data", [""])[0])
        if srv.fail_status:
            return self._send(srv.fail_status, b"<html><body>injected failure</body></html>", "text/html")
        if srv.remark:
            body = {"version": 0.6, "generator": "test", "elements": [], "remark": srv.remark}
            return self._send(200, json.dumps(body).encode(), "application/json")
        try:
            answer = evaluate(srv.data, form.get("data", [""])[0])
        except ValueError as exc:  # Overpass answers a bad query with 400 and an HTML page
            return self._send(400, f"<html><body><p>Error: {exc}</p></body></html>".encode(), "text/html")
        return self._send(200, json.dumps(answer).encode(), "application/json")

    do_GET = do_POST = _answer  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    data: OsmData
    prefix: str
    requests: list[tuple[str, str]]
    queries: list[str]
    fail_status: int
    remark: str


class OverpassServer:
    """An Overpass API on 127.0.0.1 serving one OSM file; ``endpoint`` is its base URL (``.../api``).

    ``requests`` logs (method, path) of every request, ``queries`` the QL of every interpreter request. Set
    ``fail_status`` to answer queries with that HTTP status, ``remark`` to answer with no elements and that remark
    (as Overpass does when a query runs out of time or memory).
    """

    def __init__(self, path: str | Path) -> None:
        self.data = load(path)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.data, self._server.prefix = self.data, "/api"
        self._server.requests, self._server.queries = [], []
        self._server.fail_status, self._server.remark = 0, ""
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/api"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._server.requests

    @property
    def queries(self) -> list[str]:
        return self._server.queries

    def set_failure(self, status: int = 0, remark: str = "") -> None:
        """Answer queries with HTTP ``status`` or with ``remark`` (both empty: answer normally)."""
        self._server.fail_status, self._server.remark = status, remark

    def reset(self) -> None:
        """Clear the logs and any failure."""
        self._server.requests.clear()
        self._server.queries.clear()
        self.set_failure()

    def __enter__(self) -> OverpassServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
