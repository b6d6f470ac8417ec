"""Where commands write: a new or empty folder, or one of ours; never anything else.

Every command that writes (``build``, ``demo``, ``snapshot``, and ``eo-models``' ``tokenize``, ``compare``,
``train-tokenizer`` ...) goes through :func:`check_output` before it writes and :func:`remove_ours` before it
replaces. A folder is *ours* when it carries the marker of what we write there and every file in it is one we
would have written; anything else (a user's ``results.csv``, a folder of another tool) is refused whatever the
flags, and no message suggests a destructive flag for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from eo_dataset.errors import OutputError

Owned = Callable[[PurePosixPath], bool]


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (``s3://``, ``gs://``, ``https://`` ...)."""
    return "://" in str(path)


def local_path(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as a local path; a URL is refused (only builds write to object storage)."""
    if is_url(path):
        raise OutputError(f"{option} {str(path)!r} is a URL; this command writes to a local folder only: give a "
                          f"local path for {option}")
    return Path(path)


def zarr_owned(extra_dirs: Iterable[str] = ()) -> Owned:
    """The files of a Zarr v3 store we wrote: ``zarr.json``, chunks under ``c/``, interrupted ``*.partial``
    writes, and anything under the top-level folders ``extra_dirs`` (e.g. the build manifest)."""
    extra = frozenset(extra_dirs)

    def owned(rel: PurePosixPath) -> bool:
        parts = rel.parts
        return (rel.name == "zarr.json" or rel.name.endswith(".partial") or "c" in parts[:-1]
                or (len(parts) > 1 and parts[0] in extra))

    return owned


def foreign_files(root: Path, owned: Owned, limit: int = 3) -> list[str]:
    """Up to ``limit`` files (relative paths) under ``root`` that ``owned`` does not claim."""
    found: list[str] = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            rel = PurePosixPath(Path(dirpath, n).relative_to(root).as_posix())
            if not owned(rel):
                found.append(str(rel))
                if len(found) >= limit:
                    return found
    return found


def check_output(path: str | os.PathLike[str], *, what: str, marker: str, option: str = "--out") -> str:
    """Check that ``path`` may be written: a local path that is new, an empty folder, or one of ours.

    Args:
        path: The output path.
        what: What we write there, for messages ("cube built by eo-dataset", "token store" ...).
        marker: A file (relative path) that only what we write carries, e.g. ``_build/manifest.json``.
        option: The option that named the path, for messages.

    Returns:
        ``"new"`` (nothing there; its parent folder is writable), ``"empty"`` (an empty folder) or ``"ours"``
        (a folder with ``marker``; the caller resumes it, or replaces it with :func:`remove_ours`).

    Raises:
        OutputError: a URL, an unwritable location, a file, or a folder that is not ours.
    """
    p = local_path(path, option)
    if not p.exists():
        _check_writable(p, option)
        return "new"
    if not p.is_dir():
        raise OutputError(f"{option} {p} is a file, not a folder; it is left untouched: choose another {option}")
    if not any(p.iterdir()):
        return "empty"
    if not (p / marker).is_file():
        raise OutputError(f"{option} {p} exists and is not a {what} (no {marker}); it is left untouched: choose a "
                          f"new or empty folder for {option}")
    return "ours"


def check_output_file(path: str | os.PathLike[str], *, what: str, is_ours: Callable[[Path], bool],
                      option: str = "--out") -> Path:
    """Check that a single-file output may be written: a new path, or a file ``is_ours`` recognises.

    Raises:
        OutputError: a URL, an unwritable location, a folder, or a file that is not ours.
    """
    p = local_path(path, option)
    if not p.exists():
        _check_writable(p, option)
    elif p.is_dir():
        raise OutputError(f"{option} {p} is a folder; it is left untouched: give a file name for {option}")
    elif not is_ours(p):
        raise OutputError(f"{option} {p} exists and is not a {what}; it is left untouched: choose another {option}")
    return p


def check_replaceable(path: Path, *, what: str, owned: Owned, option: str = "--out") -> None:
    """Raise unless every file under ``path`` is ``owned`` (so replacing it deletes nothing of anybody else's).

    Raises:
        OutputError: naming the first files that are not ours.
    """
    foreign = foreign_files(path, owned)
    if foreign:
        raise OutputError(f"{option} {path} is a {what} but also holds other files ({', '.join(foreign)}); it is "
                          f"left untouched: move those files out of it, or choose another {option}")


def remove_ours(path: Path, *, what: str, owned: Owned, option: str = "--out") -> None:
    """Delete ``path`` (a folder :func:`check_output` found to be ours) if every file in it is ``owned``.

    Raises:
        OutputError: a file in it is not one we wrote; nothing is deleted.
    """
    check_replaceable(path, what=what, owned=owned, option=option)
    shutil.rmtree(path)


def _check_writable(p: Path, option: str) -> None:
    """Raise unless a folder can be made at ``p`` (whose parents are created if missing)."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"cannot write {option} {p}: {reason} in {p.parent}; choose a location you can write "
                          "to") from None
