"""Readers: the chosen items of one modality -> arrays on a sample's pixel grid.

GDAL does the reading and the resampling (a rasterio ``WarpedVRT`` onto the sample grid reads only the source
blocks the window needs); this module only mosaics items in priority order and derives pixel validity from nodata
and the collection's quality asset.

Remote files (``http(s)://``, signed or not) are read by GDAL's ``/vsicurl/`` with HTTP range requests, under the
options in :data:`GDAL_REMOTE_OPTIONS` (no directory listing, merged ranges, retries); any of them set in the
environment wins. GDAL's own retries are the one retry policy's (:data:`eo_dataset.sources.retry.DEFAULT`): a range
request is sent at most ``attempts`` times and nothing here retries a read again. Signed hrefs exist only inside
:class:`DatasetCache`.

OpenStreetMap modalities are rasterised from the features their source gives for each chosen item
(:class:`~eo_dataset.sources.base.OsmExtractSource`); which kind of source that is, is not this module's business.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from eo_dataset.engine.select import Choice
from eo_dataset.errors import SourceError
from eo_dataset.sources.base import ItemSource, OsmExtractSource, PixelSource
from eo_dataset.sources.retry import DEFAULT as RETRY
from eo_dataset.sources.signing import Signed, Signer, is_auth_error, redact_urls
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import BandSpec, ModalitySpec, QualitySpec

T = TypeVar("T")

# GDAL configuration for reading cloud-optimized files over HTTP. Values set in the environment take precedence.
GDAL_REMOTE_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # never list the remote "folder" of a file (one GET per open)
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent tiles of a window in one range request
    "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2 multiplexing where the server offers it
    **RETRY.gdal_options(),  # retry 429/5xx answers and timeouts: GDAL_HTTP_MAX_RETRY, _RETRY_DELAY, _RETRY_CODES
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_TIMEOUT": "120",
    "GDAL_INGESTED_BYTES_AT_OPEN": "65536",  # one request reads a COG's header and tile index
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 2**20),
}
RESIGN_MARGIN_S = 120.0  # re-sign an open file whose token expires within this many seconds


def gdal_options() -> dict[str, str]:
    """:data:`GDAL_REMOTE_OPTIONS` less those set in the environment."""
    return {k: v for k, v in GDAL_REMOTE_OPTIONS.items() if k not in os.environ}


@dataclass
class Raster:
    """One modality of one sample: ``data`` (band, y, x) in the storage dtype and ``valid`` (y, x)."""

    data: np.ndarray
    valid: np.ndarray
    has_data: bool


class DatasetCache:
    """Open rasterio datasets, reused across the samples of one block (one open per file, not per sample).

    With a :class:`~eo_dataset.sources.signing.Signer`, hrefs are signed right before opening; a file whose token is
    about to expire is re-signed and reopened, and one that answers 401/403 is re-signed with a fresh token and retried
    once (:meth:`read`). Error messages name the unsigned href only.
    """

    def __init__(self) -> None:
        self._open: dict[str, tuple[rasterio.DatasetReader, Signed]] = {}

    def get(self, href: str, signer: Signer | None = None) -> rasterio.DatasetReader:
        """The open dataset for ``href`` (unsigned), signed with ``signer`` if given."""
        entry = self._open.get(href)
        if entry is not None and not entry[1].expires_within(RESIGN_MARGIN_S):
            return entry[0]
        if entry is not None:  # its token is about to expire: a new one, not the SDK's cached one
            self.drop(href)
            if signer is not None:
                signer.refresh(href)
        signed = signer.sign(href) if signer else Signed(href)
        try:
            with warnings.catch_warnings():  # a file without georeferencing is placed by placement() or refused
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                src = rasterio.open(signed.href)
        except rasterio.errors.RasterioIOError as exc:
            if signer is None or not is_auth_error(exc):
                raise SourceError(f"cannot open {href}: {redact_urls(str(exc))}") from None
            signer.refresh(href)  # the token was rejected: get a new one and try once more
            signed = signer.sign(href)
            try:
                src = rasterio.open(signed.href)
            except rasterio.errors.RasterioIOError as exc2:
                raise SourceError(f"cannot open {href}: access denied even with a fresh {signer.name} token: "
                                  f"{redact_urls(str(exc2))}") from None
        self._open[href] = (src, signed)
        return src

    def read(self, href: str, fn: Callable[[rasterio.DatasetReader], T], signer: Signer | None = None) -> T:
        """``fn(dataset)``; when a signed read is refused (expired token), re-sign, reopen and retry once."""
        src = self.get(href, signer)
        try:
            return fn(src)
        except SourceError:
            raise
        except Exception as exc:  # rasterio and GDAL (CPLE_*) errors
            if signer is None or not is_auth_error(exc):
                raise SourceError(f"cannot read {href}: {type(exc).__name__}: {redact_urls(str(exc))}") from None
        self.drop(href)
        signer.refresh(href)
        try:
            return fn(self.get(href, signer))
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot read {href}: access denied even with a fresh {signer.name} token: "
                              f"{redact_urls(str(exc))}") from None

    def drop(self, href: str) -> None:
        """Close and forget one dataset."""
        entry = self._open.pop(href, None)
        if entry is not None:
            entry[0].close()

    def close(self) -> None:
        """Close every dataset."""
        for href in list(self._open):
            self.drop(href)


@contextmanager
def dataset_cache() -> Iterator[DatasetCache]:
    """A :class:`DatasetCache` closed on exit, under the GDAL options for remote reads."""
    cache = DatasetCache()
    try:
        with rasterio.Env(**gdal_options()):
            yield cache
    finally:
        cache.close()


def _proj_value(item: pystac.Item, asset: pystac.Asset, key: str) -> Any:
    return asset.extra_fields.get(key, item.properties.get(key))


def placement(src: rasterio.DatasetReader, item: pystac.Item, asset: pystac.Asset) -> dict[str, Any]:
    """Where a file lies when the file itself does not say: CRS/transform from the item's projection extension.

    Files with a CRS, or with ground control points (e.g. Sentinel-1 GRD), need nothing.

    Raises:
        SourceError: neither the file nor the item says where the pixels are.
    """
    if src.crs is not None or src.gcps[0]:
        return {}
    code = _proj_value(item, asset, "proj:code")
    epsg = _proj_value(item, asset, "proj:epsg")
    crs = CRS.from_user_input(code) if code else CRS.from_epsg(int(epsg)) if epsg else None
    if crs is None:
        raise SourceError(f"item {item.id}: {redact_urls(asset.href)} has no CRS and the item has no projection "
                          "extension (proj:code / proj:epsg), so its pixels cannot be placed on the sample grid; "
                          "georeference the file or add the projection extension to the item")
    out: dict[str, Any] = {"src_crs": crs}
    transform = _proj_value(item, asset, "proj:transform")
    if src.transform.is_identity:
        if not transform:
            raise SourceError(f"item {item.id}: {redact_urls(asset.href)} has no geotransform and the item has no "
                              "proj:transform; add it to the item or georeference the file")
        out["src_transform"] = Affine(*transform[:6])
    return out


def _warp(src: rasterio.DatasetReader, sample: Sample, resolution_m: float, band: int, resampling: str,
          nodata: float | None, dtype: np.dtype, where: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One band on the sample grid, and where it has data."""
    height, width = sample.shape(resolution_m)
    src_nodata = src.nodata if src.nodata is not None else nodata
    # the VRT fills outside the source (and source nodata) with dst_nodata, so "has data" is exact
    dst_nodata = src_nodata if src_nodata is not None else (np.nan if dtype.kind == "f" else None)
    # without any nodata value an alpha band tells where the source has pixels
    kwargs = {"nodata": dst_nodata, "src_nodata": src_nodata} if dst_nodata is not None else {"add_alpha": True}
    with WarpedVRT(src, crs=sample.crs, transform=sample.transform(resolution_m), width=width, height=height,
                   resampling=Resampling[resampling], **kwargs, **(where or {})) as vrt:
        arr = vrt.read(band)
        if dst_nodata is None:
            has = vrt.read(vrt.count) > 0  # the alpha band
        elif isinstance(dst_nodata, float) and np.isnan(dst_nodata):
            has = ~np.isnan(arr)
        else:
            has = arr != dst_nodata
    return arr, has


def _clear(q: np.ndarray, rule: QualitySpec) -> np.ndarray:
    if rule.valid_values is not None:
        return np.isin(q, rule.valid_values)
    if rule.invalid_values is not None:
        return ~np.isin(q, rule.invalid_values)
    bits = 0
    for b in rule.invalid_bits or ():
        bits |= 1 << b
    return (q.astype(np.int64) & bits) == 0


def _cast(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "ui" and arr.dtype != dtype:  # never wrap around: round floats, clip to the dtype's range
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr) if arr.dtype.kind == "f" else arr, info.min, info.max)
    return arr.astype(dtype, copy=False)


def _asset(item: pystac.Item, key: str, what: str) -> pystac.Asset:
    asset = item.assets.get(key)
    if asset is None:
        raise SourceError(f"item {item.id} has no asset {key!r} ({what}); assets: {sorted(item.assets)}")
    return asset


def _read_band(cache: DatasetCache, item: pystac.Item, band: BandSpec, modality: ModalitySpec, sample: Sample,
               signer: Signer | None) -> tuple[np.ndarray, np.ndarray]:
    asset = _asset(item, band.asset_key, f"band {band.name}")

    def warp(src: rasterio.DatasetReader) -> tuple[np.ndarray, np.ndarray]:
        if band.index > src.count:
            raise SourceError(f"item {item.id}: asset {band.asset_key!r} has {src.count} band(s), but collection "
                              f"{modality.collection.name!r} reads band {band.name} from band {band.index}; the "
                              "item does not hold the bands the collection spec describes (check its 'bands')")
        return _warp(src, sample, modality.resolution_m, band.index, modality.resampling_method,
                     modality.collection.nodata, modality.storage_dtype, placement(src, item, asset))

    return cache.read(asset.get_absolute_href() or asset.href, warp, signer)


def _read_quality(cache: DatasetCache, item: pystac.Item, rule: QualitySpec, modality: ModalitySpec, sample: Sample,
                  signer: Signer | None) -> np.ndarray:
    asset = _asset(item, rule.asset, "quality")

    def warp(src: rasterio.DatasetReader) -> tuple[np.ndarray, np.ndarray]:
        return _warp(src, sample, modality.resolution_m, 1, "nearest", None, np.dtype("int64"),
                     placement(src, item, asset))

    return cache.read(asset.get_absolute_href() or asset.href, warp, signer)[0]


def read_modality(modality: ModalitySpec, choice: Choice, sample: Sample, cache: DatasetCache,
                  signer: Signer | None = None, source: ItemSource | None = None) -> Raster:
    """Read, reproject and mosaic the chosen items of one modality onto the sample grid.

    Items are taken in ``choice.items`` order: a pixel comes from the first item with data there. ``valid`` is
    True where a pixel has data and the quality asset (if the collection has one) calls it clear. Items that the
    collection's ``harmonize`` rule selects have their data bands shifted (e.g. Sentinel-2 baseline >= 04.00).

    Args:
        modality: The modality spec.
        choice: The chosen items, in priority order.
        sample: The sample whose grid the arrays are on.
        cache: Open datasets of the block.
        signer: Signs asset hrefs right before reading (None: read them as they are).
        source: The source the items came from; OpenStreetMap modalities need it (it loads their features).

    Raises:
        SourceError: an asset is missing, unreadable, refused, lacks the expected band, or cannot be placed.
    """
    if modality.collection.reads_osm:
        return read_osm(modality, choice, sample, source)
    if isinstance(source, PixelSource):  # pixels made by the source itself (synthetic): no file to read
        data, valid = source.pixels(choice.items[0], modality, sample)
        return Raster(data, valid, bool(valid.any()))
    bands = modality.band_specs
    dtype = modality.storage_dtype
    shape = sample.shape(modality.resolution_m)
    data = np.full((len(bands), *shape), modality.fill_value, dtype=dtype)
    filled = np.zeros(shape, dtype=bool)
    clear = np.ones(shape, dtype=bool)
    harmonize = modality.collection.harmonize
    for item in choice.items:
        if filled.all():
            break
        shift = harmonize if harmonize is not None and harmonize.applies(item.properties) else None
        layers, has = [], np.ones(shape, dtype=bool)
        for band in bands:
            arr, ok = _read_band(cache, item, band, modality, sample, signer)
            if shift is not None:
                arr = arr.astype(np.float64)
                arr[ok] += shift.add
                if shift.min_value is not None:
                    arr[ok] = np.maximum(arr[ok], shift.min_value)
            layers.append(arr)
            has &= ok
        take = has & ~filled
        if not take.any():
            continue
        for i, arr in enumerate(layers):
            data[i][take] = _cast(arr[take], dtype)
        q = modality.collection.quality
        if q is not None:
            clear[take] = _clear(_read_quality(cache, item, q, modality, sample, signer)[take], q)
        filled |= take
    return Raster(data, filled & clear, bool(filled.any()))


def read_osm(modality: ModalitySpec, choice: Choice, sample: Sample, source: ItemSource | None) -> Raster:
    """Rasterise the chosen OpenStreetMap extract(s): one band per tag filter; valid where an extract covers.

    The source turns each item into its features (:meth:`~eo_dataset.sources.base.OsmExtractSource.osm_extract`).

    Raises:
        SourceError: the source gives no OpenStreetMap features, or cannot load them.
    """
    from eo_dataset.sources.osm import Layer, rasterize

    if not isinstance(source, OsmExtractSource):
        raise SourceError(f"modality collection {modality.collection.name!r} has OpenStreetMap layers, but its "
                          f"source ({type(source).__name__}) gives no OpenStreetMap features; point the modality at an "
                          "OpenStreetMap source (docs/modalities/osm.md)")

    layers = [Layer(b.name, {k: v if isinstance(v, bool) else tuple(v) for k, v in b.osm.tags.items()},
                    b.osm.width_m) for b in modality.band_specs]
    keys = tuple(sorted({k for b in modality.band_specs for k in b.osm.tags}))
    nodata = int(modality.fill_value)
    data = np.full((len(layers), *sample.shape(modality.resolution_m)), nodata, np.uint8)
    valid = np.zeros(data.shape[1:], bool)
    for item in choice.items:  # several extracts: the first that covers a pixel wins
        extract = source.osm_extract(item, keys)
        raster, covered = rasterize(extract, layers, sample, modality.resolution_m, nodata)
        take = covered & ~valid
        data[:, take] = raster[:, take]
        valid |= take
    return Raster(data.astype(modality.storage_dtype, copy=False), valid, bool(valid.any()))
