"""``eo-dataset browse CUBE --export DIR``: the browser's pages as a static site, to open from disk or put on any web
server.

The site holds the same page files as the server, ``config.js`` saying ``static``, the data as scripts
(``data/cube.js``, ``data/table.js``, ``data/sample/<id>.js``: scripts, not JSON, so the pages also work opened
from ``file://``, where browsers refuse to fetch) and every picture (``img/<id>/<m>.png``, ``<m>.valid.png``,
``tokens/<m>.png``, ``generated/<m>.png``, ``generated/<m>.valid.png``). Without a server the overview filters in
the page, over ``data/table.js``.

``DIR`` must be new, an empty folder, or an export of this command (marked by ``eo-browse.json``), which is
replaced, and only if every file in it is one an export writes; anything else is refused and left untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from eo_dataset._version import __version__
from eo_dataset.errors import CubeError
from eo_dataset.outputs import check_output, check_replaceable, remove_ours
from eo_dataset.view.browse.browser import CubeBrowser
from eo_dataset.view.browse.pages import config_js, page_files

MARKER = "eo-browse.json"
WHAT = "static site written by eo-dataset browse --export"
MAX_SAMPLES = 5000  #: an export writes a page's data and pictures per sample; beyond this, serve the cube instead
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TOP = ("index.html", "sample.html", "config.js", MARKER)


def owned(rel: PurePosixPath) -> bool:
    """The files an export writes (relative paths)."""
    parts = rel.parts
    return (len(parts) == 1 and parts[0] in TOP) or (len(parts) > 1 and parts[0] in ("static", "data", "img"))


def check_export(out: str | os.PathLike[str]) -> str:
    """``"new"``, ``"empty"`` or ``"ours"`` (an export of this command, every file one an export writes).

    Raises:
        OutputError: anything else; it is left untouched.
    """
    state = check_output(out, what=WHAT, marker=MARKER, option="--export")
    if state == "ours":
        check_replaceable(Path(out), what=WHAT, owned=owned, option="--export")
    return state


def export_site(browser: CubeBrowser, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the static site of ``browser``'s cube to ``out``; returns a summary (samples, pictures, bytes).

    Raises:
        OutputError: ``out`` is not new, empty or an export of ours (left untouched).
        CubeError: the cube has more than :data:`MAX_SAMPLES` samples, or a sample id that cannot be a file name.
    """
    state = check_export(out)
    ix = browser.index
    if ix.n > MAX_SAMPLES:
        raise CubeError(f"the cube has {ix.n:,} samples; --export writes pictures of every sample and takes at most "
                        f"{MAX_SAMPLES:,}: serve it instead (eo-dataset browse without --export)")
    bad = [sid for sid in ix.ids if not SAFE_ID.match(sid)]
    if bad:
        raise CubeError(f"sample id {bad[0]!r} cannot be a file name of the export (expected letters, digits, '_', "
                        "'.', '-'); serve the cube instead")
    out = Path(out)
    if state == "ours":
        remove_ours(out, what=WHAT, owned=owned, option="--export")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = _write(browser, tmp)
        if out.exists():  # an empty folder (checked above)
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write(browser: CubeBrowser, root: Path) -> dict[str, Any]:
    files = page_files()
    for name in ("index.html", "sample.html"):
        (root / name).write_bytes(files[name])
    (root / "static").mkdir()
    for name, body in files.items():
        if not name.endswith(".html"):
            (root / "static" / name).write_bytes(body)
    (root / "config.js").write_bytes(config_js("static"))
    _data(root, "cube", browser.cube())
    _data(root, "table", browser.index.table())
    pictures = 0
    for sid in browser.index.ids:
        page = browser.sample(sid)
        _data(root, f"sample/{sid}", page)
        folder = root / "img" / sid
        for m in page["modalities"]:
            if m["available"]:
                pic = browser.picture(sid, m["name"])
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{m['name']}.png").write_bytes(pic.png)
                (folder / f"{m['name']}.valid.png").write_bytes(pic.overlay)
                pictures += 2
        for t in page.get("tokens", []):
            if t["available"]:
                (folder / "tokens").mkdir(parents=True, exist_ok=True)
                (folder / "tokens" / f"{t['modality']}.png").write_bytes(
                    browser.token_image(sid, f"{t['modality']}.png"))
                pictures += 1
        for g in (page.get("generated") or {}).get("modalities", []):
            if g["available"]:
                pic = browser.generated_picture(sid, g["modality"])
                (folder / "generated").mkdir(parents=True, exist_ok=True)
                (folder / "generated" / f"{g['modality']}.png").write_bytes(pic.png)
                (folder / "generated" / f"{g['modality']}.valid.png").write_bytes(pic.overlay)
                pictures += 2
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    summary = {"samples": browser.index.n, "pictures": pictures, "bytes": size, "cube": browser.path,
               "eo_dataset_version": __version__}
    (root / MARKER).write_text(json.dumps(summary, indent=1))
    return summary


def _data(root: Path, key: str, value: Any) -> None:
    """``data/<key>.js``: the value handed to the page's loader (``eoData(key, value)``)."""
    path = root / "data" / f"{key}.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    path.write_text(f"eoData({json.dumps(key)},{text});\n")
