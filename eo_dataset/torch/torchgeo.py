"""The cube as a TorchGeo ``GeoDataset``, so TorchGeo's samplers, transforms, datamodules and trainers work on it.

Why a ``GeoDataset`` and not a ``NonGeoDataset`` or a ``RasterDataset``: a cube's samples are georeferenced,
pre-chipped patches. ``NonGeoDataset`` would drop the geography (no samplers, no ``&``/``|`` with other rasters);
``RasterDataset`` is built around globbing files. A ``GeoDataset`` whose index holds one square per sample is
TorchGeo's model for pre-chipped geodata: ``PreChippedGeoSampler`` yields exactly one patch per sample, while
``RandomGeoSampler`` and ``GridGeoSampler`` cut windows inside the samples, and ``IntersectionDataset`` can join
the cube with any other ``GeoDataset``.

A ``GeoDataset`` has one CRS and one resolution; a cube's samples lie in their own UTM zones and modalities have
their own resolutions. Queries are therefore answered by warping each intersecting sample's pixels from its own
grid onto the query's grid with rasterio (GDAL), ``nearest`` by default, so values are never invented. A query
``[xmin:xmax, ymin:ymax]`` (TorchGeo's samplers give them in the dataset's CRS, without steps) returns
``round((xmax - xmin) / xres)`` x ``round((ymax - ymin) / yres)`` pixels of ``res`` with the top-left corner at
``(xmin, ymax)``, whatever zone the samples are in. For a sample in the dataset's CRS and a query on its pixel
lattice (``PreChippedGeoSampler``, or samplers with ``units=PIXELS``) this is an exact copy; coarser modalities are
repeated onto the finer grid.

A sample of another zone is a slightly turned (and scaled) square in the dataset's CRS, whose bounding box is
larger than the sample (2837 m instead of 2640 m for the demo cube's second zone). The index therefore holds, for
each sample, the axis-aligned square of the sample's size (``patch_px`` x the grid's pixel size) centred on the
sample's centre: its exact footprint for samples in the dataset's CRS. So every ``PreChippedGeoSampler`` query is
patch-sized and batches stack whatever zones they mix: for a sample of another zone it is that sample warped onto
a square of the dataset's grid, whose corners (about 4 % of the pixels here) lie outside the sample and come from
overlapping samples, else are not valid. ``RandomGeoSampler`` and ``GridGeoSampler`` draw their (fixed-size)
windows inside these squares. Where samples overlap, the one covering most of the query wins; the others only
fill pixels it leaves not valid.

Sample keys (TorchGeo's): ``image`` (float32 ``(C, H, W)``: the image modalities' bands in order, continuous ones
normalised with the cube's statistics unless ``normalize=False``, 0 where not valid), ``mask`` (the mask modality:
int64 class ids for categorical data, ``nodata`` where not valid, else float32 stored values, NaN where not valid;
``(H, W)`` for one band), ``crs`` and ``bounds`` (the query), as ``RasterDataset`` returns them. Batch with
``torchgeo.datasets.stack_samples``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import rasterio.warp
import shapely
import torch
from affine import Affine
from geopandas import GeoDataFrame
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice

from eo_dataset.errors import CubeError
from eo_dataset.torch.dataset import CubeDataset
from eo_dataset.torch.normalize import Normalize


class CubeGeoDataset(GeoDataset):
    """A cube as a TorchGeo ``GeoDataset`` of its samples (see the module docstring).

    Args:
        cube: Local path or fsspec URL of the cube.
        image: Modalities stacked (in this order) into ``image`` (default: every continuous modality but ``mask``).
        mask: Modality returned as ``mask`` (e.g. ``"lulc"``), or None.
        crs: The dataset's CRS (default: the UTM zone holding most of the samples).
        res: Resolution in metres (default: the finest of the modalities).
        normalize: Normalise ``image`` with the cube's statistics.
        resampling: How samples are warped onto query grids (a ``rasterio.enums.Resampling`` name).
        transforms: Called with each sample dict.
        storage_options, codec_pipeline: As for :class:`~eo_dataset.torch.CubeDataset`.

    Only samples that have every requested modality are indexed.

    Raises:
        CubeError: unknown modalities, a modality named twice, or no sample having them all.
    """

    def __init__(self, cube: str | os.PathLike[str], image: Sequence[str] | str | None = None,
                 mask: str | None = None, *, crs: CRS | str | int | None = None, res: float | None = None,
                 normalize: bool = True, resampling: str = "nearest",
                 transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 storage_options: dict[str, Any] | None = None, codec_pipeline: str = "auto") -> None:
        probe = CubeDataset(cube, normalize=False, storage_options=storage_options, codec_pipeline=codec_pipeline)
        if image is None:
            image = [m for m in probe.modalities if probe.info[m].kind == "continuous" and m != mask]
        elif isinstance(image, str):
            image = [image]
        self.image_modalities = list(image)
        self.mask_modality = mask
        names = self.image_modalities + ([mask] if mask else [])
        if mask in self.image_modalities:
            raise CubeError(f"{mask!r} is both the mask and an image modality; name it once")
        if resampling not in Resampling.__members__:
            raise CubeError(f"resampling must be one of {sorted(Resampling.__members__)}, found {resampling!r}")
        self.resampling = Resampling[resampling]
        self.cube = CubeDataset(cube, names, normalize=False, storage_options=storage_options,
                                codec_pipeline=codec_pipeline)
        self.normalizer: Normalize | None = Normalize.from_cube(self.cube.attrs, self.image_modalities) \
            if normalize and self.image_modalities else None
        self.transforms = transforms
        self.paths = str(cube)

        have = np.flatnonzero(self.cube.availability.all(axis=1))
        if have.size == 0:
            raise CubeError(f"no sample of the cube has all of {names}; ask for fewer modalities")
        epsgs = self.cube.epsg[have]
        if crs is None:
            counts = Counter(int(e) for e in epsgs)
            crs = CRS.from_epsg(min(counts, key=lambda e: (-counts[e], e)))
        else:
            crs = CRS.from_user_input(crs)
        self._res = (float(res), float(res)) if res else (min(self.cube.info[m].resolution_m for m in names),) * 2

        times = []
        for t in self.cube.time[have]:
            if np.isnan(t):
                times.append((pd.Timestamp.min, pd.Timestamp.max))
            else:
                day = pd.Timestamp(t, unit="s").floor("D")
                times.append((day, day + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)))
        self._samples = have
        self._times = pd.IntervalIndex.from_tuples(times, closed="both", name="datetime")
        self._build_index(crs)

    @GeoDataset.crs.setter  # type: ignore[attr-defined, untyped-decorator]
    def crs(self, new_crs: CRS | str | int) -> None:
        """Re-index the samples in ``new_crs`` (as ``IntersectionDataset`` does to its second dataset)."""
        new_crs = CRS.from_user_input(new_crs)
        if new_crs != self.crs:
            self._build_index(new_crs)

    def _build_index(self, crs: CRS) -> None:
        """The index (one patch-sized, axis-aligned square per sample, see the module docstring) and the samples'
        true footprints in ``crs``."""
        cube, have = self.cube, self._samples
        size = cube.patch_px * cube.base_m
        x0, y0, epsg = cube.x0[have].astype(np.float64), cube.y0[have].astype(np.float64), cube.epsg[have]
        footprints = shapely.box(x0, y0 - size, x0 + size, y0)  # exact where the sample is in ``crs``
        squares = footprints.copy()
        t = np.linspace(0.0, size, 9)[:-1]  # the edges, densified: a UTM square is no square in another zone
        ring_x = np.concatenate([t, np.full_like(t, size), size - t, np.zeros_like(t)])
        ring_y = np.concatenate([np.zeros_like(t), -t, np.full_like(t, -size), -size + t])
        for e in np.unique(epsg):
            if CRS.from_epsg(int(e)) == crs:
                continue
            at = np.flatnonzero(epsg == e)
            to = Transformer.from_crs(int(e), crs, always_xy=True)
            xs, ys = to.transform(x0[at, None] + ring_x, y0[at, None] + ring_y)
            footprints[at] = shapely.polygons(np.stack([xs, ys], axis=-1))
            # indexed by the square of the sample's size around its centre: every PreChippedGeoSampler query is
            # then patch-sized, in any zone (the sample's true footprint here is a slightly turned square)
            cx, cy = to.transform(x0[at] + size / 2, y0[at] - size / 2)
            squares[at] = shapely.box(cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        self._footprints = footprints
        self._tree = shapely.STRtree(footprints)
        self.index = GeoDataFrame({"sample": have, "sample_id": cube.sample_ids[have].astype(object)},
                                  index=self._times.copy(), geometry=list(squares), crs=crs)

    def __getitem__(self, query: GeoSlice) -> dict[str, Any]:
        """The window ``query`` (x, y and optionally t slices with steps = resolution), warped from the samples.

        Raises:
            IndexError: no indexed sample intersects the query.
        """
        x, y, t = self._disambiguate_slice(query)
        window = shapely.box(x.start, y.start, x.stop, y.stop)
        rows = np.sort(self._tree.query(window, predicate="intersects"))
        rows = rows[self._times[rows].overlaps(pd.Interval(t.start, t.stop, closed="both"))]
        area = shapely.area(shapely.intersection(self._footprints[rows], window))
        order = np.argsort(-area, kind="stable")  # where samples overlap, the one covering most of the window wins
        hits = self._samples[rows[order][area[order] > 0]]
        if hits.size == 0:
            raise IndexError(f"query {query} does not intersect any sample of the cube (bounds {self.bounds})")
        width, height = round((x.stop - x.start) / x.step), round((y.stop - y.start) / y.step)
        dst = {"transform": Affine(x.step, 0.0, x.start, 0.0, -y.step, y.stop), "crs": self.crs}
        names = self.image_modalities + ([self.mask_modality] if self.mask_modality else [])
        out = {m: np.zeros((len(self.cube.info[m].bands), height, width), dtype=self.cube.info[m].dtype)
               for m in names}
        valid = {m: np.zeros((height, width), dtype=bool) for m in names}
        for i in hits:
            s = self.cube[int(i)]
            for m in names:
                res = self.cube.info[m].resolution_m
                src = {"src_transform": Affine(res, 0.0, self.cube.x0[i], 0.0, -res, self.cube.y0[i]),
                       "src_crs": CRS.from_epsg(int(self.cube.epsg[i]))}
                data = np.zeros_like(out[m])
                ok = np.zeros((height, width), dtype=np.uint8)
                rasterio.warp.reproject(s[m].numpy(), data, resampling=self.resampling,
                                        dst_transform=dst["transform"], dst_crs=dst["crs"], **src)
                rasterio.warp.reproject(s[f"{m}_valid"].numpy().astype(np.uint8), ok, resampling=Resampling.nearest,
                                        dst_transform=dst["transform"], dst_crs=dst["crs"], **src)
                take = ok.astype(bool) & ~valid[m]
                out[m][:, take] = data[:, take]
                valid[m] |= take
        sample: dict[str, Any] = {"crs": self.crs, "bounds": query}
        if self.image_modalities:
            parts = []
            for m in self.image_modalities:
                v = torch.from_numpy(valid[m])
                x_m = torch.from_numpy(out[m])
                if self.normalizer is not None and m in self.normalizer.modalities:
                    parts.append(self.normalizer.normalize(m, x_m, v))
                else:
                    parts.append(x_m.to(torch.float32).masked_fill_(~v, 0.0))
            sample["image"] = torch.cat(parts)
        if self.mask_modality:
            m = self.mask_modality
            info = self.cube.info[m]
            if info.kind == "categorical":
                fill = 0 if np.isnan(info.nodata) else int(info.nodata)
                target = torch.from_numpy(out[m].astype(np.int64)).masked_fill_(~torch.from_numpy(valid[m]), fill)
            else:
                target = torch.from_numpy(out[m].astype(np.float32)).masked_fill_(~torch.from_numpy(valid[m]),
                                                                                   float("nan"))
            sample["mask"] = target.squeeze(0) if target.shape[0] == 1 else target
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
