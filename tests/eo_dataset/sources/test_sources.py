"""Sources without a server: static catalogs, stac-geoparquet snapshots, query/CQL2 evaluation, source specs,
the Sentinel-2 harmonisation rule and the bundled real-collection catalogs."""

from __future__ import annotations

import datetime as dt
import json
import typing

import numpy as np
import pytest
import xarray as xr

from eo_dataset import RecipeError, SourceError, build, load_recipe, parse_recipe
from eo_dataset.pipeline.snapshot import snapshot, snapshot_metadata, write_snapshot
from eo_dataset.sources import (
    SOURCES,
    CqlFilter,
    GeoParquetSource,
    OsmExtractSource,
    StaticCatalogSource,
    is_snapshot,
    matches_query,
    open_source,
)
from eo_dataset.sources.base import query_to_cql2
from eo_dataset.spec.recipe import HarmonizeSpec, SourceSpec, catalogs_dir
from tests.conftest import REALDATA

WORLD = (-180.0, -90.0, 180.0, 90.0)
SUMMER = (dt.datetime(2023, 6, 1, tzinfo=dt.UTC), dt.datetime(2023, 8, 31, 23, 59, 59, tzinfo=dt.UTC))


def test_source_spec_types_and_options() -> None:
    assert SourceSpec(type="geoparquet", href="x.parquet").type == "geoparquet"
    api = SourceSpec(type="stac_api", href="https://example.com/stac", sign="planetary_computer", page_size=500)
    assert api.page_size == 500 and api.cache and hash(api)  # hashable: sources are cached per spec
    with pytest.raises(ValueError, match="page_size, retries only apply to type 'stac_api'"):
        SourceSpec(type="static_catalog", href="c.json", page_size=5, retries=1)
    with pytest.raises(ValueError, match="planetary_computer"):
        SourceSpec(type="stac_api", href="https://x", sign="aws")
    assert is_snapshot(SourceSpec(type="stac_api", href="/data/items.parquet"))
    assert not is_snapshot(SourceSpec(type="stac_api", href="https://example.com/stac"))


def test_the_registry_has_one_entry_per_source_type_of_the_recipe() -> None:
    """Every ``type`` a recipe accepts opens through the registry, and the registry holds no type a recipe refuses."""
    accepted = set(typing.get_args(SourceSpec.model_fields["type"].annotation))
    assert set(SOURCES) == accepted, "a source type needs its registry entry and its name in SourceSpec.type"
    for name, cls in SOURCES.items():
        assert callable(cls.from_spec) and isinstance(cls.reads_snapshots, bool), name
        assert callable(cls.search), name
    assert {n for n, c in SOURCES.items() if c.reads_snapshots} == {"static_catalog", "stac_api", "geoparquet"}
    osm_types = {"osm_file", "overpass", "osm_extract_index"}
    assert {n for n, c in SOURCES.items() if issubclass(c, OsmExtractSource)} == osm_types


def test_a_new_source_type_is_one_class_and_one_entry(monkeypatch, tmp_path) -> None:
    class Listed:  # a made-up type: a search over a fixed list of items
        reads_snapshots = True

        def __init__(self, href: str) -> None:
            self.href = href

        @classmethod
        def from_spec(cls, spec: SourceSpec) -> Listed:
            return cls(spec.href)

        def search(self, collection, bbox, start, end, query=None, filter=None) -> list:
            return []

    monkeypatch.setitem(SOURCES, "listed", Listed)
    spec = SourceSpec.model_construct(type="listed", href=str(tmp_path / "list.txt"))
    source = open_source(spec)
    assert isinstance(source, Listed) and source.href == spec.href
    assert not is_snapshot(spec) and is_snapshot(spec.model_copy(update={"href": "x.parquet"}))
    with pytest.raises(SourceError, match=r"source type 'ftp_server' is not supported; expected one of \["):
        open_source(SourceSpec.model_construct(type="ftp_server", href="x"))


def test_snapshots_stand_in_only_for_stac_item_sources(tmp_path) -> None:
    """An href ending in .parquet is a snapshot for the STAC item sources; a tile index may be GeoParquet itself."""
    for kind in ("static_catalog", "stac_api", "geoparquet"):
        assert is_snapshot(SourceSpec(type=kind, href="/data/items.parquet")), kind
    assert is_snapshot(SourceSpec(type="geoparquet", href="/data/snapshots/"))  # a folder of files
    assert not is_snapshot(SourceSpec(type="tile_index", href="/data/tiles.parquet"))
    assert not is_snapshot(SourceSpec(type="osm_file", href="/data/x.osm.pbf"))
    with pytest.raises(SourceError, match="tile index .* not found"):  # opened as a tile index, not a snapshot
        open_source(SourceSpec(type="tile_index", href=str(tmp_path / "tiles.parquet")))


def test_recipe_filter_is_validated_and_stored_as_cql2_json() -> None:
    data = load_recipe("demo").resolved()
    data["modalities"]["landsat"]["filter"] = "platform IN ('landsat-8', 'landsat-9') AND eo:cloud_cover < 30"
    recipe = parse_recipe(data)
    assert recipe.modalities["landsat"].filter["op"] == "and"
    assert recipe.hash != load_recipe("demo").hash  # the filter decides which items: part of the recipe
    data["modalities"]["landsat"]["filter"] = "eo:cloud_cover <"
    with pytest.raises(RecipeError, match=r"modalities\.landsat\.filter: .*not a valid CQL2 expression at 1:17"):
        parse_recipe(data)


PINNED = {  # an inline recipe (no bundled files), whose hash was computed with the recipe code before issue 4
    "name": "pinned",
    "time": {"anchor": "s2", "start": dt.date(2021, 1, 1), "end": dt.date(2021, 12, 31)},
    "sources": {"s": {"type": "static_catalog", "href": "items.json"}},
    "modalities": {
        "s2": {"collection": {"name": "sentinel-2-l2a", "dtype": "uint16", "nodata": 0, "scale": 0.0001,
                              "units": "reflectance", "licence": "x",
                              "quality": {"asset": "SCL", "valid_values": [4, 5]},
                              "bands": [{"name": "B04"}, {"name": "B08"}]},
               "source": "s", "resolution_m": 10, "query": {"eo:cloud_cover": {"lt": 20}},
               "rule": {"type": "least_cloudy", "max_cloud_cover": 30}},
        "dem": {"collection": {"name": "cop-dem-glo-30", "temporal": "static", "dtype": "float32",
                               "units": "m", "licence": "y", "bands": [{"name": "elevation", "asset": "data"}]},
                "source": "s", "resolution_m": 30, "rule": {"type": "static"}},
    },
}


def test_new_fields_leave_existing_recipe_hashes_alone() -> None:
    """``filter`` and ``harmonize`` are left out of the dump while unset: recipes without them keep their hash."""
    recipe = parse_recipe(PINNED)
    resolved = recipe.resolved()
    assert "filter" not in resolved["modalities"]["s2"]
    assert "harmonize" not in resolved["modalities"]["s2"]["collection"]
    assert recipe.hash == "8449d8782674f438"  # as before: cubes built earlier still resume
    assert parse_recipe(resolved) == recipe
    with_filter = parse_recipe({**PINNED, "modalities": {**PINNED["modalities"], "s2": {
        **PINNED["modalities"]["s2"], "filter": "platform = 'Sentinel-2A'"}}})
    assert with_filter.hash != recipe.hash and parse_recipe(with_filter.resolved()) == with_filter


@pytest.mark.parametrize(("version", "shifted"), [("02.14", False), ("03.01", False), ("04.00", True),
                                                  ("05.10", True), ("10.0", True), ("n/a", False), (None, False)])
def test_harmonize_applies_from_baseline_04_00(version, shifted) -> None:
    rule = load_recipe("4m4eo").modalities["s2l2a"].collection.harmonize
    assert rule == HarmonizeSpec(property="s2:processing_baseline", min_version="04.00", add=-1000, min_value=1)
    props = {} if version is None else {"s2:processing_baseline": version}
    assert rule.applies(props) is shifted


def test_query_and_cql2_agree_on_items() -> None:
    props = {"eo:cloud_cover": 12.5, "platform": "landsat-9", "n": 3}
    query = {"eo:cloud_cover": {"lt": 20, "gte": 10}, "platform": {"in": ["landsat-8", "landsat-9"]}, "n": {"neq": 4}}
    assert matches_query(props, query)
    import pystac

    item = pystac.Item("x", None, None, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), props)
    assert CqlFilter(query_to_cql2(query)).matches(item)
    assert not CqlFilter(query_to_cql2({"eo:cloud_cover": {"gt": 20}})).matches(item)
    assert not CqlFilter(query_to_cql2({"missing": {"eq": 1}})).matches(item)  # absent property: no match
    assert not matches_query(props, {"missing": {"eq": 1}})
    with pytest.raises(SourceError, match="unknown operator 'like'"):
        query_to_cql2({"platform": {"like": "x"}})


def test_snapshot_round_trip_searches_like_the_catalog(world, tmp_path) -> None:
    """stac-geoparquet keeps every item: the same search on the snapshot and on the catalog gives the same ids."""
    static = StaticCatalogSource(str(world))
    items = [i for c in static.collections for i in static.search(c, WORLD, None, None)]
    path = write_snapshot(items, tmp_path / "all.parquet", metadata={"note": "demo"})
    snap = GeoParquetSource(str(path))
    assert snap.collections == static.collections and snapshot_metadata(path) == {"note": "demo"}
    cases = [
        ("sentinel-2-l2a", (11.9, 47.78, 12.0, 47.85), SUMMER, None, None),
        ("sentinel-2-l2a", WORLD, SUMMER, {"eo:cloud_cover": {"lt": 10}}, None),
        ("sentinel-1-rtc", WORLD, (None, None), None, {"op": "=", "args": [{"property": "sat:orbit_state"},
                                                                          "descending"]}),
        ("io-lulc-annual-v02", WORLD, (dt.datetime(2023, 5, 1, tzinfo=dt.UTC), None), None, None),
        ("cop-dem-glo-30", (12.1, 47.8, 12.2, 47.9), (None, None), None, None),
        ("nope", WORLD, (None, None), None, None),
    ]
    for collection, bbox, (start, end), query, cql in cases:
        want = [i.id for i in static.search(collection, bbox, start, end, query, cql)]
        got = [i.id for i in snap.search(collection, bbox, start, end, query, cql)]
        assert sorted(got) == sorted(want), collection
    one = snap.search("sentinel-2-l2a", WORLD, *SUMMER)[0]
    orig = next(i for i in items if i.id == one.id)
    assert one.geometry == orig.geometry and one.datetime == orig.datetime
    assert {k: a.href for k, a in one.assets.items()} == {k: a.href for k, a in orig.assets.items()}


def test_build_from_a_snapshot_alone_equals_the_catalog_build(world, demo_recipe, demo_samples, demo_cube,
                                                              tmp_path) -> None:
    samples = demo_samples[:8]
    report = snapshot(demo_recipe, samples, tmp_path / "items.parquet")
    assert report.failed == {} and report.n_searches == len(demo_recipe.modalities)  # one block of 8
    assert snapshot_metadata(report.path)["recipe_hash"] == demo_recipe.hash
    frozen = demo_recipe.with_sources({"demo": str(report.path)})
    assert isinstance(open_source(frozen.sources["demo"]), GeoParquetSource)
    build(frozen, samples, tmp_path / "snap.zarr", scheduler="sync")
    a, b = xr.open_zarr(tmp_path / "snap.zarr"), xr.open_zarr(demo_cube).isel(sample=slice(0, 8))
    for m in demo_recipe.modalities:
        assert a[f"{m}_item"].values.tolist() == b[f"{m}_item"].values.tolist(), m
        np.testing.assert_array_equal(a[m].values, b[m].values)
        np.testing.assert_array_equal(a[f"{m}_valid"].values, b[f"{m}_valid"].values)


def test_snapshot_errors_are_clear(tmp_path) -> None:
    with pytest.raises(SourceError, match="nothing to snapshot"):
        write_snapshot([], tmp_path / "empty.parquet")
    with pytest.raises(SourceError, match="snapshot 'missing.parquet' not found.*eo-dataset snapshot"):
        GeoParquetSource("missing.parquet")
    bad = tmp_path / "bad.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}), bad)
    with pytest.raises(SourceError, match=r"not a stac-geoparquet file: columns \['id', 'collection'"):
        GeoParquetSource(str(bad))


# -- the bundled real-collection catalogs ------------------------------------------------------------------------------
REAL = {  # collection file -> (STAC collection id of the real items, asset keys the bands read)
    "sentinel-2-l2a": "sentinel-2-l2a", "sentinel-1-rtc": "sentinel-1-rtc", "sentinel-1-grd": "sentinel-1-grd",
    "landsat-c2-l2": "landsat-c2-l2", "cop-dem-glo-30": "cop-dem-glo-30", "nasadem": "nasadem",
    "alos-dem": "alos-dem", "esa-worldcover": "esa-worldcover", "io-lulc-annual-v02": "io-lulc-annual-v02",
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_collection_specs_fit_the_real_planetary_computer_items(name) -> None:
    """Every band's and the quality rule's asset exists in the real items, and nodata/dtype agree with them."""
    path = REALDATA / "stac" / "planetary-computer" / f"{REAL[name]}.json"
    if not path.is_file():
        pytest.skip(f"real data not found at {path}")
    data = {"name": "check", "time": {"anchor": "m", "start": dt.date(2021, 1, 1), "end": dt.date(2021, 12, 31)},
            "sources": {"s": {"type": "static_catalog", "href": "x.json"}},
            "modalities": {"m": {"collection": name, "source": "s", "resolution_m": 30,
                                 "rule": {"type": "least_cloudy"}}}}
    collection = parse_recipe(data, base_dir=catalogs_dir()).modalities["m"].collection \
        if name in ("sentinel-2-l2a", "sentinel-1-rtc", "sentinel-1-grd", "landsat-c2-l2") else None
    if collection is None:  # static/annual collections cannot be an anchor: check the spec file on its own
        import yaml

        from eo_dataset.spec.recipe import CollectionSpec

        collection = CollectionSpec.model_validate(yaml.safe_load((catalogs_dir() / "collections" /
                                                                   f"{name}.yaml").read_text()))
    assert collection.name == REAL[name]
    for item in json.loads(path.read_text()):
        keys = [b.asset_key for b in collection.bands] + ([collection.quality.asset] if collection.quality else [])
        assert set(keys) <= set(item["assets"]), (item["id"], sorted(item["assets"]))
        for band in collection.bands:
            for rb in item["assets"][band.asset_key].get("raster:bands", [])[:1]:
                if "nodata" in rb:
                    assert rb["nodata"] == collection.nodata, (name, band.name)
                if "data_type" in rb:
                    assert rb["data_type"] == collection.dtype, (name, band.name)
        if collection.cloud_cover_property:
            assert collection.cloud_cover_property in item["properties"]
    if collection.kind == "categorical":
        assert collection.classes


def test_4m4eo_recipe_is_the_papers_corpus() -> None:
    r = load_recipe("4m4eo")
    assert r.time.anchor == "s2l2a" and r.modalities["s2l2a"].rule.type == "least_cloudy"
    assert r.modalities["s1rtc"].rule.tolerance_days == 7 and r.modalities["landsat"].rule.tolerance_days == 16
    assert {m: r.modalities[m].rule.type for m in ("dem", "lulc", "worldcover")} == {
        "dem": "static", "lulc": "same_year", "worldcover": "same_year"}
    pc = r.sources["pc"]
    assert pc.type == "stac_api" and pc.sign == "planetary_computer"
    assert r.modalities["s2l2a"].collection.harmonize is not None
    assert r.modalities["landsat"].collection.quality.invalid_bits == (0, 1, 2, 3, 4)
    assert r.modalities["landsat"].collection.scale == 0.0000275 and r.modalities["landsat"].collection.offset == -0.2
    assert r.modalities["worldcover"].resampling_method == "nearest"
    assert r.modalities["s1rtc"].filter == {"op": "=", "args": [{"property": "sar:instrument_mode"}, "IW"]}


def test_tile_index_as_geoparquet_equals_geojson(world, tmp_path) -> None:
    """The canopy tile index as GeoParquet (as global products publish theirs) gives the same tiles and times."""
    import geopandas

    from eo_dataset.sources.tile_index import TileIndexSource

    geojson = world.parent / "canopy-height" / "index.geojson"  # world: the catalog.json
    gdf = geopandas.read_file(geojson)
    parquet = tmp_path / "index.parquet"
    gdf.assign(href=[str((geojson.parent / h).resolve()) for h in gdf["href"]]).to_parquet(parquet)
    a, b = TileIndexSource(str(geojson)), TileIndexSource(str(parquet))
    bbox = gdf.total_bounds.tolist()
    got_a = {(i.id, i.datetime, i.assets["data"].href) for i in a.search("canopy-height", bbox, None, None)}
    got_b = {(i.id, i.datetime, i.assets["data"].href) for i in b.search("canopy-height", bbox, None, None)}
    assert got_a == got_b and len(got_a) == len(gdf)
