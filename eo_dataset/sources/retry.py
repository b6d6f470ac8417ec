"""The one retry policy for everything asked over HTTP: STAC API searches, Overpass queries, asset reads, SAS tokens.

One request is sent at most :attr:`RetryPolicy.attempts` times in all (the first try included). A transient failure
(HTTP 429 or 5xx, see :data:`RETRY_STATUS`; a timeout; a refused, reset or broken connection) is tried again after
an exponential backoff; a persistent one (404, 401/403, a missing or corrupt file, a bad answer) fails at once and
goes into the build report. Nothing retries around a retrying layer, so the counts never multiply:

- ``stac_api`` searches: urllib3's :class:`~urllib3.util.retry.Retry` (:meth:`RetryPolicy.urllib3`), mounted in
  pystac-client's session; a server's ``Retry-After`` is respected.
- asset reads: GDAL's own HTTP retries (:meth:`RetryPolicy.gdal_options`: ``GDAL_HTTP_MAX_RETRY`` = attempts - 1,
  ``GDAL_HTTP_RETRY_DELAY``, ``GDAL_HTTP_RETRY_CODES``) per range request; the engine does not retry a read again.
- ``overpass`` queries: :meth:`RetryPolicy.call` around osmnx (whose own endless 429/504 loop is cut off).
- Planetary Computer SAS tokens: the SDK's urllib3 retry, given this policy's numbers.

Sources with ``retries``/``backoff_s`` settings (``stac_api``, ``overpass``) get ``RetryPolicy.of(spec)``;
asset reads and tokens use :data:`DEFAULT`, the same numbers as a source's defaults.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from eo_dataset.spec.recipe import SourceSpec

if TYPE_CHECKING:
    from urllib3.util.retry import Retry

T = TypeVar("T")
log = logging.getLogger(__name__)

#: HTTP answers worth asking again: too many requests, and the server errors that mean "not now".
RETRY_STATUS: tuple[int, ...] = (429, 500, 502, 503, 504)

_TRANSIENT = ("timed out", "timeout", "temporarily", "temporary failure", "connection reset", "connection refused",
              "connection aborted", "connection broken", "broken pipe", "reset by peer", "too many requests",
              "http response code: 5", "http response code: 429", "http error 5", "http error 429", " 500 ", " 502 ",
              " 503 ", " 504 ", "curl error")
_PERSISTENT = ("no such file", "not recognized as", "http response code: 404", "http response code: 403",
               "http error 404", "not a tiff", "corrupt")


def is_transient(exc: BaseException) -> bool:
    """Whether an error may go away if the same request is sent again.

    An error that says so itself (a ``transient`` attribute) is taken at its word; otherwise timeouts and
    connection errors are transient, and I/O errors whose message names a transient cause (a 429/5xx answer, a
    timeout, a reset connection); a missing file, a 404/403 or a corrupt file is not, nor is any other error (a bug).
    """
    said = getattr(exc, "transient", None)
    if isinstance(said, bool):
        return said
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    text = f" {exc} ".lower()
    if any(p in text for p in _PERSISTENT):
        return False
    return isinstance(exc, OSError) and any(t in text for t in _TRANSIENT)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one request is tried.

    Attributes:
        attempts: Tries of one request in all, the first included (a source's ``retries`` + 1).
        backoff_s: The backoff factor: no wait before the second try, then ``2 * backoff_s``, ``4 * backoff_s``
            ... (urllib3's schedule; GDAL starts at ``backoff_s`` and doubles, with jitter).
        backoff_max_s: The longest wait between two tries.
    """

    attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"a retry policy makes at least 1 attempt (found attempts={self.attempts})")

    @classmethod
    def of(cls, spec: SourceSpec) -> RetryPolicy:
        """The policy of a recipe's source (its ``retries`` and ``backoff_s``)."""
        return cls(attempts=spec.retries + 1, backoff_s=spec.backoff_s)

    def urllib3(self) -> Retry:
        """As urllib3's ``Retry`` (for a requests/pystac-client session): every kind of failure counts against
        ``attempts - 1`` retries; the last 429/5xx answer is returned rather than raised."""
        from urllib3.util.retry import Retry

        return Retry(total=self.attempts - 1, backoff_factor=self.backoff_s, backoff_max=self.backoff_max_s,
                     status_forcelist=RETRY_STATUS, allowed_methods=None, respect_retry_after_header=True,
                     raise_on_status=False)

    def gdal_options(self) -> dict[str, str]:
        """GDAL's configuration for the same policy on ``/vsicurl/`` reads (one range request: ``attempts`` tries)."""
        return {"GDAL_HTTP_MAX_RETRY": str(self.attempts - 1),
                "GDAL_HTTP_RETRY_DELAY": f"{self.backoff_s:g}",
                "GDAL_HTTP_RETRY_CODES": ",".join(map(str, RETRY_STATUS))}

    def call(self, fn: Callable[[], T], *, retryable: Callable[[BaseException], bool] = is_transient,
             what: str = "request", sleep: Callable[[float], None] = time.sleep) -> T:
        """``fn()``, sent again after a retryable error, at most ``attempts`` times in all.

        The counting and the backoff are urllib3's ``Retry`` (:meth:`urllib3`), so a loop here waits exactly as a
        STAC API search does.

        Raises:
            Exception: what ``fn`` raised: at once when it is not retryable, else on the last attempt.
        """
        from urllib3.exceptions import MaxRetryError

        retry = self.urllib3()
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not retryable(exc):
                    raise
                try:
                    retry = retry.increment(method="GET", url=what, error=exc)
                except MaxRetryError:
                    raise exc from None
                wait = retry.get_backoff_time()
                log.info("%s failed (attempt %d of %d), trying again in %.2f s: %s", what, attempt, self.attempts,
                         wait, exc)
                sleep(wait)
        raise AssertionError("unreachable: urllib3's Retry gives up after `attempts` tries")


_FIELDS = SourceSpec.model_fields
#: The policy of asset reads and token requests: a source's default ``retries`` and ``backoff_s``.
DEFAULT = RetryPolicy(attempts=_FIELDS["retries"].default + 1, backoff_s=_FIELDS["backoff_s"].default)
