"""Captions state only what each sample's arrays support, deterministically, in varied phrasing."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from eo_dataset import Grid
from eo_dataset.engine.captions import Facts, TemplateCaptioner, facts, latlon_words, place_name

CLASSES = ["water", "trees", "flooded vegetation", "crops", "built area", "bare ground", "snow/ice", "clouds",
           "rangeland"]


@pytest.fixture(scope="module")
def ds(demo_cube):
    return xr.open_zarr(demo_cube).load()


def _arrays(ds: xr.Dataset, i: int) -> dict:
    return {k: ds[k].values[i] for k in ds.data_vars} | {"anchor_time": ds.anchor_time.values[i]}


def test_every_claim_matches_the_arrays(ds: xr.Dataset, demo_recipe) -> None:
    grid, cap = Grid(), TemplateCaptioner(seed=0)
    for i, sid in enumerate(ds.sample_id.values):
        sample, arrays = grid.sample(str(sid)), _arrays(ds, i)
        f = facts(sample, arrays, demo_recipe)
        text = cap.caption(f)
        lulc_ok = bool(ds.lulc_available.values[i])
        assert any(c in text for c in CLASSES) == (lulc_ok and f.land_cover is not None), text
        if f.land_cover:
            valid = ds.lulc_valid.values[i]
            ids, counts = np.unique(ds.lulc.values[i, 0][valid], return_counts=True)
            top = ids[np.argmax(counts)]
            name = ds.lulc.attrs["classes"][str(int(top))]
            assert f.land_cover[0][0] == name
            assert f"{round(100 * counts.max() / counts.sum())}%" in text
        if ds.dem_available.values[i]:
            z = ds.dem.values[i, 0][ds.dem_valid.values[i]]
            assert f"{round(float(z.mean()))} m" in text and f"{round(float(z.max() - z.min()))} m" in text
        else:
            assert "sea level" not in text and "Elevation" not in text
        if ds.canopy_available.values[i]:
            h = ds.canopy.values[i, 0][ds.canopy_valid.values[i]].astype(float)
            assert f"{round(100 * float((h >= 2).mean()))}%" in text
        else:
            assert "anopy" not in text and "Trees cover" not in text
        if ds.s2l2a_available.values[i]:
            month = str(np.datetime_as_string(ds.anchor_time.values[i], unit="M"))
            assert {"2023-06": "June", "2023-07": "July", "2023-08": "August"}[month] in text and "summer" in text
        else:
            assert "Seen in" not in text and "Imaged in" not in text and "cloud" not in text


def test_deterministic_and_varied(ds: xr.Dataset, demo_recipe) -> None:
    grid = Grid()
    samples = [(grid.sample(str(s)), _arrays(ds, i)) for i, s in enumerate(ds.sample_id.values)]
    a = [TemplateCaptioner(seed=1)(s, arr, demo_recipe) for s, arr in samples]
    b = [TemplateCaptioner(seed=1)(s, arr, demo_recipe) for s, arr in samples]
    c = [TemplateCaptioner(seed=2)(s, arr, demo_recipe) for s, arr in samples]
    assert a == b and a != c
    openings = {re.split(r"[ (]", t, maxsplit=1)[0] for t in a}
    assert len(openings) >= 3  # several templates in use


def test_nothing_available_says_so() -> None:
    f = Facts("1U_1R_0_0", 0.02, 0.01, available=())
    text = TemplateCaptioner().caption(f)
    assert text.startswith("No data is available") and "nothing can be said" in text


def test_place_only_when_a_town_is_near() -> None:
    assert place_name(47.83, 11.95).startswith("near ") and "Germany" in place_name(47.83, 11.95)
    assert place_name(0.0, -30.0) is None  # mid-Atlantic: no town within 50 km
    assert latlon_words(-25.32, -48.11) == "at 25.32 S, 48.11 W"
