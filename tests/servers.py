"""Local stand-ins for the remote services, all on 127.0.0.1 (tests never reach further).

- :class:`FileServer`: static files over HTTP with byte ranges (``RangeHTTPServer``'s handler), which GDAL's
  ``/vsicurl/`` reads by window. It also answers as an HTTP proxy (``GDAL_HTTP_PROXY``) for
  ``http://<account>.blob.core.windows.net/<container>/<path>`` URLs, serving ``<root>/<account>/<container>/<path>``
  and checking their SAS signature, and serves a Planetary Computer SAS-token endpoint
  (``/api/sas/v1/token/<account>/<container>``, the SDK's ``PC_SDK_SAS_URL``).
- :class:`ForwardingProxy`: forwards to a STAC API, counts requests and can fail the next N with a 503.
- :func:`serve_folder`: a folder over HTTP with byte ranges the way object stores answer (aiohttp's static files), in
  its own process so that loaders under test do not share a GIL with it.
- :func:`start_pgstac_api`: PostgreSQL + PostGIS + pgstac + ``rustac serve --pgstac`` in a throwaway folder.
- :func:`start_azurite`: Azurite, the Azure Storage emulator (Blob service), for cubes at ``az://`` URLs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from RangeHTTPServer import RangeRequestHandler

BLOB = ".blob.core.windows.net"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AIOHTTP_FOLDER = """
import asyncio, sys
from aiohttp import web

async def main():
    app = web.Application()
    app.router.add_static("/", sys.argv[1])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """``http://127.0.0.1:<port>``, serving ``root``'s files with byte ranges until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", AIOHTTP_FOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Tokens:
    """SAS tokens issued by the local token endpoint: signature -> expiry; revoked ones are refused."""

    ttl_s: float = 3600.0
    issued: dict[str, dt.datetime] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    requests: int = 0
    fail: int = 0  # answer token requests with this HTTP status (0: issue tokens)

    def issue(self) -> dict[str, str]:
        now = dt.datetime.now(dt.UTC)
        expiry = now + dt.timedelta(seconds=self.ttl_s)
        sig = uuid.uuid4().hex
        self.issued[sig] = expiry
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        token = (f"st={now.strftime(fmt)}&se={expiry.strftime(fmt)}&sp=rl&sv=2024-05-04&sr=c"
                 f"&skoid={uuid.uuid4()}&sig={sig}")
        return {"msft:expiry": expiry.strftime(fmt), "token": token}

    def valid(self, query: str) -> bool:
        sig = parse_qs(query).get("sig", [""])[0]
        expiry = self.issued.get(sig)
        return expiry is not None and sig not in self.revoked and expiry > dt.datetime.now(dt.UTC)

    def revoke_all(self) -> None:
        self.revoked |= set(self.issued)


class _Handler(RangeRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _split(self) -> tuple[str, str, str]:
        """(host, path, query) of the request, whether it came as a proxy request (absolute URL) or not."""
        parts = urlsplit(self.path)
        host = parts.netloc if parts.scheme else ""
        return host, parts.path, parts.query

    def translate_path(self, path: str) -> str:
        host, p, _ = self._split()
        if host.endswith(BLOB):
            return str(self.server.root / host[: -len(BLOB)] / p.lstrip("/"))
        return super().translate_path(p)

    def send_head(self):  # noqa: ANN201 - http.server's signature
        host, path, query = self._split()
        rng = self.headers.get("Range", "")
        self.server.log.append((self.command, f"{host}{path}", rng, bool(query)))
        if path.startswith("/api/sas/v1/token/"):
            return self._token()
        if host and not host.endswith(BLOB) and not host.startswith("127.0.0.1"):
            self.send_error(502, "this test proxy serves only *.blob.core.windows.net and 127.0.0.1")
            return None
        if host.endswith(BLOB) and not self.server.tokens.valid(query):
            self.send_response(403, "Server failed to authenticate the request")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.server.refused += 1
            return None
        return super().send_head()

    def _token(self) -> None:
        self.server.tokens.requests += 1
        if self.server.tokens.fail:
            self.send_error(self.server.tokens.fail, "no token for you")
            return None
        body = json.dumps(self.server.tokens.issue()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
        return None

    def copyfile(self, source: Any, outputfile: Any) -> None:
        counted = _Counting(outputfile, self.server)
        super().copyfile(source, counted)


class _Counting:
    def __init__(self, out: Any, server: _Server) -> None:
        self.out, self.server = out, server

    def write(self, data: bytes) -> int:
        self.server.bytes_sent += len(data)
        return self.out.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    tokens: Tokens
    log: list[tuple[str, str, str, bool]]
    bytes_sent: int
    refused: int


class FileServer:
    """Serves ``root`` on 127.0.0.1 with HTTP range requests (and the blob proxy and token endpoint)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tokens = Tokens()
        handler = lambda *a, **k: _Handler(*a, directory=str(self.root), **k)  # noqa: E731
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.root, self._server.tokens = self.root, self.tokens
        self._server.log, self._server.bytes_sent, self._server.refused = [], 0, 0
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.sas_url = f"{self.url}/api/sas/v1/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def log(self) -> list[tuple[str, str, str, bool]]:
        """(method, host+path, Range header, had a query string) of every request."""
        return self._server.log

    @property
    def bytes_sent(self) -> int:
        return self._server.bytes_sent

    @property
    def refused(self) -> int:
        """Requests refused with 403 (bad or expired signature)."""
        return self._server.refused

    def reset_counters(self) -> None:
        self._server.log.clear()
        self._server.bytes_sent = 0
        self._server.refused = 0

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        srv = self.server
        srv.requests.append((self.command, self.path))
        if srv.fail_next > 0:
            srv.fail_next -= 1
            srv.failed += 1
            self.send_error(503, "injected transient failure")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        req = urllib.request.Request(srv.upstream + self.path, data=body, method=self.command,
                                     headers={k: v for k, v in self.headers.items()
                                              if k.lower() in ("content-type", "accept")})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, headers, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            status, headers, data = err.code, err.headers, err.read()
        self.send_response(status)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _forward  # noqa: N815


class ForwardingProxy:
    """An HTTP proxy in front of a STAC API on 127.0.0.1: counts requests, can fail the next N with 503."""

    def __init__(self, upstream: str, port: int | None = None) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port or 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.upstream = upstream.rstrip("/")
        self._server.requests, self._server.fail_next, self._server.failed = [], 0, 0
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._server.requests

    @property
    def failed(self) -> int:
        return self._server.failed

    def fail(self, n: int) -> None:
        """Answer the next ``n`` requests with 503."""
        self._server.fail_next = n

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- object-storage emulators: Azurite (Azure Blob Storage) -------------------------------------------------------
AZURITE_HELP = "npm install -g azurite (or npm install --prefix .azurite azurite); .ci/emulators.sh does it"


def azurite_blob() -> str | None:
    """The ``azurite-blob`` command: on PATH, or in ``.azurite/`` at the repository root (``npm install --prefix
    .azurite azurite``)."""
    local = Path(__file__).resolve().parent.parent / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
    return shutil.which("azurite-blob") or (str(local) if local.exists() else None)


def require_emulator(name: str, why: str | None) -> None:
    """Skip the calling test when an emulator cannot start here (``why``), with the reason; under CI (``CI=true``,
    where ``.ci/emulators.sh`` installs them) fail instead."""
    import pytest

    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {name} cannot start: {why}")
        pytest.skip(f"no {name} here: {why}")


def wait_port(port: int, proc: subprocess.Popen, seconds: float, log: Path) -> None:
    """Wait until ``proc`` listens on 127.0.0.1:``port``.

    Raises:
        RuntimeError: it exited, or did not listen within ``seconds`` (with the end of its ``log``).
    """
    end = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > end:
                tail = log.read_text()[-500:]
                raise RuntimeError(f"{proc.args[0]} did not start on 127.0.0.1:{port}: {tail}") from None
            time.sleep(0.1)


@contextmanager
def start_azurite(account: str, key: str) -> Iterator[str]:
    """Azurite's Blob service on 127.0.0.1 (in memory, telemetry off) with one storage ``account`` and its ``key``
    (base64); yields its endpoint ``http://127.0.0.1:<port>`` (blobs at ``<endpoint>/<account>/<container>/...``)
    and stops it when the block ends.

    Raises:
        RuntimeError: Azurite is not installed or did not start.
    """
    exe = azurite_blob()
    if not exe:
        raise RuntimeError(f"azurite-blob not found: {AZURITE_HELP}")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="eo-azurite-"))
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"}
    with open(folder / "azurite.log", "w") as log:
        proc = subprocess.Popen([exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                                 "--extentMemoryLimit", "256", "--disableTelemetry", "--silent",
                                 "--skipApiVersionCheck", "--loose"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=folder)
    try:
        wait_port(port, proc, 60, folder / "azurite.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


def create_azure_container(endpoint: str, account: str, key: str, container: str) -> None:
    """Create a blob container on an emulator at ``endpoint`` (path-style URLs), signed with the account's shared
    key (the one request the object stores' clients do not make)."""
    import base64
    import email.utils
    import hashlib
    import hmac

    headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06",
               "Content-Type": "application/octet-stream", "Content-Length": "0"}
    # SharedKey: VERB, 4 empty headers, Content-Type, 6 empty headers, the x-ms-* headers, the resource
    signed = "\n".join(["PUT", "", "", "", "", headers["Content-Type"], "", "", "", "", "", "",
                        *(f"{k}:{v}" for k, v in sorted(headers.items()) if k.startswith("x-ms-")),
                        f"/{account}/{account}/{container}\nrestype:container"])
    sig = base64.b64encode(hmac.new(base64.b64decode(key), signed.encode(), hashlib.sha256).digest()).decode()
    req = urllib.request.Request(f"{endpoint}/{account}/{container}?restype=container", data=b"", method="PUT",
                                 headers={**headers, "Authorization": f"SharedKey {account}:{sig}"})
    with urllib.request.urlopen(req, timeout=30):
        pass


# -- a real STAC API: PostgreSQL + pgstac + rustac ------------------------------------------------------------------
def pgstac_missing() -> str | None:
    """Why the pgstac stack cannot start here (None when it can)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); run .ci/pgstac.sh"
    version = bins[-1].parent.parent.name
    if not Path(f"/usr/share/postgresql/{version}/extension/postgis.control").is_file():
        return f"PostGIS for PostgreSQL {version} is not installed; run .ci/pgstac.sh"
    if not _rustac():
        return "the rustac command is not installed (pip install rustac, part of the test extra)"
    try:
        import psycopg  # noqa: F401
        import pypgstac  # noqa: F401
    except ImportError:
        return "pypgstac[psycopg] is not installed (part of the test extra)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser, so PostgreSQL cannot be started as the postgres user"
    return None


def require_pgstac() -> None:
    """Skip the calling test when the pgstac stack cannot start here, with the reason; under CI (``CI=true``,
    where ``.ci/pgstac.sh`` installs it) fail instead."""
    import pytest

    why = pgstac_missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the pgstac STAC API cannot start: {why}")
        pytest.skip(f"no real STAC API here: {why}")


def _rustac() -> str | None:
    beside = Path(sys.executable).parent / "rustac"
    return str(beside) if beside.exists() else shutil.which("rustac")


def _wait(url: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


@dataclass
class PgstacApi:
    """A running STAC API: ``url`` is the counting proxy in front of rustac (all links point there)."""

    url: str
    proxy: ForwardingProxy
    dsn: str
    folder: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    pg_ctl: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.proxy.close()
        if self.pg_ctl:
            subprocess.run([*self.pg_ctl, "stop", "-m", "fast"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_pgstac_api(collections: Iterable[dict], items: Iterable[dict]) -> PgstacApi:
    """Start PostgreSQL (a throwaway cluster on a free port), install pgstac, load, serve with rustac.

    Raises:
        RuntimeError: a step failed (its output is in the message).
    """
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods
    from pypgstac.migrate import Migrate

    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="eo-pgstac-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(cmd: list[str]) -> None:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")

    pg_ctl = [*as_pg, str(bindir / "pg_ctl"), "-D", str(folder / "data")]
    run([*as_pg, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--no-sync"])
    proxy = ForwardingProxy(f"http://127.0.0.1:{free_port()}")  # upstream set below
    api = PgstacApi(proxy.url, proxy, "", folder, pg_ctl=pg_ctl)
    try:
        run([*pg_ctl, "-l", str(folder / "postgres.log"), "-w", "-t", "60", "-o",
             f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off", "start"])
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE ROLE stac LOGIN SUPERUSER PASSWORD 'stac'")
            conn.execute("CREATE DATABASE stac OWNER stac")
        api.dsn = f"postgresql://stac:stac@127.0.0.1:{port}/stac"
        with psycopg.connect(api.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION postgis")
            conn.execute("ALTER ROLE stac SET search_path = pgstac, public")  # without it every search fails
        with PgstacDB(dsn=api.dsn) as db:
            Migrate(db).run_migration()
            loader = Loader(db)
            loader.load_collections(iter(list(collections)), Methods.upsert)
            loader.load_items(iter(list(items)), Methods.upsert)
        rustac_port = free_port()
        proxy._server.upstream = f"http://127.0.0.1:{rustac_port}"
        log = open(folder / "rustac.log", "w")  # noqa: SIM115 - closed with the process
        api.procs.append(subprocess.Popen([_rustac(), "serve", "--pgstac", api.dsn, "--addr", proxy.url,
                                           "--bind", f"127.0.0.1:{rustac_port}"], stdout=log, stderr=log))
        _wait(f"http://127.0.0.1:{rustac_port}/", 30)
    except Exception:
        api.stop()
        raise
    return api


def collection_stub(collection_id: str) -> dict:
    """A minimal STAC collection (pgstac needs one per collection id before its items load)."""
    return {"type": "Collection", "stac_version": "1.0.0", "id": collection_id, "description": collection_id,
            "license": "proprietary", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}}


def point_pc_sdk_at(server: FileServer, monkeypatch: Any) -> None:
    """Point the planetary-computer SDK at ``server``'s token endpoint and GDAL's HTTP proxy at ``server``.

    Blob-storage URLs (``http://<account>.blob.core.windows.net/...``) then reach only the local server, which
    serves ``<root>/<account>/<container>/<path>`` and checks the SAS signature. Undone by ``monkeypatch``; the
    SDK's token cache is cleared (call :func:`forget_pc_tokens` again after the test).
    """
    from planetary_computer.settings import Settings

    settings = Settings.get()
    monkeypatch.setattr(settings, "sas_url", server.sas_url)
    monkeypatch.setattr(settings, "subscription_key", None)
    monkeypatch.setenv("PC_SDK_SAS_URL", server.sas_url)
    monkeypatch.setenv("GDAL_HTTP_PROXY", f"127.0.0.1:{server.port}")
    forget_pc_tokens()
    server.tokens.revoked.clear()
    server.tokens.fail = 0
    server.tokens.requests = 0
    server.reset_counters()


def forget_pc_tokens() -> None:
    """Empty the planetary-computer SDK's token cache."""
    from planetary_computer.sas import TOKEN_CACHE

    TOKEN_CACHE.clear()


LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def loopback_only(monkeypatch: Any) -> None:
    """Make Python-level name resolution refuse anything but loopback, so a test cannot reach the internet."""
    import socket as _socket

    real = _socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if name not in LOOPBACK and not name.startswith("127."):
            raise OSError(f"test network guard: {name!r} is not on 127.0.0.1; tests must stay on loopback")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(_socket, "getaddrinfo", guarded)


def loopback_connections_only(monkeypatch: Any) -> list[str]:
    """:func:`loopback_only` made tighter: refuse name lookups and socket connections to anything but loopback.

    Besides ``getaddrinfo`` it guards ``gethostbyname`` (osmnx resolves the Overpass host with it, and then pins
    the address in its own ``getaddrinfo`` wrapper) and ``socket.connect`` (an IP literal needs no lookup).
    Returns the list the refused hosts are appended to.
    """
    import socket as _socket

    refused: list[str] = []
    real_getaddrinfo, real_gethostbyname, real_connect = (_socket.getaddrinfo, _socket.gethostbyname,
                                                          _socket.socket.connect)

    def check(host: Any) -> None:
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if name not in LOOPBACK and not name.startswith("127."):
            refused.append(name)
            raise OSError(f"test network guard: {name!r} is not on 127.0.0.1; tests must stay on loopback")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        check(host)
        return real_gethostbyname(host)

    def connect(self: _socket.socket, address: Any) -> None:
        if self.family in (_socket.AF_INET, _socket.AF_INET6):
            check(address[0])
        return real_connect(self, address)

    monkeypatch.setattr(_socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(_socket, "gethostbyname", gethostbyname)
    monkeypatch.setattr(_socket.socket, "connect", connect)
    return refused
