"""Problems found in review, each pinned by a test."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest
import xarray as xr

from eo_dataset import RecipeError, build, load_recipe
from eo_dataset.cube.store import _public
from eo_dataset.engine.read import _cast


def test_sub_second_item_times_round_trip(tmp_path, demo_recipe, demo_samples, world) -> None:
    """Real STAC items carry sub-second datetimes; the cube must store and reopen them exactly."""
    items = list(pystac.Catalog.from_file(str(world)).get_items(recursive=True))
    for item in items:
        for asset in item.assets.values():
            asset.href = asset.get_absolute_href()
        if item.datetime is not None:
            item.datetime = item.datetime.replace(microsecond=123456)
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    out = tmp_path / "cube.zarr"
    build(demo_recipe.with_sources({"demo": str(coll)}), demo_samples[:8], out, scheduler="sync")
    ds = xr.open_zarr(out)
    t = ds.s2l2a_time.values[ds.s2l2a_available.values]
    assert len(t) > 0 and all(str(v).endswith(".123456000") for v in t)
    np.testing.assert_array_equal(ds.anchor_time.values, ds.s2l2a_time.values)


def test_integer_narrowing_clips_instead_of_wrapping() -> None:
    assert _cast(np.array([300, 7], dtype=np.uint16), np.dtype("uint8")).tolist() == [255, 7]
    assert _cast(np.array([-5.6, 2.5, 70000.0], dtype=np.float32), np.dtype("uint16")).tolist() == [0, 2, 65535]


def test_unknown_query_operator_is_a_recipe_error() -> None:
    data = load_recipe("demo").resolved()
    data["modalities"]["s2l2a"]["query"] = {"eo:cloud_cover": {"less": 20}}
    from eo_dataset import parse_recipe

    with pytest.raises(RecipeError, match=r"modalities\.s2l2a\.query.*unknown operator.*'less'"):
        parse_recipe(data)


def test_no_signed_url_reaches_the_attrs() -> None:
    resolved = {"sources": {"pc": {"type": "static_catalog", "href": "https://x.blob.core.windows.net/c/a.json?sv=1&sig=S"}}}
    assert _public(resolved)["sources"]["pc"]["href"] == "https://x.blob.core.windows.net/c/a.json"
