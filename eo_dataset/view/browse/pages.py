"""The page files shipped in the package (``static/``: HTML, scripts, styles), shared by the server and the static
export; read once, never looked up by a path from a request."""

from __future__ import annotations

from importlib import resources

KINDS = ("html", "js", "css")


def page_files() -> dict[str, bytes]:
    """The files of the pages: name -> bytes."""
    root = resources.files("eo_dataset.view.browse") / "static"
    return {f.name: f.read_bytes() for f in root.iterdir() if f.is_file() and f.name.rsplit(".", 1)[-1] in KINDS}


def config_js(mode: str) -> bytes:
    """``config.js``: how the pages get their data (``live``: the server's JSON API; ``static``: ``data/*.js``)."""
    return f'window.EO_BROWSE = {{"mode": "{mode}"}};\n'.encode()
