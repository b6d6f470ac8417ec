"""``eo-dataset browse``: serve the browser on a cube, or write it as a static site (``--export``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from ipaddress import ip_address

from eo_dataset.errors import CubeError
from eo_dataset.logfile import log_dir
from eo_dataset.view.browse.index import MAX_POINTS

INSTALL = "pip install 'eo-dataset[browse]'"
LOOPBACK = "127.0.0.1"


def browse(cube: str | os.PathLike[str], *, host: str | None = None, port: int = 8765, export: str | None = None,
           tokens: str | None = None, generated: str | None = None, embeddings: str | None = None,
           max_points: int = MAX_POINTS,
           verbose: bool = False, say: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> int:
    """Serve the browser on ``host:port`` until Ctrl-C (``host`` None: 127.0.0.1 only), or with ``export`` write the
    static site there and return. ``say`` prints a line of the summary, ``warn`` a warning. Returns an exit code.

    Raises:
        CubeError: not a cube, a missing dependency, bad attachments; OutputError: ``export`` is not ours;
        ServeError: the address cannot be bound.
    """
    try:
        import matplotlib  # noqa: F401  (colour maps and hillshading of the pictures)
        import PIL  # noqa: F401
    except ImportError as exc:
        raise CubeError(f"'eo-dataset browse' draws with matplotlib and Pillow, which are not installed ({exc}); "
                        f"install them with {INSTALL}") from None
    from eo_dataset.view.browse.browser import CubeBrowser

    if export is not None:
        from eo_dataset.view.browse.export import check_export, export_site

        check_export(export)  # before any work: a folder that is not ours is never touched
        t0 = time.perf_counter()
        browser = CubeBrowser(cube, tokens=tokens, generated=generated, embeddings=embeddings,
                              max_points=max_points)
        summary = export_site(browser, export)
        say(f"wrote {export}: {summary['samples']} sample pages, {summary['pictures']} pictures, "
            f"{summary['bytes'] / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s; open {export}/index.html in a "
            "browser, or serve the folder with any web server")
        return 0
    try:
        from eo_dataset.view.browse.app import Server, bind, make_app
    except ImportError as exc:
        raise CubeError(f"'eo-dataset browse' serves with FastAPI and uvicorn, which are not installed ({exc}); "
                        f"install them with {INSTALL}") from None
    where = host or LOOPBACK
    sock = bind(where, port)  # before reading the cube: a busy port is said at once
    try:
        browser = CubeBrowser(cube, tokens=tokens, generated=generated, embeddings=embeddings,
                              max_points=max_points)
        server = Server(make_app(browser), sock, access_log=verbose)
    except BaseException:
        sock.close()
        raise
    if not _is_loopback(where):
        warn(f"serving on {where}, not only on this machine: anyone who can reach {where}:{sock.getsockname()[1]} "
             "sees this cube, without a password; leave out --host to serve on 127.0.0.1 only")
    try:  # the URL is printed once uvicorn serves: from then on Ctrl-C stops it cleanly
        server.run(on_started=lambda: say(f"browsing {browser.path} ({browser.index.n} samples) at {server.url}  "
                                          f"(Ctrl-C to stop; server log: {log_dir() / 'eo-dataset.log'})"))
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again
        pass
    finally:
        sock.close()
    say("stopped")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
