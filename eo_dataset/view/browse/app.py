"""The web app of ``eo-dataset browse``: FastAPI routes over a :class:`~.browser.CubeBrowser`, served by uvicorn.

Routes (every one read-only; the page files are read from the package once, at start)::

    /, /index.html, /sample.html, /static/<file>, /config.js     the pages and their scripts and styles
    /api/cube.json                                                 the cube: modalities, extent, dates
    /api/query.json?has=..&lacks=..&valid=..&valid_min=..&...      the overview for a set of filters
    /api/sample/<id>.json                                          one sample: provenance, legends, picture URLs
    /img/<id>/<m>.png, /img/<id>/<m>.valid.png                     a modality, the overlay of its invalid pixels
    /img/<id>/tokens/<m>.png                                       a token map (with --tokens)
    /img/<id>/generated/<m>.png, /img/<id>/generated/<m>.valid.png a generated modality (with --generated)

A sample id or modality name from the URL is looked up in the cube's lists, never joined into a path; unknown ones
answer 404, bad filters 400 with a one-line ``detail``.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from eo_dataset.errors import CubeError, EODatasetError
from eo_dataset.view.browse.browser import CubeBrowser, NotFound
from eo_dataset.view.browse.pages import config_js, page_files

MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
#: what the pages may load: only this server's own files (and the data: favicon); no inline script
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ServeError(EODatasetError, OSError):
    """The server cannot start: the address is in use or cannot be bound."""


def make_app(browser: CubeBrowser) -> FastAPI:
    """The FastAPI app serving ``browser``'s cube."""
    app = FastAPI(title="eo-dataset browse", docs_url=None, redoc_url=None, openapi_url=None)
    files = page_files()

    def file(name: str) -> Response:
        body = files.get(name)
        if body is None:
            return _error(404, f"no file {name!r}")
        return Response(body, media_type=MEDIA[name[name.rfind("."):]])

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/")
    @app.get("/index.html")
    def index() -> Response:
        return file("index.html")

    @app.get("/sample.html")
    def sample_page() -> Response:
        return file("sample.html")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        return file(name) if not name.endswith(".html") else _error(404, f"no file {name!r}")

    @app.get("/config.js")
    def config() -> Response:
        return Response(config_js("live"), media_type=MEDIA[".js"])

    @app.get("/api/cube.json")
    def cube() -> Any:
        return browser.cube()

    @app.get("/api/query.json")
    def query(request: Request) -> Any:
        return _answer(lambda: browser.query(dict(request.query_params)))

    @app.get("/api/sample/{sample_id}.json")
    def sample(sample_id: str) -> Any:
        return _answer(lambda: browser.sample(sample_id))

    @app.get("/img/{sample_id}/{name}")
    def image(sample_id: str, name: str) -> Any:
        return _answer(lambda: Response(browser.image(sample_id, name), media_type="image/png",
                                        headers={"Cache-Control": "max-age=3600"}))

    @app.get("/img/{sample_id}/tokens/{name}")
    def tokens(sample_id: str, name: str) -> Any:
        return _answer(lambda: Response(browser.token_image(sample_id, name), media_type="image/png",
                                        headers={"Cache-Control": "max-age=3600"}))

    @app.get("/img/{sample_id}/generated/{name}")
    def generated(sample_id: str, name: str) -> Any:
        return _answer(lambda: Response(browser.generated_image(sample_id, name), media_type="image/png",
                                        headers={"Cache-Control": "max-age=3600"}))

    return app


def _answer(make: Any) -> Any:
    try:
        return make()
    except NotFound as exc:
        return _error(404, str(exc))
    except CubeError as exc:
        return _error(400, str(exc))


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


# -- serving -------------------------------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one).

    Raises:
        ServeError: a port outside 0..65535, or an address that is in use or cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: expected a port number from 0 to 65535 (0: a free one)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        return sock
    except OSError as exc:
        sock.close()
        hint = "choose another --port (or --port 0 for a free one)" if exc.errno == errno.EADDRINUSE else \
            "check --host"
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class Server:
    """uvicorn serving an app on a bound socket, in the foreground (:meth:`run`) or a thread (:meth:`running`).

    uvicorn's log records go to the root logger (the log file of :func:`eo_dataset.logfile.setup_logging`), not to
    the terminal; access lines only with ``access_log``.
    """

    def __init__(self, app: FastAPI, sock: socket.socket, access_log: bool = False) -> None:
        import uvicorn

        self.sock = sock
        self.url = url_of(sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=access_log, lifespan="off",
                                                    timeout_graceful_shutdown=2))

    def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Serve until interrupted (Ctrl-C); ``on_started`` is called once uvicorn serves (its Ctrl-C handling in
        place), so that a URL printed by it is never one that does not answer yet."""
        if on_started is not None:
            def announce() -> None:
                while not self.server.started and not self.server.should_exit:
                    time.sleep(0.02)
                if self.server.started:
                    on_started()

            threading.Thread(target=announce, daemon=True).start()
        self.server.run(sockets=[self.sock])

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve in a thread for the duration of a ``with`` block; yields the URL."""
        thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        thread.start()
        try:
            while not self.server.started and thread.is_alive():
                thread.join(0.01)
            yield self.url
        finally:
            self.server.should_exit = True
            thread.join(10)
            self.sock.close()
