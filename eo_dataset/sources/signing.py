"""Signing asset hrefs right before reading them, and keeping tokens out of everything that is stored.

A source with ``sign: planetary_computer`` has its Azure Blob Storage asset hrefs signed with a SAS token from the
``planetary-computer`` package at read time. Items, search caches, snapshots and cubes keep the unsigned href;
the signed one lives only in the reader (:class:`eo_dataset.engine.read.DatasetCache`), which re-signs when a token is
about to expire or the storage answers 403 (an expired or revoked token) and then retries once.

The token endpoint is the SDK's: ``PC_SDK_SAS_URL`` (default the Planetary Computer's), with
``PC_SDK_SUBSCRIPTION_KEY`` if you have one. Hosts other than ``*.blob.core.windows.net`` are read unsigned.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol
from urllib.parse import urlparse

from eo_dataset.errors import SourceError
from eo_dataset.sources.retry import DEFAULT as RETRY

_URL_QUERY = re.compile(r"((?:https?|s3|gs|az|abfss?)://[^\s'\"?<>]+)\?[^\s'\"<>]*")
_AUTH_ERROR = re.compile(r"\b(401|403)\b|AuthenticationFailed|AuthorizationFailure|AuthorizationPermissionMismatch|"
                         r"Server failed to authenticate", re.IGNORECASE)


def redact_urls(text: str) -> str:
    """``text`` with the query string of every URL removed (SAS tokens, signatures), for messages that are stored.

    >>> redact_urls("cannot open https://a.blob.core.windows.net/c/x.tif?st=1&sig=abc: 403")
    'cannot open https://a.blob.core.windows.net/c/x.tif: 403'
    """
    return _URL_QUERY.sub(r"\1", text)


def is_auth_error(exc: BaseException) -> bool:
    """Whether an error reading a signed href looks like a rejected token (HTTP 401/403)."""
    return bool(_AUTH_ERROR.search(str(exc)))


@dataclass(frozen=True)
class Signed:
    """A signed href (never store it) and when its token expires (None: not signed / no expiry)."""

    href: str
    expires: dt.datetime | None = None

    def expires_within(self, seconds: float) -> bool:
        """Whether the token expires within ``seconds`` from now."""
        if self.expires is None:
            return False
        return (self.expires - dt.datetime.now(dt.UTC)).total_seconds() < seconds


class Signer(Protocol):
    """Turns an unsigned asset href into a readable one."""

    name: str

    def sign(self, href: str) -> Signed:
        """The href to read now."""
        ...

    def refresh(self, href: str) -> None:
        """Forget the token used for ``href``, so the next :meth:`sign` gets a new one."""
        ...


# token requests are retried on 429/5xx by the one retry policy (the SDK's default, 10 retries with 0.8 s backoff,
# can take many minutes); the SDK's status codes are the policy's RETRY_STATUS
TOKEN_RETRIES = RETRY.attempts - 1
TOKEN_BACKOFF_S = RETRY.backoff_s


class PlanetaryComputerSigner:
    """SAS-token signing with the ``planetary-computer`` package (tokens cached per storage container)."""

    name = "planetary_computer"

    def __init__(self) -> None:
        try:
            with warnings.catch_warnings():  # the SDK's pydantic models use a deprecated (harmless) config style
                warnings.simplefilter("ignore", DeprecationWarning)
                import planetary_computer  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise SourceError("sign: planetary_computer needs the 'planetary-computer' package "
                              "(pip install planetary-computer)") from exc

    @staticmethod
    def _container(href: str) -> tuple[str, str] | None:
        from planetary_computer.sas import BLOB_STORAGE_DOMAIN
        from planetary_computer.utils import parse_blob_url

        parsed = urlparse(href)
        if not parsed.netloc.endswith(BLOB_STORAGE_DOMAIN):
            return None
        return parse_blob_url(parsed)

    @staticmethod
    def _token_url(account: str, container: str) -> str:
        from planetary_computer.settings import Settings

        return f"{Settings.get().sas_url}/{account}/{container}"

    def sign(self, href: str) -> Signed:
        """Sign a blob-storage href (others are returned as they are).

        Raises:
            SourceError: no token could be had from the token endpoint.
        """
        import planetary_computer
        from planetary_computer.sas import get_token

        where = self._container(href)
        if where is None:
            return Signed(href)
        try:
            # fetch (or reuse) the container's token with a bounded retry first; sign_url then finds it cached
            token = get_token(*where, retry_total=TOKEN_RETRIES, retry_backoff_factor=TOKEN_BACKOFF_S)
            signed = planetary_computer.sign_url(href)
        except Exception as exc:  # requests errors, bad JSON, pydantic validation of the answer
            raise SourceError(f"cannot get a Planetary Computer SAS token for {redact_urls(href)} from "
                              f"{self._token_url(*where)}: {redact_urls(str(exc))}") from None
        return Signed(signed, token.expiry if signed != href else None)

    def refresh(self, href: str) -> None:
        """Drop the cached token of ``href``'s container."""
        from planetary_computer.sas import TOKEN_CACHE

        where = self._container(href)
        if where is not None:
            TOKEN_CACHE.pop(self._token_url(*where), None)


@lru_cache(maxsize=4)
def signer(name: str | None) -> Signer | None:
    """The signer a source names (``sign:`` in the recipe), or None for unsigned reads."""
    if name is None:
        return None
    if name == "planetary_computer":
        return PlanetaryComputerSigner()
    raise SourceError(f"unknown signing method {name!r}; expected 'planetary_computer'")
