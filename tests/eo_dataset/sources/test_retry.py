"""The one retry policy: transient failures are retried with backoff, persistent ones reported at once, and one
request is sent at most ``attempts`` times in all, whichever layer (urllib3, GDAL, our loop) does the retrying."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import requests
from RangeHTTPServer import RangeRequestHandler
from rasterio.errors import RasterioIOError

from eo_dataset.engine.read import GDAL_REMOTE_OPTIONS, dataset_cache, gdal_options
from eo_dataset.errors import SourceError
from eo_dataset.sources.base import CACHE_ENV, cache_dir
from eo_dataset.sources.retry import DEFAULT, RETRY_STATUS, RetryPolicy, is_transient
from eo_dataset.sources.signing import TOKEN_BACKOFF_S, TOKEN_RETRIES
from eo_dataset.spec.recipe import SourceSpec
from tests.servers import loopback_only


@pytest.mark.parametrize(("exc", "transient"), [
    (RasterioIOError("HTTP response code: 503"), True),
    (RasterioIOError("CURL error: Operation timed out after 30000 milliseconds"), True),
    (ConnectionResetError("reset by peer"), True),
    (TimeoutError(), True),
    (RasterioIOError("HTTP response code: 404"), False),
    (RasterioIOError("/data/x.tif: No such file or directory"), False),
    (RasterioIOError("'x.tif' not recognized as a supported file format."), False),
    (ValueError("timed out"), False),  # not an I/O error: a bug, never retried
    # what requests raises for an endpoint that does not answer, answers too slowly or drops the connection
    (requests.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /api "
                              "(Caused by NewConnectionError('Failed to establish a new connection: [Errno 111] "
                              "Connection refused'))"), True),
    (requests.ReadTimeout("HTTPConnectionPool(host='127.0.0.1', port=9): Read timed out. (read timeout=60)"), True),
    (requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(0 bytes read)"), True),
    (requests.exceptions.InvalidURL("Invalid URL 'http://': No host supplied"), False),
    (OSError("test network guard: 'overpass-api.de' is not on 127.0.0.1"), False),
])
def test_classification(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_an_error_that_says_whether_it_is_transient_is_believed() -> None:
    class Answer(Exception):
        def __init__(self, transient: bool) -> None:
            super().__init__("HTTP 503 Service Unavailable")
            self.transient = transient

    assert is_transient(Answer(True)) and not is_transient(Answer(False))


def test_transient_error_is_retried_with_exponential_backoff() -> None:
    calls, waits = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise RasterioIOError("HTTP response code: 503")
        return "pixels"

    assert RetryPolicy(attempts=4, backoff_s=0.5).call(flaky, sleep=waits.append) == "pixels"
    # urllib3's schedule (the same a STAC API search waits): at once, then 2, 4 ... x backoff_s
    assert len(calls) == 4 and waits == [0, 1.0, 2.0]


def test_the_wait_is_capped() -> None:
    waits: list[float] = []
    with pytest.raises(TimeoutError):
        RetryPolicy(attempts=6, backoff_s=10, backoff_max_s=25).call(
            lambda: (_ for _ in ()).throw(TimeoutError()), sleep=waits.append)
    assert waits == [0, 20, 25, 25, 25]


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_gives_up_after_the_last_attempt(attempts: int) -> None:
    calls, waits = [], []

    def down() -> None:
        calls.append(1)
        raise RasterioIOError("HTTP response code: 503")

    with pytest.raises(RasterioIOError, match="503"):
        RetryPolicy(attempts=attempts, backoff_s=0.5).call(down, sleep=waits.append)
    assert len(calls) == attempts and len(waits) == attempts - 1  # the last error is raised, not waited for


def test_persistent_error_is_not_retried() -> None:
    calls, waits = [], []

    def missing() -> None:
        calls.append(1)
        raise RasterioIOError("/x.tif: No such file or directory")

    with pytest.raises(RasterioIOError):
        DEFAULT.call(missing, sleep=waits.append)
    assert len(calls) == 1 and waits == []


def test_a_policy_needs_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1 attempt"):
        RetryPolicy(attempts=0)


def test_the_policy_of_a_source_and_the_default() -> None:
    spec = SourceSpec(type="stac_api", href="https://example.com/stac", retries=2, backoff_s=0.25)
    assert RetryPolicy.of(spec) == RetryPolicy(attempts=3, backoff_s=0.25)
    defaults = SourceSpec(type="stac_api", href="https://example.com/stac")
    assert DEFAULT == RetryPolicy.of(defaults)  # reads and tokens are as patient as a source left at its defaults
    assert (TOKEN_RETRIES, TOKEN_BACKOFF_S) == (DEFAULT.attempts - 1, DEFAULT.backoff_s)


def test_the_policy_as_urllib3_and_gdal_see_it() -> None:
    policy = RetryPolicy(attempts=4, backoff_s=0.25)
    retry = policy.urllib3()
    assert retry.total == 3 and set(retry.status_forcelist) == set(RETRY_STATUS) == {429, 500, 502, 503, 504}
    assert retry.allowed_methods is None  # POST searches are retried too
    assert policy.gdal_options() == {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "0.25",
                                     "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504"}
    # asset reads run under the default policy's GDAL options: nothing else in GDAL_REMOTE_OPTIONS retries
    for key, value in DEFAULT.gdal_options().items():
        assert GDAL_REMOTE_OPTIONS[key] == value


def test_one_cache_folder_definition(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    spec = SourceSpec(type="stac_api", href="https://example.com/stac")
    assert cache_dir(spec, "searches") == tmp_path / "cache" / "searches"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir(spec, "searches") == Path.home() / ".cache" / "eo-dataset" / "searches"
    assert cache_dir(spec.model_copy(update={"cache_dir": str(tmp_path / "mine")}), "searches") == tmp_path / "mine"
    assert cache_dir(spec.model_copy(update={"cache": False}), "searches") is None


def test_overpass_uses_the_shared_cache_folder_and_policy(monkeypatch, tmp_path) -> None:
    """(The stac_api source's side: tests/eo_dataset/sources/test_stac_api.py, it needs an API to open.)"""
    from eo_dataset.sources.overpass import OverpassQuery, OverpassSource

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    osm = OverpassSource(SourceSpec(type="overpass", retries=3, backoff_s=0))
    assert osm.cache_dir == str(tmp_path / "overpass")
    item = osm.search("osm", (9.52, 47.14, 9.53, 47.15), None, None)[0]
    assert OverpassQuery.of_item(item).retry == RetryPolicy(attempts=4, backoff_s=0)


# -- GDAL counts its own retries: a read is sent at most DEFAULT.attempts times ---------------------------------------
class _Flaky(RangeRequestHandler):
    """Static files with byte ranges; the first ``fail[path]`` requests of a path are answered with ``status``."""

    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def send_head(self):  # noqa: ANN201 - http.server's signature
        srv = self.server
        srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
        if srv.fail.get(self.path, 0) > 0:
            srv.fail[self.path] -= 1
            self.send_error(srv.status, "injected failure")
            return None
        return super().send_head()


@pytest.fixture
def flaky(tmp_path, monkeypatch) -> Iterator[Any]:
    loopback_only(monkeypatch)
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")  # the environment wins: the count stays, the waits shrink
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Flaky(*a, directory=str(tmp_path), **k))
    server.daemon_threads = True
    server.hits, server.fail, server.status = {}, {}, 503
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _tif(path: Path) -> np.ndarray:
    data = np.arange(64 * 64, dtype="uint16").reshape(64, 64)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16",
                       crs="EPSG:32632", transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(data, 1)
    return data


def test_gdal_reads_are_tried_at_most_the_policy_s_attempts(flaky, tmp_path) -> None:
    """A file that keeps answering 503: exactly ``attempts`` requests, then the read fails with the reason."""
    _tif(tmp_path / "down.tif")
    flaky.fail["/down.tif"] = 1000
    with dataset_cache() as cache, pytest.raises(SourceError, match=r"cannot open .*/down.tif: .*503"):
        cache.get(f"{flaky.url}/down.tif")
    assert flaky.hits["/down.tif"] == DEFAULT.attempts == int(gdal_options()["GDAL_HTTP_MAX_RETRY"]) + 1


def test_a_gdal_read_recovers_from_a_few_transient_answers(flaky, tmp_path) -> None:
    data = _tif(tmp_path / "busy.tif")
    flaky.fail["/busy.tif"] = DEFAULT.attempts - 1  # the last try gets through
    flaky.status = 429
    with dataset_cache() as cache:
        got = cache.read(f"{flaky.url}/busy.tif", lambda src: src.read(1))
    np.testing.assert_array_equal(got, data)
    assert flaky.fail["/busy.tif"] == 0


def test_a_missing_file_is_asked_for_once(flaky, tmp_path) -> None:
    with dataset_cache() as cache, pytest.raises(SourceError, match="cannot open"):
        cache.get(f"{flaky.url}/nowhere.tif")
    assert flaky.hits["/nowhere.tif"] == 1


def test_a_build_reads_a_failing_asset_at_most_attempts_times(flaky, tmp_path) -> None:
    """Through the engine: no retry around GDAL's, so a sample's 503ing asset costs ``attempts`` requests, not more."""
    from eo_dataset import parse_recipe
    from eo_dataset.engine.align import align_block
    from tests.eo_dataset.sources.test_remote import _cells, _feature_collection, _item, _recipe, _write

    (s,) = _cells((3, 0))
    _write(tmp_path / "asset.tif", s, 10)
    items = _feature_collection(tmp_path / "items.json", [_item("flaky", s, f"{flaky.url}/asset.tif")])
    flaky.fail["/asset.tif"] = 1000
    block = align_block(parse_recipe(_recipe(items)), [s])
    assert not block.arrays["img_available"][0]
    assert "503" in block.reasons[s.id]["img"], block.reasons
    assert flaky.hits["/asset.tif"] == DEFAULT.attempts
