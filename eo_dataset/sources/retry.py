"""Retrying transient failures with exponential backoff; persistent ones fail at once.

A read that times out, hits a 5xx/429 or a reset connection is tried again (the network or the server may recover);
a missing file, a 404 or a corrupt file is not (it will not get better) and goes straight into the build report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRANSIENT = ("timed out", "timeout", "temporarily", "connection reset", "connection refused", "connection aborted",
              "broken pipe", "reset by peer", "too many requests", "http response code: 5", "http response code: 429",
              "http error 5", "http error 429", " 500 ", " 502 ", " 503 ", " 504 ", "curl error")
_PERSISTENT = ("no such file", "not recognized as", "http response code: 404", "http response code: 403",
               "http error 404", "not a tiff", "corrupt")


def is_transient(exc: BaseException) -> bool:
    """Whether an error may go away if the same read is tried again."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    text = f" {exc} ".lower()
    if any(p in text for p in _PERSISTENT):
        return False
    return isinstance(exc, OSError) and any(t in text for t in _TRANSIENT)


def with_retries(fn: Callable[[], T], attempts: int = 3, backoff_s: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn``; on a transient error wait ``backoff_s * 2**k`` and try again, up to ``attempts`` calls in all."""
    for k in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if k == attempts - 1 or not is_transient(exc):
                raise
            log.info("transient error (attempt %d of %d), retrying in %.1f s: %s", k + 1, attempts,
                     backoff_s * 2**k, exc)
            sleep(backoff_s * 2**k)
    raise AssertionError("unreachable")
