"""Readers: the chosen items of one modality -> arrays on a sample's pixel grid.

GDAL does the reading and the resampling (a rasterio ``WarpedVRT`` onto the sample grid reads only the source
blocks the window needs); this module only mosaics items in priority order and derives pixel validity from nodata
and the collection's quality asset.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from eo_dataset.errors import SourceError
from eo_dataset.grid import Sample
from eo_dataset.recipe import ModalitySpec, QualitySpec
from eo_dataset.select import Choice


@dataclass
class Raster:
    """One modality of one sample: ``data`` (band, y, x) in the storage dtype and ``valid`` (y, x)."""

    data: np.ndarray
    valid: np.ndarray
    has_data: bool


class DatasetCache:
    """Open rasterio datasets, reused across the samples of one block (one open per file, not per sample)."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._open: dict[str, rasterio.DatasetReader] = {}

    def get(self, href: str) -> rasterio.DatasetReader:
        """The open dataset for ``href``."""
        if href not in self._open:
            try:
                self._open[href] = self._stack.enter_context(rasterio.open(href))
            except rasterio.errors.RasterioIOError as exc:
                raise SourceError(f"cannot open {href}: {exc}") from exc
        return self._open[href]

    def close(self) -> None:
        """Close every dataset."""
        self._stack.close()
        self._open.clear()


@contextmanager
def dataset_cache() -> Iterator[DatasetCache]:
    """A :class:`DatasetCache` closed on exit."""
    cache = DatasetCache()
    try:
        yield cache
    finally:
        cache.close()


def _warp(src: rasterio.DatasetReader, sample: Sample, resolution_m: float, band: int, resampling: str,
          nodata: float | None, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """One band on the sample grid, and where it has data."""
    height, width = sample.shape(resolution_m)
    src_nodata = src.nodata if src.nodata is not None else nodata
    # the VRT fills outside the source (and source nodata) with dst_nodata, so "has data" is exact
    dst_nodata = src_nodata if src_nodata is not None else (np.nan if dtype.kind == "f" else None)
    # without any nodata value an alpha band tells where the source has pixels
    kwargs = {"nodata": dst_nodata, "src_nodata": src_nodata} if dst_nodata is not None else {"add_alpha": True}
    with WarpedVRT(src, crs=sample.crs, transform=sample.transform(resolution_m), width=width, height=height,
                   resampling=Resampling[resampling], **kwargs) as vrt:
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


def read_modality(modality: ModalitySpec, choice: Choice, sample: Sample, cache: DatasetCache) -> Raster:
    """Read, reproject and mosaic the chosen items of one modality onto the sample grid.

    Items are taken in ``choice.items`` order: a pixel comes from the first item with data there. ``valid`` is
    True where a pixel has data and the quality asset (if the collection has one) calls it clear.
    """
    bands = modality.band_specs
    dtype = modality.storage_dtype
    shape = sample.shape(modality.resolution_m)
    data = np.full((len(bands), *shape), modality.fill_value, dtype=dtype)
    filled = np.zeros(shape, dtype=bool)
    clear = np.ones(shape, dtype=bool)
    nodata = modality.collection.nodata
    for item in choice.items:
        if filled.all():
            break
        layers, has = [], np.ones(shape, dtype=bool)
        for band in bands:
            asset = item.assets.get(band.asset_key)
            if asset is None:
                raise SourceError(f"item {item.id} has no asset {band.asset_key!r} (band {band.name}); "
                                  f"assets: {sorted(item.assets)}")
            arr, ok = _warp(cache.get(asset.get_absolute_href()), sample, modality.resolution_m, band.index,
                            modality.resampling_method, nodata, dtype)
            layers.append(arr)
            has &= ok
        take = has & ~filled
        if not take.any():
            continue
        for i, arr in enumerate(layers):
            data[i][take] = _cast(arr[take], dtype)
        q = modality.collection.quality
        if q is not None:
            qa_asset = item.assets.get(q.asset)
            if qa_asset is None:
                raise SourceError(f"item {item.id} has no quality asset {q.asset!r}; assets: {sorted(item.assets)}")
            qa, _ = _warp(cache.get(qa_asset.get_absolute_href()), sample, modality.resolution_m, 1, "nearest",
                          None, np.dtype("int64"))
            clear[take] = _clear(qa[take], q)
        filled |= take
    return Raster(data, filled & clear, bool(filled.any()))
