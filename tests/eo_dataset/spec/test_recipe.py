"""Recipes: the bundled demo recipe resolves, and every bad recipe fails with the key path, what was found and what
was expected."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from eo_dataset import EODatasetError, Recipe, RecipeError, load_recipe, parse_recipe
from eo_dataset.spec.recipe import catalogs_dir

CATALOGS = catalogs_dir()
DEMO = yaml.safe_load((CATALOGS / "demo.yaml").read_text())
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def demo_data() -> dict[str, Any]:
    """A fresh deep copy of the demo recipe as read from YAML."""
    return copy.deepcopy(DEMO)


def collection_data(name: str) -> dict[str, Any]:
    """A bundled collection spec as read from YAML (for inline collections)."""
    return yaml.safe_load((CATALOGS / "collections" / f"{name}.yaml").read_text())


def mutated(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """The demo recipe with one change applied."""
    data = demo_data()
    change(data)
    return data


def set_in(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change setting ``data[path[0]]...[path[-1]] = value``."""

    def change(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def rename_modality(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["modalities"][new] = data["modalities"].pop(old)

    return change


def problems(exc: pytest.ExceptionInfo[RecipeError]) -> list[str]:
    """The ``  - ...`` problem lines of a RecipeError message."""
    return [line[4:] for line in str(exc.value).splitlines() if line.startswith("  - ")]


# ---------------------------------------------------------------------------------------------------------------
# The bundled demo recipe


@pytest.fixture(scope="module")
def demo() -> Recipe:
    return load_recipe(CATALOGS / "demo.yaml")


def test_demo_recipe_resolves(demo: Recipe) -> None:
    assert demo.name == "demo"
    assert demo.time.anchor == "s2l2a"
    assert demo.modalities[demo.time.anchor].rule.type == "least_cloudy"
    assert set(demo.modalities) == {"s2l2a", "s1rtc", "landsat", "dem", "lulc", "canopy", "osm"}
    assert demo.grid.patch_px == 264 and demo.grid.pixel_size_m == 10
    assert demo.build.shard_samples == 8


def test_demo_collections_are_inlined(demo: Recipe) -> None:
    s2 = demo.modalities["s2l2a"]
    assert s2.collection.name == "sentinel-2-l2a"
    assert s2.band_names == S2_BANDS
    assert len(s2.band_specs) == 12
    assert s2.storage_dtype.name == "uint16"
    assert s2.fill_value == 0
    assert s2.collection.quality is not None and s2.collection.quality.valid_values == (4, 5, 6, 7, 11)
    assert s2.resampling_method == "bilinear"  # continuous data, not set in the recipe

    lulc = demo.modalities["lulc"]
    assert lulc.collection.kind == "categorical"
    assert lulc.resampling is None
    assert lulc.resampling_method == "nearest"

    landsat = demo.modalities["landsat"]
    assert landsat.band_names == ("blue", "green", "red", "nir08", "swir16", "swir22")
    assert "coastal" in [b.name for b in landsat.collection.bands]  # in the collection, left out by the recipe
    assert landsat.resolution_m == 30
    assert landsat.rule.type == "nearest" and landsat.rule.tolerance_days == 16

    s1 = demo.modalities["s1rtc"]
    assert s1.band_names == ("vv", "vh")
    assert s1.storage_dtype.name == "float32"
    assert s1.fill_value == -32768.0

    assert demo.modalities["dem"].rule.type == "static"
    assert demo.modalities["canopy"].fill_value == 255


def test_resolved_recipe_is_self_contained(demo: Recipe) -> None:
    resolved = demo.resolved()
    assert resolved["modalities"]["s2l2a"]["collection"]["name"] == "sentinel-2-l2a"
    assert [b["name"] for b in resolved["modalities"]["s2l2a"]["collection"]["bands"]] == list(S2_BANDS)
    assert resolved["time"]["start"] == "2023-06-01"
    # The resolved recipe parses again into the same recipe (no collection file look-ups needed).
    again = parse_recipe(resolved)
    assert again == demo
    assert again.hash == demo.hash


def test_recipe_hash(demo: Recipe) -> None:
    other = load_recipe(CATALOGS / "demo.yaml")
    assert re.fullmatch(r"[0-9a-f]{16}", demo.hash)
    assert other.hash == demo.hash

    moved = demo.with_sources({"demo": "/somewhere/else/catalog.json"})
    assert moved.sources["demo"].href == "/somewhere/else/catalog.json"
    assert demo.sources["demo"].href == "demo-world/catalog.json"  # the original is unchanged
    assert moved.hash == demo.hash

    coarser = parse_recipe(mutated(set_in("modalities", "s1rtc", "resolution_m", value=20)), base_dir=CATALOGS)
    assert coarser.modalities["s1rtc"].resolution_m == 20
    assert coarser.hash != demo.hash


def test_with_sources_rejects_unknown_source_names(demo: Recipe) -> None:
    expected = "--source names ['nope'], but the recipe's sources are ['canopy_tiles', 'demo', 'osm']"
    with pytest.raises(RecipeError, match=re.escape(expected)):
        demo.with_sources({"nope": "x.json"})


def test_with_sources_replaces_location_fields_only(demo: Recipe) -> None:
    moved = demo.with_sources({"canopy_tiles": "mirror/index.geojson",
                               "canopy_tiles.href_template": "https://mirror/{tile}.tif"})
    assert moved.sources["canopy_tiles"].href == "mirror/index.geojson"
    assert moved.sources["canopy_tiles"].href_template == "https://mirror/{tile}.tif" and moved.hash == demo.hash
    with pytest.raises(RecipeError, match=r"'page_size' is not a location field of a source; use one of \['href', "):
        demo.with_sources({"canopy_tiles.page_size": "3"})
    with pytest.raises(RecipeError, match="source 'demo' is a static_catalog source, which has no href_template"):
        demo.with_sources({"demo.href_template": "x/{tile}.tif"})


def test_recipe_is_frozen(demo: Recipe) -> None:
    with pytest.raises(ValueError, match="frozen"):
        demo.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------------
# Bad recipes: one change to the demo recipe each

# Each case: (change to the demo recipe, YAML key path reported, regex for the rest of the problem line: what was
# found and what was expected).
BAD = [
    pytest.param(set_in("gird", value={"patch_px": 264}), "gird",
                 r"Extra inputs are not permitted \(found \{'patch_px': 264\}\)",
                 id="unknown-top-level-key"),
    pytest.param(set_in("modalities", "s2l2a", "resolution", value=10), "modalities.s2l2a.resolution",
                 r"Extra inputs are not permitted \(found 10\)",
                 id="unknown-modality-key"),
    pytest.param(set_in("grid", "patch_px", value="big"), "grid.patch_px",
                 r"Input should be a valid integer.*\(found 'big'\)",
                 id="wrong-type"),
    pytest.param(set_in("modalities", "landsat", "resolution_m", value=25), "modalities.landsat.resolution_m",
                 re.escape("found 25.0, expected a multiple of the base 10.0 m that divides the 2640 m patch "
                           "(e.g. 10, 20, 30, 40, 60, 80, 110, 120)"),
                 id="resolution-does-not-divide-patch"),
    pytest.param(set_in("modalities", "s2l2a", "resolution_m", value=5), "modalities.s2l2a.resolution_m",
                 re.escape("found 5.0, expected a multiple of the base 10.0 m"),
                 id="resolution-finer-than-base"),
    pytest.param(set_in("modalities", "s2l2a", "resolution_m", value=0), "modalities.s2l2a.resolution_m",
                 re.escape("Input should be greater than 0 (found 0)"),
                 id="resolution-zero"),
    pytest.param(set_in("modalities", "s2l2a", "bands", value=["B02", "B03", "B99"]), "modalities.s2l2a.bands[2]",
                 re.escape(f"found 'B99', expected one of {list(S2_BANDS)}"),
                 id="unknown-band"),
    pytest.param(set_in("modalities", "s2l2a", "bands", value="B02"), "modalities.s2l2a.bands",
                 re.escape("Input should be a valid tuple (found 'B02')"),
                 id="bands-not-a-list"),
    pytest.param(set_in("time", "anchor", value="sentinel2"), "time.anchor",
                 re.escape("found 'sentinel2', expected one of the modalities "
                           "['canopy', 'dem', 'landsat', 'lulc', 'osm', 's1rtc', 's2l2a']"),
                 id="anchor-not-a-modality"),
    pytest.param(set_in("modalities", "dem", "source", value="planetary"), "modalities.dem.source",
                 re.escape("found 'planetary', expected one of ['canopy_tiles', 'demo', 'osm']"),
                 id="unknown-source"),
    pytest.param(set_in("sources", "demo", "type", value="ftp_server"), "sources.demo.type",
                 r"Input should be 'static_catalog', 'stac_api', .*'geoparquet'.* \(found 'ftp_server'\)",
                 id="unknown-source-type"),
    pytest.param(set_in("modalities", "dem", "collection", value="no-such-collection"), "modalities.dem.collection",
                 r"found collection 'no-such-collection', expected one of \[.*'cop-dem-glo-30'.*\] "
                 r"\(files <name>\.yaml in .*\) or an inline mapping",
                 id="unknown-collection"),
    pytest.param(set_in("modalities", "dem", "collection", value=5), "modalities.dem.collection",
                 r"Input should be a valid dictionary .*\(found 5\)",
                 id="collection-not-name-or-mapping"),
    pytest.param(set_in("modalities", "s2l2a", "dtype", value="complex64"), "modalities.s2l2a.dtype",
                 re.escape("dtype 'complex64' is not numeric; expected an integer or float dtype such as 'uint16'"),
                 id="dtype-not-numeric"),
    pytest.param(set_in("modalities", "s2l2a", "dtype", value="banana"), "modalities.s2l2a.dtype",
                 re.escape("not a numpy dtype name: 'banana' (expected e.g. 'uint16', 'int16', 'float32')"),
                 id="dtype-unknown"),
    pytest.param(set_in("modalities", "lulc", "resampling", value="bilinear"), "modalities.lulc.resampling",
                 re.escape("found 'bilinear' for categorical data, expected 'nearest' or 'mode'"),
                 id="categorical-bilinear"),
    pytest.param(set_in("modalities", "s2l2a", "resampling", value="lanczos"), "modalities.s2l2a.resampling",
                 re.escape("Input should be 'nearest', 'bilinear', 'cubic', 'average' or 'mode' (found 'lanczos')"),
                 id="unknown-resampling"),
    pytest.param(set_in("modalities", "s1rtc", "rule", "tolerance_days", value=-3),
                 "modalities.s1rtc.rule.tolerance_days",
                 re.escape("Input should be greater than or equal to 0 (found -3)"),
                 id="negative-tolerance"),
    pytest.param(set_in("modalities", "s1rtc", "rule", value={"type": "nearest"}),
                 "modalities.s1rtc.rule.tolerance_days",
                 r"Field required$",
                 id="missing-tolerance"),
    pytest.param(set_in("modalities", "s2l2a", "rule", "max_cloud_cover", value=150),
                 "modalities.s2l2a.rule.max_cloud_cover",
                 re.escape("Input should be less than or equal to 100 (found 150)"),
                 id="cloud-cover-over-100"),
    pytest.param(set_in("time", "end", value="2023-05-01"), "time.end",
                 re.escape("found 2023-05-01, expected a date on or after time.start (2023-06-01)"),
                 id="end-before-start"),
    pytest.param(set_in("time", "start", value="summer"), "time.start",
                 r"Input should be a valid date.*\(found 'summer'\)",
                 id="start-not-a-date"),
    pytest.param(set_in("modalities", "s1rtc", "rule", "type", value="closest"), "modalities.s1rtc.rule",
                 re.escape("Input tag 'closest' found using 'type' does not match any of the expected tags: "
                           "'least_cloudy', 'nearest', 'same_year', 'static'"),
                 id="unknown-rule-type"),
    pytest.param(set_in("modalities", "s1rtc", "dtype", value="uint8"), "modalities.s1rtc.dtype",
                 re.escape("storage dtype uint8 cannot hold the collection's nodata -32768.0; expected a dtype that "
                           "can (e.g. the collection's float32)"),
                 id="dtype-cannot-hold-nodata"),
    pytest.param(set_in("modalities", "dem", "dtype", value="uint16"), "modalities.dem.dtype",
                 re.escape("storage dtype uint16 cannot hold the collection's nodata -32767.0"),
                 id="unsigned-dtype-negative-nodata"),
    pytest.param(set_in("modalities", "s2l2a", "rule", value={"type": "nearest", "tolerance_days": 3}),
                 "modalities.s2l2a.rule.type",
                 re.escape("the anchor modality must use 'least_cloudy' (found 'nearest')"),
                 id="anchor-rule-not-least-cloudy"),
    pytest.param(rename_modality("s2l2a", "S2-L2A"), "modalities.S2-L2A",
                 re.escape("found name 'S2-L2A', expected lowercase letters, digits and _ starting with a letter"),
                 id="invalid-modality-name"),
    pytest.param(set_in("modalities", "dem", "rule", value={"type": "nearest", "tolerance_days": 3}),
                 "modalities.dem.rule.type",
                 re.escape("collection 'cop-dem-glo-30' is static, found rule 'nearest', expected 'static'"),
                 id="static-collection-nearest-rule"),
    pytest.param(set_in("modalities", "lulc", "rule", value={"type": "static"}), "modalities.lulc.rule.type",
                 re.escape("collection 'io-lulc-annual-v02' is annual, found rule 'static', expected 'same_year'"),
                 id="annual-collection-static-rule"),
    pytest.param(lambda d: d.pop("name"), "name",
                 r"Field required$",
                 id="missing-name"),
    pytest.param(set_in("sources", value={}), "sources",
                 r"Dictionary should have at least 1 item.*\(found \{\}\)",
                 id="no-sources"),
    pytest.param(set_in("grid", "origin", value="snapped"), "grid.origin",
                 re.escape("Input should be 'exact' or 'snap' (found 'snapped')"),
                 id="unknown-grid-origin"),
    pytest.param(set_in("build", "zstd_level", value=99), "build.zstd_level",
                 re.escape("Input should be less than or equal to 22 (found 99)"),
                 id="zstd-level-too-high"),
    pytest.param(lambda d: d["build"].update(codec="blosc-zstd", zstd_level=12), "build",
                 re.escape("codec blosc-zstd takes zstd_level 0-9 (found 12)"),
                 id="blosc-zstd-level-too-high"),
    pytest.param(set_in("build", "codec", value="gzip"), "build.codec",
                 "Input should be 'blosc-lz4', 'blosc-zstd', 'zstd' or 'none'",
                 id="unknown-codec"),
    pytest.param(set_in("modalities", "s2l2a", "collection",
                        value=dict(collection_data("sentinel-2-l2a"),
                                   quality={"asset": "SCL", "valid_values": [4], "invalid_values": [8]})),
                 "modalities.s2l2a.collection.quality",
                 re.escape("expected exactly one of valid_values, invalid_values, invalid_bits"),
                 id="inline-collection-two-quality-rules"),
    pytest.param(set_in("modalities", "s2l2a", "collection", value=dict(collection_data("sentinel-2-l2a"), bands=[])),
                 "modalities.s2l2a.collection.bands",
                 r"at least 1 item.*\(found \[\]\)",
                 id="inline-collection-no-bands"),
]


@pytest.mark.parametrize(("change", "path", "message"), BAD)
def test_bad_recipe(change: Callable[[dict[str, Any]], Any], path: str, message: str) -> None:
    with pytest.raises(RecipeError, match=re.escape(f"\n  - {path}: ") + r".*" + message) as exc:
        parse_recipe(mutated(change), base_dir=CATALOGS, origin="bad.yaml")
    assert str(exc.value).startswith("bad.yaml is not a valid recipe:\n  - ")
    lines = problems(exc)
    assert len(lines) == 1, str(exc.value)  # one change, one problem
    assert lines[0].startswith(f"{path}: ")
    assert re.search(message, lines[0][len(path) + 2:])


def test_demo_data_itself_is_valid() -> None:
    """The baseline every bad recipe starts from is valid (so each failure comes from its one change)."""
    assert parse_recipe(demo_data(), base_dir=CATALOGS).name == "demo"


@pytest.mark.parametrize("data", [[1, 2], "demo", None, 42], ids=["list", "str", "null", "int"])
def test_top_level_not_a_mapping(data: Any) -> None:
    with pytest.raises(RecipeError, match=re.escape(
            f"bad.yaml: found {type(data).__name__}, expected a mapping with keys name, time, sources, modalities")):
        parse_recipe(data, base_dir=CATALOGS, origin="bad.yaml")


def test_default_origin_in_messages() -> None:
    with pytest.raises(RecipeError, match=r"^recipe is not a valid recipe:\n  - time\.end: "):
        parse_recipe(mutated(set_in("time", "end", value="2023-01-01")), base_dir=CATALOGS)


def test_parse_recipe_does_not_modify_its_input() -> None:
    data = demo_data()
    parse_recipe(data, base_dir=CATALOGS)
    assert data == DEMO
    assert data["modalities"]["s2l2a"]["collection"] == "sentinel-2-l2a-demo"


def test_collections_found_without_base_dir() -> None:
    """The bundled collections are searched when the recipe has no directory."""
    recipe = parse_recipe(demo_data())
    assert recipe.modalities["dem"].collection.name == "cop-dem-glo-30"


def test_collection_next_to_the_recipe_wins(tmp_path: Path) -> None:
    (tmp_path / "collections").mkdir()
    local = dict(collection_data("cop-dem-glo-30"), title="My local DEM")
    (tmp_path / "collections" / "cop-dem-glo-30.yaml").write_text(yaml.safe_dump(local))
    recipe = parse_recipe(demo_data(), base_dir=tmp_path)
    assert recipe.modalities["dem"].collection.title == "My local DEM"
    assert recipe.modalities["s2l2a"].collection.name == "sentinel-2-l2a"  # the bundled one, as a fallback


def test_collection_file_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "collections").mkdir()
    (tmp_path / "collections" / "listy.yaml").write_text("- a\n- b\n")
    data = mutated(set_in("modalities", "dem", "collection", value="listy"))
    with pytest.raises(RecipeError, match=r"- modalities\.dem\.collection: collection file .*listy\.yaml does not "
                                          r"hold a mapping"):
        parse_recipe(data, base_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Several problems, one error


def test_several_schema_problems_in_one_error() -> None:
    data = demo_data()
    data["gird"] = {}
    data["grid"]["patch_px"] = "big"
    data["modalities"]["s1rtc"]["rule"]["tolerance_days"] = -3
    data["modalities"]["s2l2a"]["dtype"] = "banana"
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data, base_dir=CATALOGS)
    found = sorted(p.split(":")[0] for p in problems(exc))
    assert found == ["gird", "grid.patch_px", "modalities.s1rtc.rule.tolerance_days", "modalities.s2l2a.dtype"]


def test_several_cross_check_problems_in_one_error() -> None:
    data = demo_data()
    data["time"]["end"] = "2023-05-01"
    data["modalities"]["landsat"]["resolution_m"] = 25
    data["modalities"]["dem"]["source"] = "x"
    data["modalities"]["s2l2a"]["bands"] = ["B99", "B02", "B100"]
    data["modalities"]["lulc"]["resampling"] = "cubic"
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data, base_dir=CATALOGS)
    found = sorted(p.split(":")[0] for p in problems(exc))
    assert found == ["modalities.dem.source", "modalities.landsat.resolution_m", "modalities.lulc.resampling",
                     "modalities.s2l2a.bands[0]", "modalities.s2l2a.bands[2]", "time.end"]
    assert "found 'B100'" in str(exc.value)


def test_several_name_and_collection_problems_in_one_error() -> None:
    data = demo_data()
    data["modalities"]["dem"]["collection"] = "nope"
    data["modalities"]["Bad"] = data["modalities"].pop("canopy")
    data["modalities"]["lulc"]["collection"] = "nada"
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data, base_dir=CATALOGS)
    found = sorted(p.split(":")[0] for p in problems(exc))
    assert found == ["modalities.Bad", "modalities.dem.collection", "modalities.lulc.collection"]


# ---------------------------------------------------------------------------------------------------------------
# load_recipe


def test_load_recipe_by_bundled_name() -> None:
    recipe = load_recipe("demo")
    assert recipe.name == "demo"
    assert recipe.hash == load_recipe(CATALOGS / "demo.yaml").hash


def test_load_recipe_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match=re.escape(f"recipe file {str(missing)!r} not found")) as exc:
        load_recipe(missing)
    assert re.search(r"bundled recipe name \(.*\bdemo\b", str(exc.value))


def test_load_recipe_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [demo\ntime: {anchor: s2l2a\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path}: not valid YAML")):
        load_recipe(path)


def test_load_recipe_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path}: found NoneType, expected a mapping")):
        load_recipe(path)


def test_load_recipe_uses_path_as_origin_and_finds_collections_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "collections").mkdir()
    (tmp_path / "collections" / "my-dem.yaml").write_text(yaml.safe_dump(collection_data("cop-dem-glo-30")))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(mutated(set_in("modalities", "dem", "collection", value="my-dem"))))
    assert load_recipe(good).modalities["dem"].collection.name == "cop-dem-glo-30"

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutated(set_in("time", "anchor", value="s2"))))
    with pytest.raises(RecipeError, match=re.escape(f"{bad} is not a valid recipe:\n  - time.anchor: found 's2'")):
        load_recipe(bad)


# ---------------------------------------------------------------------------------------------------------------
# The error class


def test_recipe_error_is_a_value_error() -> None:
    assert issubclass(RecipeError, ValueError)
    assert issubclass(RecipeError, EODatasetError)
    with pytest.raises(ValueError, match=r"time\.anchor"):
        parse_recipe(mutated(set_in("time", "anchor", value="nope")), base_dir=CATALOGS)
    try:
        load_recipe("no-such-recipe")
    except ValueError as exc:  # callers that only know the builtin still catch it
        assert isinstance(exc, RecipeError)
        assert "no-such-recipe" in str(exc)
    else:
        pytest.fail("load_recipe('no-such-recipe') did not raise")


# ---------------------------------------------------------------------------------------------------------------
# Regressions: problems found in review, fixed in recipe.py


@pytest.mark.parametrize("value", [["s2l2a", "s1rtc"], "s2l2a"], ids=["list", "str"])
def test_modalities_not_a_mapping(value: Any) -> None:
    with pytest.raises(RecipeError, match=r"- modalities: Input should be a valid dictionary"):
        parse_recipe(mutated(set_in("modalities", value=value)), base_dir=CATALOGS)


def test_collection_file_with_invalid_yaml(tmp_path: Path) -> None:
    (tmp_path / "collections").mkdir()
    (tmp_path / "collections" / "broken.yaml").write_text("name: [unclosed\n")
    data = mutated(set_in("modalities", "dem", "collection", value="broken"))
    with pytest.raises(RecipeError, match=r"modalities\.dem\.collection: .*broken\.yaml.*not valid YAML"):
        parse_recipe(data, base_dir=tmp_path)


def test_load_recipe_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01 not text")
    with pytest.raises(RecipeError, match=re.escape(str(path))):
        load_recipe(path)


@pytest.mark.parametrize("resolution", [15, 16.5])
def test_resolution_not_a_multiple_of_base(resolution: float) -> None:
    data = mutated(set_in("modalities", "landsat", "resolution_m", value=resolution))
    with pytest.raises(RecipeError, match=r"modalities\.landsat\.resolution_m: found .*expected a multiple of the "
                                          r"base 10\.0 m"):
        parse_recipe(data, base_dir=CATALOGS)


def test_resolution_message_examples_not_empty() -> None:
    data = mutated(set_in("grid", "patch_px", value=100))
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data, base_dir=CATALOGS)
    assert "modalities.landsat.resolution_m: found 30.0" in str(exc.value)  # the check itself fires
    assert "(e.g. )" not in str(exc.value)


def test_resolution_message_examples_are_valid() -> None:
    data = mutated(lambda d: d["grid"].update(pixel_size_m=20, patch_px=132))
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data, base_dir=CATALOGS)
    # 10 m is finer than the 20 m base, so the check fires ...
    examples = re.search(r"modalities\.s2l2a\.resolution_m: found 10\.0, .*\(e\.g\. ([^)]*)\)", str(exc.value))
    assert examples is not None
    # ... and every resolution it suggests instead should pass it.
    for text in examples.group(1).split(", "):
        r = float(text)
        assert r >= 20, f"suggested resolution {r} m is finer than the 20 m base, which the same check rejects"


def test_unknown_collection_message_lists_each_folder_once() -> None:
    data = mutated(set_in("modalities", "dem", "collection", value="no-such-collection"))
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data, base_dir=CATALOGS)
    folder = str(CATALOGS / "collections")
    assert str(exc.value).count(folder) == 1


def test_nodata_message_does_not_suggest_the_failing_dtype() -> None:
    coll = dict(collection_data("canopy-height"), nodata=float("nan"))
    data = mutated(set_in("modalities", "canopy", "collection", value=coll))
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data, base_dir=CATALOGS)
    assert "modalities.canopy" in str(exc.value)  # the problem is reported ...
    assert "e.g. the collection's uint8" not in str(exc.value)  # ... but not with uint8 as the fix


def test_duplicate_bands_rejected() -> None:
    data = mutated(set_in("modalities", "s2l2a", "bands", value=["B02", "B03", "B02"]))
    with pytest.raises(RecipeError, match=r"modalities\.s2l2a\.bands\[2\]: .*'B02'"):
        parse_recipe(data, base_dir=CATALOGS)
