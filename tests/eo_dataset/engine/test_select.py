"""The temporal rules of selection on small in-memory items (no server, no files): search windows, scenes, the
least-cloudy anchor, the nearest match to the anchor, annual and static products, coverage, ties and refusals.
The same rules against a real STAC API are tested in tests/eo_dataset/sources/test_stac_api.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pystac
import pytest
import shapely
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from eo_dataset import RecipeError, parse_recipe
from eo_dataset.engine.select import Candidates, Choice, NoChoice, choose, search_bbox, search_window
from eo_dataset.sources import item_time_range
from eo_dataset.spec.recipe import Recipe

UTC = dt.UTC
EPSG = 32632  # the sample's CRS
FOOTPRINT = box(10.0, 0.0, 10.3, 0.1)  # the sample's lon/lat footprint
LEFT, MIDDLE, RIGHT = box(10.0, 0.0, 10.1, 0.1), box(10.1, 0.0, 10.2, 0.1), box(10.2, 0.0, 10.3, 0.1)  # thirds


def _collection(name: str, temporal: str = "dynamic", cloud: str | None = "eo:cloud_cover") -> dict[str, Any]:
    return {"name": name, "temporal": temporal, "dtype": "uint16", "units": "DN", "licence": "test",
            "cloud_cover_property": cloud, "bands": [{"name": "b1"}]}


def _recipe(rules: dict[str, dict[str, Any]] | None = None, start: str = "2023-06-01", end: str = "2023-08-31",
            cloud: str | None = "eo:cloud_cover") -> Recipe:
    """An anchor ``s2`` (least_cloudy), ``s1`` (nearest, 7 days), ``lc`` (annual) and ``dem`` (static)."""
    rules = {"s2": {"type": "least_cloudy"}, "s1": {"type": "nearest", "tolerance_days": 7},
             "lc": {"type": "same_year"}, "dem": {"type": "static"}} | (rules or {})
    temporal = {"lc": "annual", "dem": "static"}
    return parse_recipe({
        "name": "select-rules", "time": {"anchor": "s2", "start": start, "end": end},
        "sources": {"s": {"type": "static_catalog", "href": "unused.json"}},
        "modalities": {name: {"collection": _collection(name, temporal.get(name, "dynamic"), cloud), "source": "s",
                              "resolution_m": 10, "rule": rule} for name, rule in rules.items()}})


def _item(item_id: str, when: dt.datetime | tuple[dt.datetime, dt.datetime], geometry: BaseGeometry = FOOTPRINT,
          cloud: float | None = None, **props: Any) -> pystac.Item:
    """An item over ``geometry`` at ``when`` (a (start, end) pair: an item that spans a period)."""
    properties = dict(props)
    if cloud is not None:
        properties["eo:cloud_cover"] = cloud
    if isinstance(when, tuple):
        properties["start_datetime"] = pystac.utils.datetime_to_str(when[0])
        properties["end_datetime"] = pystac.utils.datetime_to_str(when[1])
        when = None
    return pystac.Item(item_id, mapping(geometry), list(geometry.bounds), when, properties)


def _at(day: int, month: int = 7, hour: int = 10, year: int = 2023) -> dt.datetime:
    return dt.datetime(year, month, day, hour, tzinfo=UTC)


def _pick(recipe: Recipe, name: str, items: list[pystac.Item], anchor: dt.datetime | None = None,
          footprint: BaseGeometry = FOOTPRINT) -> Choice | NoChoice:
    return choose(recipe, name, items, footprint, EPSG, anchor)


def _ids(choice: Choice | NoChoice) -> str:
    assert isinstance(choice, Choice), choice
    return choice.item_ids


# -- search windows ----------------------------------------------------------------------------------------------------
def test_search_window_of_each_rule() -> None:
    recipe = _recipe({"s1": {"type": "nearest", "tolerance_days": 1.5}})
    start, end = dt.datetime(2023, 6, 1, tzinfo=UTC), dt.datetime(2023, 8, 31, 23, 59, 59, tzinfo=UTC)
    assert search_window(recipe, recipe.modalities["s2"]) == (start, end)  # the recipe's window, whole days
    tol = dt.timedelta(hours=36)
    assert search_window(recipe, recipe.modalities["s1"]) == (start - tol, end + tol)  # widened both ways
    assert search_window(recipe, recipe.modalities["lc"]) == (dt.datetime(2023, 1, 1, tzinfo=UTC),
                                                              dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert search_window(recipe, recipe.modalities["dem"]) == (None, None)  # any time


def test_an_annual_window_spans_every_year_the_recipe_touches() -> None:
    recipe = _recipe(start="2022-11-01", end="2023-02-28")
    assert search_window(recipe, recipe.modalities["lc"]) == (dt.datetime(2022, 1, 1, tzinfo=UTC),
                                                              dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC))


def test_search_bbox_takes_the_whole_band_past_the_antimeridian() -> None:
    assert search_bbox((10.0, 0.0, 10.3, 0.1)) == (10.0, 0.0, 10.3, 0.1)
    assert search_bbox((179.9, -16.2, 180.1, -16.0)) == (-180.0, -16.2, 180.0, -16.0)


# -- least_cloudy (the anchor) -----------------------------------------------------------------------------------------
def test_least_cloudy_takes_the_scene_with_the_lowest_mean_cloud_cover() -> None:
    recipe = _recipe()
    items = [_item("a-left", _at(3), LEFT.union(MIDDLE), cloud=10), _item("a-right", _at(3), RIGHT, cloud=30),
             _item("b", _at(20), cloud=25), _item("c", _at(25), cloud=21)]
    choice = _pick(recipe, "s2", items)
    # 3 July: two tiles of one pass, (10 + 30) / 2 = 20 < 21 < 25; its tiles mosaicked, the less cloudy first
    assert _ids(choice) == "a-left,a-right" and choice.time == _at(3)


def test_least_cloudy_ties_go_to_the_middle_of_the_window_then_to_the_earliest_day() -> None:
    recipe = _recipe()
    middle = recipe.time.middle
    assert middle == dt.datetime(2023, 7, 16, 23, 59, 59, 500000, tzinfo=UTC)
    near, far = _item("near", _at(18), cloud=5), _item("far", _at(12), cloud=5)
    assert _ids(_pick(recipe, "s2", [far, near])) == "near"
    before, after = (_item("before", middle - dt.timedelta(hours=12), cloud=5),
                     _item("after", middle + dt.timedelta(hours=12), cloud=5))
    assert _ids(_pick(recipe, "s2", [after, before])) == "before"  # as close: the earlier day
    assert _ids(_pick(recipe, "s2", [near, _item("clear", _at(1, 6), cloud=4.9)])) == "clear"  # cloud first


def test_least_cloudy_respects_max_cloud_cover_and_says_why_nothing_qualifies() -> None:
    recipe = _recipe({"s2": {"type": "least_cloudy", "max_cloud_cover": 20}})
    assert _ids(_pick(recipe, "s2", [_item("ok", _at(5), cloud=20), _item("cloudy", _at(6), cloud=20.5)])) == "ok"
    refused = _pick(recipe, "s2", [_item("cloudy", _at(6), cloud=20.5)])
    assert refused == NoChoice("no scene in the time window with cloud cover <= 20% covering >= 50% of the sample")


def test_a_scene_must_cover_enough_of_the_sample_together() -> None:
    recipe = _recipe()
    # three thirds of one pass cover the sample together; a clear scene over a third of it does not qualify
    thirds = [_item(f"t{i}", _at(8), g, cloud=15) for i, g in enumerate((LEFT, MIDDLE, RIGHT))]
    assert _ids(_pick(recipe, "s2", [*thirds, _item("sliver", _at(9), LEFT, cloud=0)])) == "t0,t1,t2"
    assert _pick(recipe, "s2", [_item("sliver", _at(9), LEFT, cloud=0)]) == NoChoice(
        "no scene in the time window covering >= 50% of the sample")
    strict = _recipe({"s2": {"type": "least_cloudy", "min_coverage": 1.0}})
    assert isinstance(_pick(strict, "s2", thirds[:2]), NoChoice)  # two thirds < 100%


def test_a_missing_cloud_cover_counts_as_clear() -> None:
    recipe = _recipe()
    assert _ids(_pick(recipe, "s2", [_item("five", _at(16), cloud=5), _item("unknown", _at(2))])) == "unknown"
    no_property = _recipe(cloud=None)  # a collection without a cloud property: only the time decides
    assert _ids(_pick(no_property, "s2", [_item("cloudy-but-central", _at(17), cloud=90),
                                          _item("clear-but-early", _at(2), cloud=0)])) == "cloudy-but-central"


def test_scenes_are_utc_days() -> None:
    recipe = _recipe({"s2": {"type": "least_cloudy", "min_coverage": 0.9}})
    late = _item("late", dt.datetime(2023, 7, 10, 23, 30, tzinfo=UTC), LEFT.union(MIDDLE), cloud=0)
    early = _item("early", dt.datetime(2023, 7, 11, 0, 30, tzinfo=UTC), RIGHT, cloud=0)
    assert isinstance(_pick(recipe, "s2", [late, early]), NoChoice)  # two days, each covering too little
    # 01:30 at UTC+2 is 23:30 UTC on 10 July: the same scene as `late`
    local = _item("local", dt.datetime(2023, 7, 11, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), RIGHT,
                  cloud=0)
    assert _ids(_pick(recipe, "s2", [late, local])) == "late,local"


def test_items_that_miss_the_sample_are_ignored() -> None:
    recipe = _recipe()
    elsewhere = _item("elsewhere", _at(1), box(20, 20, 21, 21), cloud=0)
    assert _ids(_pick(recipe, "s2", [elsewhere, _item("here", _at(2), cloud=50)])) == "here"
    assert _pick(recipe, "s2", [elsewhere]) == NoChoice("no item intersects the sample in the search window")
    assert _pick(recipe, "s2", []) == NoChoice("no item intersects the sample in the search window")


def test_the_mosaic_puts_the_sample_s_own_crs_first_then_clear_tiles_then_ids() -> None:
    recipe = _recipe()
    scene = [_item("b-other-zone", _at(4), LEFT.union(MIDDLE), cloud=0, **{"proj:epsg": 32633}),
             _item("z-own-zone", _at(4), MIDDLE.union(RIGHT), cloud=30, **{"proj:code": f"EPSG:{EPSG}"}),
             _item("a-own-zone", _at(4), RIGHT, cloud=30, **{"proj:epsg": EPSG}),
             _item("c-no-proj", _at(4), LEFT, cloud=0)]
    assert _ids(_pick(recipe, "s2", scene)) == "a-own-zone,z-own-zone,b-other-zone,c-no-proj"


# -- nearest (matched to the anchor date) ------------------------------------------------------------------------------
def test_nearest_needs_an_anchor_date() -> None:
    recipe = _recipe()
    assert _pick(recipe, "s1", [_item("s1", _at(10))], anchor=None) == NoChoice(
        "anchor modality unavailable, so there is no date to match")


def test_nearest_takes_the_closest_scene_even_if_cloudier() -> None:
    recipe = _recipe()
    anchor = _at(10)
    items = [_item("two-days", _at(12), cloud=80), _item("five-days", _at(5), cloud=0),
             _item("same-day-elsewhere", _at(10), box(30, 30, 31, 31), cloud=0)]
    choice = _pick(recipe, "s1", items, anchor)
    assert _ids(choice) == "two-days" and choice.time == _at(12)


def test_nearest_stays_within_the_tolerance_inclusive() -> None:
    recipe = _recipe()
    anchor = _at(10)
    edge = _item("edge", anchor + dt.timedelta(days=7), cloud=0)
    past = _item("past", anchor - dt.timedelta(days=7, seconds=1), cloud=0)
    assert _ids(_pick(recipe, "s1", [edge, past], anchor)) == "edge"
    assert _pick(recipe, "s1", [past], anchor) == NoChoice(
        "no scene within 7 days of the anchor covering >= 50% of the sample")
    # the anchor may lie outside the recipe's window: the match is to the anchor, not to the window
    assert _ids(_pick(recipe, "s1", [_item("june", _at(2, 6))], _at(30, 5))) == "june"


def test_nearest_ties_go_to_the_clearer_scene_then_to_the_earliest_day() -> None:
    recipe = _recipe()
    anchor = _at(10)
    before, after = _item("before", _at(8), cloud=10), _item("after", _at(12), cloud=10)
    assert _ids(_pick(recipe, "s1", [after, before], anchor)) == "before"
    clearer = _item("after-clearer", _at(12), cloud=9)
    assert _ids(_pick(recipe, "s1", [before, clearer], anchor)) == "after-clearer"


def test_nearest_with_max_cloud_cover_and_coverage() -> None:
    recipe = _recipe({"s1": {"type": "nearest", "tolerance_days": 3, "max_cloud_cover": 30, "min_coverage": 0.6}})
    anchor = _at(10)
    items = [_item("cloudy", _at(10), cloud=31), _item("partial", _at(11), LEFT, cloud=0),
             _item("ok", _at(13), cloud=30)]
    # the closer scenes are too cloudy (31 > 30) or cover a third of the sample (< 0.6)
    assert _ids(_pick(recipe, "s1", items, anchor)) == "ok"
    two_thirds = _item("two-thirds", _at(11), LEFT.union(MIDDLE), cloud=0)
    assert _ids(_pick(recipe, "s1", [items[0], two_thirds, items[2]], anchor)) == "two-thirds"
    assert _pick(recipe, "s1", items[:1], anchor) == NoChoice(
        "no scene within 3 days of the anchor with cloud cover <= 30% covering >= 60% of the sample")


# -- same_year (annual products) ---------------------------------------------------------------------------------------
def _year(y: int) -> tuple[dt.datetime, dt.datetime]:
    return dt.datetime(y, 1, 1, tzinfo=UTC), dt.datetime(y, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_same_year_takes_the_items_of_the_anchor_s_year() -> None:
    recipe = _recipe()
    items = [_item("lc-2022", _year(2022)), _item("lc-2023-left", _year(2023), LEFT),
             _item("lc-2023-rest", _year(2023), MIDDLE.union(RIGHT))]
    choice = _pick(recipe, "lc", items, anchor=_at(1, 3, year=2023))
    assert set(_ids(choice).split(",")) == {"lc-2023-left", "lc-2023-rest"}  # mosaicked, the whole year's tiles
    assert choice.time == dt.datetime(2023, 1, 1, tzinfo=UTC)
    assert _ids(_pick(recipe, "lc", items, anchor=_at(30, 12, year=2022))) == "lc-2022"


def test_same_year_without_an_anchor_uses_the_middle_of_the_window() -> None:
    recipe = _recipe(start="2022-10-01", end="2023-05-31")  # the middle falls in 2023
    items = [_item("lc-2022", _year(2022)), _item("lc-2023", _year(2023))]
    assert _ids(_pick(recipe, "lc", items, anchor=None)) == "lc-2023"


def test_same_year_counts_items_that_span_several_years_and_says_which_year_is_missing() -> None:
    recipe = _recipe()
    epoch = _item("epoch-2020-2024", (_year(2020)[0], _year(2024)[1]))
    assert _ids(_pick(recipe, "lc", [epoch], anchor=_at(1))) == "epoch-2020-2024"
    assert _pick(recipe, "lc", [_item("lc-2022", _year(2022))], anchor=_at(1)) == NoChoice("no item for year 2023")


def test_same_year_coverage() -> None:
    recipe = _recipe({"lc": {"type": "same_year", "min_coverage": 0.5}})
    assert _pick(recipe, "lc", [_item("left", _year(2023), LEFT)], anchor=_at(1)) == NoChoice(
        "items of 2023 cover less than 50% of the sample")


# -- static (time-less products) ---------------------------------------------------------------------------------------
def test_static_mosaics_every_intersecting_item_whatever_its_time() -> None:
    recipe = _recipe()
    items = [_item("dem-b", _at(1, 1, year=2000), LEFT.union(MIDDLE)), _item("dem-a", _at(1, 1, year=2015), RIGHT),
             _item("dem-elsewhere", _at(1, 1, year=2015), box(40, 40, 41, 41))]
    choice = _pick(recipe, "dem", items, anchor=None)
    assert _ids(choice) == "dem-a,dem-b"  # neither in the sample's CRS nor cloudy: by id
    assert choice.time == _at(1, 1, year=2015)  # the time of the first item of the mosaic
    assert _pick(recipe, "dem", items[2:]) == NoChoice("no item intersects the sample")


def test_static_coverage() -> None:
    recipe = _recipe({"dem": {"type": "static", "min_coverage": 0.9}})
    assert _pick(recipe, "dem", [_item("left", _at(1), LEFT.union(MIDDLE))]) == NoChoice(
        "items cover less than 90% of the sample")


def test_static_collections_need_the_static_rule_dynamic_ones_may_use_it() -> None:
    with pytest.raises(RecipeError, match=r"modalities\.dem\.rule\.type: collection 'dem' is static, found rule "
                                          r"'nearest', expected 'static'"):
        _recipe({"dem": {"type": "nearest", "tolerance_days": 3}})
    with pytest.raises(RecipeError, match=r"modalities\.lc\.rule\.type: collection 'lc' is annual, found rule "
                                          r"'static', expected 'same_year'"):
        _recipe({"lc": {"type": "static"}})
    recipe = _recipe({"s1": {"type": "static"}})  # a dynamic collection taken as time-less: any date will do
    assert _ids(_pick(recipe, "s1", [_item("old", _at(1, 1, year=2015))], anchor=None)) == "old"


def test_a_footprint_across_the_antimeridian_finds_items_on_both_sides() -> None:
    recipe = _recipe({"dem": {"type": "static", "min_coverage": 0.9}})
    footprint = box(179.9, -16.1, 180.1, -16.0)  # unwrapped past 180
    east = _item("east", _at(1), box(179.8, -16.2, 180.0, -15.9))
    west = _item("west", _at(1), box(-180.0, -16.2, -179.8, -15.9))
    assert _ids(_pick(recipe, "dem", [west, east], footprint=footprint)) == "east,west"
    assert _pick(recipe, "dem", [east], footprint=footprint) == NoChoice("items cover less than 90% of the sample")


# -- the block's candidates, built once: the same choices as the plain rule --------------------------------------------
def _coverage_before(footprint: BaseGeometry, items: list[pystac.Item]) -> float:
    union = shapely.union_all([shape(i.geometry) for i in items])
    if footprint.bounds[2] > 180:
        union = shapely.union(union, shapely.affinity.translate(union, xoff=360))
    return float(footprint.intersection(union).area / footprint.area) if footprint.area else 0.0


def _choose_before(recipe: Recipe, name: str, items: list[pystac.Item], footprint: BaseGeometry, epsg: int,
                   anchor: dt.datetime | None) -> Choice | NoChoice:
    """The selection as written before the block's candidates were shared: every shape rebuilt, every test exact."""
    rule = recipe.modalities[name].rule
    if rule.type == "nearest" and anchor is None:
        return NoChoice("anchor modality unavailable, so there is no date to match")
    shifted = shapely.affinity.translate(footprint, xoff=-360) if footprint.bounds[2] > 180 else None
    hits = [i for i in items if shape(i.geometry).intersects(footprint)
            or shifted is not None and shape(i.geometry).intersects(shifted)]

    def cloud(i: pystac.Item) -> float:
        return float(i.properties.get("eo:cloud_cover") or 0.0)

    def epsg_of(i: pystac.Item) -> int | None:
        code = i.properties.get("proj:code")
        return i.properties.get("proj:epsg") or (int(code.split(":")[1]) if code else None)

    def ordered(some: list[pystac.Item]) -> tuple[pystac.Item, ...]:
        return tuple(sorted(some, key=lambda i: (epsg_of(i) != epsg, cloud(i), i.id)))

    if not hits:
        return NoChoice("no item intersects the sample" + ("" if rule.type == "static" else " in the search window"))
    if rule.type == "static":
        if _coverage_before(footprint, hits) < rule.min_coverage:
            return NoChoice(f"items cover less than {rule.min_coverage:.0%} of the sample")
        return Choice(ordered(hits), item_time_range(ordered(hits)[0])[0])
    if rule.type == "same_year":
        year = (anchor or recipe.time.middle).year
        same = [i for i in hits if item_time_range(i)[0].year <= year <= item_time_range(i)[1].year]
        if not same:
            return NoChoice(f"no item for year {year}")
        if _coverage_before(footprint, same) < rule.min_coverage:
            return NoChoice(f"items of {year} cover less than {rule.min_coverage:.0%} of the sample")
        return Choice(ordered(same), item_time_range(ordered(same)[0])[0])
    scenes: dict[dt.date, list[pystac.Item]] = {}
    for i in hits:
        scenes.setdefault(item_time_range(i)[0].astimezone(UTC).date(), []).append(i)
    ranked = []
    for day, scene in scenes.items():
        mean_cloud, t = sum(map(cloud, scene)) / len(scene), item_time_range(scene[0])[0]
        if mean_cloud > rule.max_cloud_cover or _coverage_before(footprint, scene) < rule.min_coverage:
            continue
        if rule.type == "nearest":
            gap = abs((t - anchor).total_seconds())
            if gap > rule.tolerance_days * 86400:
                continue
            key = (gap, mean_cloud, day.isoformat())
        else:
            key = (mean_cloud, abs((t - recipe.time.middle).total_seconds()), day.isoformat())
        ranked.append((key, scene, t))
    if not ranked:
        when = f"within {rule.tolerance_days:g} days of the anchor" if rule.type == "nearest" else "in the time window"
        limit = f" with cloud cover <= {rule.max_cloud_cover:g}%" if rule.max_cloud_cover < 100 else ""
        return NoChoice(f"no scene {when}{limit} covering >= {rule.min_coverage:.0%} of the sample")
    _, scene, t = min(ranked, key=lambda r: r[0])
    return Choice(ordered(scene), t)


def _tangle(rng: np.random.Generator) -> tuple[list[pystac.Item], list[BaseGeometry]]:
    """Overlapping items of two UTM zones on a 0.05-degree lattice (so edges touch), several passes a day, some
    spanning years, some past the antimeridian; and sample footprints over them, some unwrapped past 180."""
    items = []
    for k in range(40):
        west = 179.5 + rng.integers(0, 10) * 0.05 if k % 5 == 4 else 10 + rng.integers(0, 16) * 0.05
        if k % 10 == 9:
            west = -180.0 + rng.integers(0, 6) * 0.05
        south, width, height = rng.integers(0, 8) * 0.05, rng.integers(2, 10) * 0.05, rng.integers(2, 8) * 0.05
        geom = box(west, south, min(west + width, 180.0) if west > 0 else west + width, south + height)
        when = (_at(1, 1, 0, 2022), _at(31, 12, 0, 2023)) if k % 7 == 6 else _at(int(rng.integers(1, 6)),
                                                                                  hour=int(rng.integers(8, 12)))
        zone = {"proj:epsg": 32632} if k % 3 == 0 else {"proj:code": "EPSG:32633"} if k % 3 == 1 else {}
        cloud = None if k % 4 == 3 else float(rng.integers(0, 60))
        items.append(_item(f"i{k:02d}", when, geom, cloud, **zone))
    footprints = []
    for k in range(36):
        west = 179.75 + rng.integers(0, 5) * 0.05 if k % 6 == 5 else 10 + rng.integers(0, 18) * 0.05
        south = rng.integers(0, 9) * 0.05
        footprints.append(box(west, south, west + rng.integers(1, 5) * 0.05 + 0.01 * (k % 2),
                              south + rng.integers(1, 4) * 0.05))
    return items, footprints


@pytest.mark.parametrize("coverage", [0.0, 0.5, 1.0])
def test_the_block_s_candidates_choose_what_the_plain_rule_chooses(coverage: float) -> None:
    recipe = _recipe({"s2": {"type": "least_cloudy", "max_cloud_cover": 40, "min_coverage": coverage},
                      "s1": {"type": "nearest", "tolerance_days": 2, "min_coverage": coverage},
                      "lc": {"type": "same_year", "min_coverage": coverage},
                      "dem": {"type": "static", "min_coverage": coverage}})
    items, footprints = _tangle(np.random.default_rng(19))
    shared = Candidates(items)  # one per block and modality, as align does: its unions are reused across samples
    assert [shared.intersecting(f) for f in footprints] == [
        [k for k, i in enumerate(items) if _choose_before(recipe, "dem", [i], f, EPSG, None) != NoChoice(
            "no item intersects the sample")] for f in footprints]
    chosen, refused = set(), set()
    for name, anchor in [("s2", None), ("s1", _at(3)), ("lc", _at(3)), ("dem", None), ("s1", None)]:
        for f in footprints:
            for epsg in (32632, 32633):
                fast = choose(recipe, name, shared, f, epsg, anchor)
                plain = choose(recipe, name, items, f, epsg, anchor)
                before = _choose_before(recipe, name, items, f, epsg, anchor)
                assert fast == plain == before, (name, f.bounds, epsg)
                (chosen if isinstance(before, Choice) else refused).add(name)
    assert chosen == {"s2", "s1", "lc", "dem"}  # the case exercises every rule both ways
    assert refused >= ({"s1"} if coverage < 1 else {"s2", "s1", "lc", "dem"})
