"""A new modality added purely in YAML (a collection file with a ``db`` transform and a display spec, next to a
user's recipe) builds, loads, tokenizes and renders with no code change: what a modality means is data.

The new collection, ``acme-sar``, is a made-up SAR product under a name no code has ever seen: its items are the
demo world's Sentinel-1 scenes, re-catalogued under that collection id with bands named ``hh``/``hv``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr

from eo_dataset import build, load_recipe
from eo_dataset.cube.schema import CubeMeta

COLLECTION = """\
name: acme-sar
title: ACME SAR (linear power)
kind: continuous
transform: db
display: {title: HH backscatter (dB), band: hh, colormap: magma, range: [-30, 5]}
temporal: dynamic
dtype: float32
nodata: -32768
units: linear power
licence: CC0-1.0
cloud_cover_property: null
bands:
  - {name: hh, asset: vv, resolution_m: 10}
  - {name: hv, asset: vh, resolution_m: 10}
"""

RECIPE = """\
name: acme
grid: {patch_px: 264, pixel_size_m: 10, origin: exact}
time: {anchor: s2l2a, start: 2023-06-01, end: 2023-08-31}
sources:
  demo: {type: static_catalog, href: %(catalog)s}
  acme: {type: static_catalog, href: %(acme)s}
modalities:
  s2l2a:
    collection: sentinel-2-l2a-demo
    source: demo
    resolution_m: 10
    bands: [B02, B03, B04]
    rule: {type: least_cloudy, max_cloud_cover: 50, min_coverage: 0.5}
  sar:
    collection: acme-sar
    source: acme
    resolution_m: 10
    rule: {type: nearest, tolerance_days: 7}
build: {shard_samples: 4}
"""


@pytest.fixture(scope="module")
def acme_cube(world: Path, demo_samples, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("acme")
    (folder / "collections").mkdir()
    (folder / "collections" / "acme-sar.yaml").write_text(COLLECTION)
    items = []
    for item in pystac.Catalog.from_file(str(world)).get_items(recursive=True):
        if item.collection_id != "sentinel-1-rtc":
            continue
        item = item.clone()
        item.id = item.id.replace("S1", "ACME")
        item.collection_id = "acme-sar"
        item.set_self_href(None)
        for asset in item.assets.values():
            asset.href = str(Path(asset.get_absolute_href() or asset.href).resolve())
        items.append(item)
    assert items, "the demo world has Sentinel-1 items to re-catalogue"
    (folder / "acme-items.json").write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
    (folder / "acme.yaml").write_text(RECIPE % {"catalog": world, "acme": folder / "acme-items.json"})
    recipe = load_recipe(folder / "acme.yaml")
    out = folder / "acme.zarr"
    build(recipe, demo_samples[:8], out, scheduler="sync")
    return out


def test_the_cube_carries_what_the_yaml_says(acme_cube: Path):
    meta = CubeMeta.from_attrs(xr.open_zarr(acme_cube).attrs)
    sar = meta.modalities["sar"]
    assert (sar.collection, sar.kind, sar.transform, sar.bands) == ("acme-sar", "continuous", "db", ("hh", "hv"))
    assert sar.display is not None and (sar.display.band, sar.display.colormap, sar.display.range) == \
        ("hh", "magma", (-30.0, 5.0))
    assert sar.nodata == -32768
    ds = xr.open_zarr(acme_cube)
    assert ds["sar_available"].values.any(), "the re-catalogued scenes were found and read"


def test_it_loads(acme_cube: Path):
    pytest.importorskip("torch")
    from eo_dataset.torch import CubeDataset

    ds = CubeDataset(acme_cube, ["sar"])
    i = int(np.flatnonzero(ds.availability[:, 0])[0])
    sample = ds[i]
    assert sample["sar"].shape == (2, 264, 264)
    assert ds.info["sar"].kind == "continuous" and ds.info["sar"].meta.transform == "db"
    valid = sample["sar_valid"].numpy()
    assert abs(float(sample["sar"][0].numpy()[valid].mean())) < 1.0, "normalised with the cube's own statistics"


def test_it_tokenizes(acme_cube: Path, tmp_path: Path):
    pytest.importorskip("torch")
    pytest.importorskip("vector_quantize_pytorch")
    from eo_models.modality import modality_from_cube
    from eo_models.tokenizers import Tokenizer
    from eo_models.tokens.store import tokenize_cube
    from eo_models.training.tokenizer import tokenizer_config

    cfg = modality_from_cube(acme_cube, "sar")
    assert cfg.transform == "db" and cfg.units == "dB", "modelled in dB because the YAML says so, not the name"
    assert all(-60 < m < 20 for m in cfg.mean), f"dB statistics, not linear ones: {cfg.mean}"
    tok = Tokenizer(tokenizer_config(acme_cube, "sar", "tiny").to_dict())
    out = tmp_path / "tokens.zarr"
    tokenize_cube(acme_cube, [tok], out, batch_size=4, progress=False)
    tokens = xr.open_zarr(out)
    have = tokens["sar_available"].values
    assert have.any() and (tokens["sar_tokens"].values[have] >= 0).all()
    meta = CubeMeta.from_attrs(tokens.attrs)
    assert meta.store == "tokens" and meta.modalities["sar"].transform == "db"


def test_it_renders(acme_cube: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    from eo_dataset.view.quicklook import quicklook

    ds = xr.open_zarr(acme_cube)
    meta = CubeMeta.from_attrs(ds.attrs)
    i = int(np.flatnonzero(ds["sar_available"].values)[0])
    fig = quicklook(meta.modalities["sar"], ds.isel(sample=i).load())
    ax, bar = fig.axes
    assert ax.get_title().startswith("sar: HH backscatter (dB)")
    assert bar.get_ylabel() == "hh (dB)"
    image = ax.get_images()[0]
    assert image.get_cmap().name.startswith("magma") and image.get_clim() == (-30.0, 5.0)
    values = image.get_array()
    finite = np.asarray(values[np.isfinite(values)])
    assert finite.size and math.isfinite(float(finite.mean())) and finite.max() < 20, "drawn in dB"
    fig.savefig(tmp_path / "sar.png")
    assert (tmp_path / "sar.png").stat().st_size > 1000
