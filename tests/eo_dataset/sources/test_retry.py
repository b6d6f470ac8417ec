"""Transient failures are retried with backoff; persistent ones are reported at once."""

from __future__ import annotations

import pytest
from rasterio.errors import RasterioIOError

from eo_dataset.sources.retry import is_transient, with_retries


@pytest.mark.parametrize(("exc", "transient"), [
    (RasterioIOError("HTTP response code: 503"), True),
    (RasterioIOError("CURL error: Operation timed out after 30000 milliseconds"), True),
    (ConnectionResetError("reset by peer"), True),
    (TimeoutError(), True),
    (RasterioIOError("HTTP response code: 404"), False),
    (RasterioIOError("/data/x.tif: No such file or directory"), False),
    (RasterioIOError("'x.tif' not recognized as a supported file format."), False),
    (ValueError("timed out"), False),  # not an I/O error: a bug, never retried
])
def test_classification(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_transient_error_is_retried_with_exponential_backoff() -> None:
    calls, waits = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RasterioIOError("HTTP response code: 503")
        return "pixels"

    assert with_retries(flaky, attempts=3, backoff_s=0.5, sleep=waits.append) == "pixels"
    assert len(calls) == 3 and waits == [0.5, 1.0]


def test_gives_up_after_the_last_attempt() -> None:
    waits: list[float] = []
    with pytest.raises(RasterioIOError, match="503"):
        with_retries(lambda: (_ for _ in ()).throw(RasterioIOError("HTTP response code: 503")), attempts=2,
                     sleep=waits.append)
    assert waits == [0.5]


def test_persistent_error_is_not_retried() -> None:
    calls, waits = [], []

    def missing() -> None:
        calls.append(1)
        raise RasterioIOError("/x.tif: No such file or directory")

    with pytest.raises(RasterioIOError):
        with_retries(missing, sleep=waits.append)
    assert len(calls) == 1 and waits == []
