"""The corpus recipe's TerraMesh-parity modalities: Sentinel-1 GRD (against a real Planetary Computer item), NDVI
(derived) and captions; `eo-dataset plan 4m4eo` lists them."""

from __future__ import annotations

import json

import cql2
import pytest

from eo_dataset.spec.recipe import load_recipe
from tests.conftest import realdata


def test_s1grd_reads_the_real_grd_items_assets_and_keeps_dual_pol_iw() -> None:
    item = json.loads(realdata("stac", "planetary-computer", "sentinel-1-grd.json").read_text())[0]
    m = load_recipe("4m4eo").modalities["s1grd"]
    assert item["collection"] == m.collection.name == "sentinel-1-grd"
    for band in m.band_specs:  # every band's asset is a data COG of the item
        asset = item["assets"][band.asset_key]
        assert "data" in asset["roles"] and "cloud-optimized" in asset["type"]
    assert not any("projection" in e for e in item["stac_extensions"])  # placed by GCPs, as the spec says
    f = cql2.Expr(m.filter)
    assert f.matches(item["properties"])
    assert not f.matches({**item["properties"], "sar:polarizations": ["HH", "HV"]})
    assert not f.matches({**item["properties"], "sar:instrument_mode": "EW"})
    assert m.rule.type == "nearest" and m.rule.tolerance_days == 7 and m.resolution_m == 10


def test_the_corpus_recipe_has_ndvi_s1grd_and_captions() -> None:
    r = load_recipe("4m4eo")
    assert r.modalities["ndvi"].derived.expression == "(s2l2a.B08 - s2l2a.B04) / (s2l2a.B08 + s2l2a.B04)"
    assert r.modalities["ndvi"].storage_dtype == "int16" and r.captions is not None and r.captions.seed == 0
    assert "ndvi" not in r.read_modalities and "s1grd" in r.read_modalities


def test_a_product_s_citation_travels_into_the_cube_attrs() -> None:
    from eo_dataset.cube.schema import ModalityMeta

    r = load_recipe("4m4eo")
    attrs = ModalityMeta.from_spec("canopy", r.modalities["canopy"]).to_attrs()
    assert attrs["citation"] == r.modalities["canopy"].collection.citation and "doi" in attrs["citation"].lower()
    assert "citation" not in ModalityMeta.from_spec("dem", r.modalities["dem"]).to_attrs()  # none given: none made up


def test_plan_of_the_corpus_recipe_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    from eo_dataset.cli.main import main

    assert main(["plan", "4m4eo", "--region", "11.0,47.5,11.2,47.6"]) in (0, None)
    rows = {line.split("│")[1].strip() for line in capsys.readouterr().out.splitlines() if line.count("│") > 2}
    assert {"s2l2a", "ndvi", "s1rtc", "s1grd", "caption"} <= rows
