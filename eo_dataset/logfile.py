"""Quiet success: the command line shows our progress and summary; every log record goes to a file.

Without ``--verbose`` the root logger writes to ``$EO_DATASET_LOG_DIR/<prog>.log`` (default
``~/.cache/eo-dataset/logs``; rotated at 5 MB) and nothing of Dask, GDAL or the HTTP stack reaches the terminal,
including Dask's worker processes (``DASK_LOGGING__DISTRIBUTED``, inherited by them). With ``--verbose`` records of
level INFO and above also go to stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
_verbose = True  # until setup_logging says otherwise (library use: Dask's own defaults)


def log_dir() -> Path:
    """Where log files go: ``$EO_DATASET_LOG_DIR``, else ``$XDG_CACHE_HOME/eo-dataset/logs``."""
    if os.environ.get("EO_DATASET_LOG_DIR"):
        return Path(os.environ["EO_DATASET_LOG_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "eo-dataset" / "logs"


def setup_logging(prog: str, verbose: bool) -> Path | None:
    """Send log records to a file (and to stderr with ``verbose``); returns the file, None if it cannot be made.

    Call it before importing ``distributed``: Dask configures its loggers from its config at import.
    """
    global _verbose
    _verbose = verbose
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # read at import, here and in workers
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_eo_dataset", False):
            root.removeHandler(h)
    path: Path | None = log_dir() / f"{prog}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(path, maxBytes=5_000_000, backupCount=2)
    except OSError:  # a read-only home: no file, but still nothing on the terminal
        path, handler = None, logging.NullHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._eo_dataset = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if verbose:
        stderr = logging.StreamHandler()
        stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        stderr._eo_dataset = True  # type: ignore[attr-defined]
        root.addHandler(stderr)
    logging.captureWarnings(True)
    return path


def worker_log_level() -> int:
    """The level below which a LocalCluster's worker processes stay silent on stderr.

    Quiet (the CLI without ``--verbose``): only CRITICAL, so a connection closed while the cluster shuts down
    prints no traceback; a task's own error still reaches the caller through its future.
    """
    return logging.ERROR if _verbose else logging.CRITICAL
