"""Derived modalities in recipes: the expression language, its evaluation, and every rejection with its key path."""

from __future__ import annotations

import copy
import pickle
import re
from typing import Any

import numpy as np
import pytest

from eo_dataset import RecipeError
from eo_dataset.spec.derived import BandRef, DerivedError, derivation_order, parse_expression
from eo_dataset.spec.recipe import load_recipe, parse_recipe

NDVI = "(s2l2a.B08 - s2l2a.B04) / (s2l2a.B08 + s2l2a.B04)"


def recipe_data(**derived: dict[str, Any]) -> dict[str, Any]:
    """A small recipe (S2 + DEM) with derived modalities ``name -> modality mapping``."""
    data: dict[str, Any] = {
        "name": "t",
        "time": {"anchor": "s2l2a", "start": "2023-06-01", "end": "2023-08-31"},
        "sources": {"demo": {"type": "static_catalog", "href": "catalog.json"}},
        "modalities": {
            "s2l2a": {"collection": "sentinel-2-l2a-demo", "source": "demo", "resolution_m": 10,
                      "rule": {"type": "least_cloudy"}},
            "dem": {"collection": "cop-dem-glo-30", "source": "demo", "resolution_m": 30, "rule": {"type": "static"}},
        },
    }
    data["modalities"].update(copy.deepcopy(derived))
    return data


def ndvi(expression: str = NDVI, **extra: Any) -> dict[str, Any]:
    return {"collection": "ndvi", "resolution_m": 10, "derived": {"expression": expression}} | extra


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(RecipeError) as exc:
        parse_recipe(data)
    return str(exc.value).splitlines()[1:]


# -- accepted ----------------------------------------------------------------------------------------------------------
def test_ndvi_is_a_modality_of_the_recipe() -> None:
    r = parse_recipe(recipe_data(ndvi=ndvi()))
    m = r.modalities["ndvi"]
    assert m.derived.expression == NDVI and m.source is None and m.rule is None
    assert m.band_names == ("NDVI",) and m.storage_dtype == np.int16 and m.collection.scale == 0.0001
    assert m.derived.references() == (BandRef("s2l2a", "B08"), BandRef("s2l2a", "B04"))
    assert list(r.read_modalities) == ["s2l2a", "dem"] and r.derived_order == ["ndvi"]
    assert r.resolved()["modalities"]["ndvi"]["derived"] == {"inputs": {}, "expression": NDVI}
    assert "source" not in r.resolved()["modalities"]["ndvi"]  # a derived modality has no source or rule
    assert parse_recipe(r.resolved()) == r  # the recipe stored in a cube reads back the same
    assert pickle.loads(pickle.dumps(r)) == r  # shipped to Dask workers
    err = pickle.loads(pickle.dumps(DerivedError("x", ("a", "b", "a"))))
    assert str(err) == "x" and err.cycle == ("a", "b", "a")


def test_aliases_and_derived_from_derived() -> None:
    nd = ndvi("(nir - red) / (nir + red)")
    nd["derived"]["inputs"] = {"nir": "s2l2a.B08", "red": "s2l2a.B04"}
    veg = {"collection": "ndvi", "resolution_m": 10, "derived": {"expression": "where(ndvi.NDVI > 0.3, 1, 0)"}}
    r = parse_recipe(recipe_data(veg=veg, ndvi=nd))
    assert r.derived_order == ["ndvi", "veg"]  # after what it reads, whatever the YAML order
    assert r.modalities["ndvi"].derived.references() == (BandRef("s2l2a", "B08"), BandRef("s2l2a", "B04"))
    assert r.derived_from(["s2l2a"]) == ["ndvi", "veg"] and r.derived_from(["dem"]) == []


def test_bundled_recipes_keep_their_hash_and_the_corpus_has_ndvi() -> None:
    corpus = load_recipe("4m4eo")
    assert corpus.modalities["ndvi"].derived.references() == (BandRef("s2l2a", "B08"), BandRef("s2l2a", "B04"))
    assert corpus.captions is not None and corpus.modalities["s1grd"].collection.name == "sentinel-1-grd"
    assert all(m.derived is None for m in load_recipe("demo").modalities.values())


# -- the language ------------------------------------------------------------------------------------------------------
def test_evaluation_marks_undefined_pixels() -> None:
    a, b = BandRef("m", "a"), BandRef("m", "b")
    values = {a: np.array([1.0, 2.0, 0.0, -4.0]), b: np.array([1.0, -2.0, 0.0, 4.0])}
    out, ok = parse_expression("(m.a - m.b) / (m.a + m.b)").evaluate(values)
    assert np.array_equal(ok, [True, False, False, False])  # a divisor of 0 (also 0/0) is not defined
    assert out[0] == 0.0
    out, ok = parse_expression("where(m.a + m.b != 0, m.a / (m.a + m.b), -1)").evaluate(values)
    assert np.array_equal(ok, [True, True, True, True])  # the branch not taken does not count
    assert np.array_equal(out, [0.5, -1, -1, -1])
    out, ok = parse_expression("sqrt(m.a) + clip(m.b, 0, 1) * 2 ** 2 - abs(-3) % 2").evaluate(values)
    assert np.array_equal(ok, [True, True, True, False])  # sqrt(-4) is NaN
    assert np.allclose(out[:3], [1 + 4 - 1, np.sqrt(2) - 1, -1])
    out, ok = parse_expression("where((m.a > 0) & ~(m.b >= 1) | (m.a == -4), maximum(m.a, m.b), "
                               "minimum(log10(1 + m.a * 0), exp(0)))").evaluate(values)
    assert np.array_equal(out, [0, 2, 0, 4]) and ok.all()


@pytest.mark.parametrize(("expression", "message"), [
    ("(s2l2a.B08 - s2l2a.B04", "not an expression ("),
    ("", "expected an expression such as"),
    ("__import__('os').system('true')", "unknown function \"__import__('os').system\""),
    ("__import__('os')", "unknown function '__import__'"),
    ("s2l2a.B08.real", "expected a band reference modality.band such as s2l2a.B08 (no other attributes)"),
    ("s2l2a.B08 + nir", "unknown name 'nir': no aliases are declared"),
    ("s2l2a.B08 * 'x'", "found the constant 'x', expected numbers only"),
    ("s2l2a.B08 * True", "found the constant True, expected numbers only"),
    ("clip(s2l2a.B08, 0)", "clip() takes 3 positional argument(s), found 'clip(s2l2a.B08, 0)'"),
    ("sqrt(x=s2l2a.B08)", "sqrt() takes 1 positional argument(s)"),
    ("s2l2a.B08[0]", "Subscript ('s2l2a.B08[0]') is not allowed"),
    ("[x for x in s2l2a.B08]", "ListComp"),
    ("(lambda: 1)()", "unknown function"),
    ("s2l2a.B08 // 2", "operator FloorDiv is not allowed"),
    ("s2l2a.B08 if s2l2a.B04 else 0", "IfExp"),
    ("s2l2a.B08 is 0", "comparison Is is not allowed"),
    ("np.where(s2l2a.B08, 1, 0)", "unknown function 'np.where'"),
    ("1 + 2", "found '1 + 2', which reads no band"),
])
def test_bad_expressions_are_rejected_at_load_with_their_key_path(expression: str, message: str) -> None:
    found = problems(recipe_data(ndvi=ndvi(expression)))
    assert len(found) == 1 and found[0].startswith("  - modalities.ndvi.derived.expression: "), found
    assert message in found[0], found


@pytest.mark.parametrize(("modality", "path", "message"), [
    (ndvi("(s2l2a.B08 - s2l2a.B99) / 2"), "modalities.ndvi.derived.expression",
     "unknown band 'B99' of s2l2a; its bands are B01..B12"),
    (ndvi("s3.B08 - dem.elevation"), "modalities.ndvi.derived.expression",
     "unknown modality 's3' in 's3.B08'; the recipe's modalities are ['dem', 'ndvi', 's2l2a']"),
    (ndvi("nir", derived={"expression": "nir", "inputs": {"nir": "s2l2a.B88"}}), "modalities.ndvi.derived.inputs.nir",
     "unknown band 'B88' of s2l2a; its bands are B01..B12"),
    (ndvi("s2l2a.B08 - dem.elevation"), "modalities.ndvi.resolution_m",
     "found 10, but input modality 'dem' is at 30 m; expected the resolution of its inputs (30)"),
    (ndvi(resolution_m=20), "modalities.ndvi.resolution_m", "input modality 's2l2a' is at 10 m"),
    (ndvi("ndvi.NDVI * 2"), "modalities.ndvi.derived.expression",
     "derived modalities read each other in a cycle: ndvi -> ndvi"),
    ({"collection": "sentinel-2-l2a-demo", "resolution_m": 10, "derived": {"expression": "s2l2a.B02"}},
     "modalities.ndvi.bands", "a derived modality computes one band (its expression), found ['B01', "),
])
def test_bad_references_are_rejected_with_their_key_path(modality: dict[str, Any], path: str, message: str) -> None:
    found = problems(recipe_data(ndvi=modality))
    assert any(p.startswith(f"  - {path}: ") and message in p for p in found), found


def test_cycles_between_derived_modalities_are_rejected() -> None:
    a = {"collection": "ndvi", "resolution_m": 10, "derived": {"expression": "b.NDVI + s2l2a.B02"}}
    b = {"collection": "ndvi", "resolution_m": 10, "derived": {"expression": "a.NDVI"}}
    assert problems(recipe_data(a=a, b=b)) == [
        "  - modalities.a.derived.expression: derived modalities read each other in a cycle: a -> b -> a; a derived "
        "modality may read only read modalities or derived ones that do not read it"]
    with pytest.raises(DerivedError) as exc:
        derivation_order({"a": ("b",), "b": ("c",), "c": ("b",)})
    assert exc.value.cycle == ("b", "c", "b")


@pytest.mark.parametrize(("modality", "message"), [
    (ndvi(source="demo", rule={"type": "static"}), "modalities.ndvi: Value error, a derived modality is computed "
     "from other modalities, not read: found source, rule; remove them"),
    (ndvi(query={"x": {"eq": 1}}), "found query; remove it"),
    ({"collection": "ndvi", "resolution_m": 10}, "modalities.ndvi: Value error, missing source and rule: a "
     "modality is read from a source"),
    (ndvi(derived={"expression": "nir", "inputs": {"nir": "B08"}}),
     "modalities.ndvi.derived.inputs: Value error, alias 'nir': found 'B08', expected 'modality.band'"),
    (ndvi(derived={"expression": "sqrt", "inputs": {"sqrt": "s2l2a.B08"}}), "alias 'sqrt': expected a name"),
    (ndvi(derived={"expresion": NDVI}), "modalities.ndvi.derived.expresion: Extra inputs are not permitted"),
])
def test_derived_or_read_not_both(modality: dict[str, Any], message: str) -> None:
    found = problems(recipe_data(ndvi=modality))
    assert any(message in p for p in found), found


def test_the_anchor_cannot_be_derived() -> None:
    data = recipe_data(ndvi=ndvi())
    data["time"]["anchor"] = "ndvi"
    assert problems(data) == ["  - time.anchor: found the derived modality 'ndvi', expected a modality read from a "
                              "source (its scene dates the sample)"]


def test_error_lists_every_problem_and_names_the_file(tmp_path) -> None:
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_data(ndvi=ndvi("s2l2a.B99 / s2l2a.B04"))))
    with pytest.raises(RecipeError, match=re.escape(f"{path} is not a valid recipe:\n  - modalities.ndvi.derived."
                                                    "expression: unknown band 'B99' of s2l2a; its bands are "
                                                    "B01..B12")):
        load_recipe(path)


def test_the_documented_example_loads_into_the_demo_recipe() -> None:
    """docs/recipes.md's derived-modalities YAML, added to catalogs/demo.yaml, is a valid recipe."""
    from pathlib import Path

    import yaml

    from eo_dataset.spec.recipe import catalogs_dir

    docs = Path(__file__).resolve().parents[3] / "docs" / "recipes.md"
    section = docs.read_text().split("<!-- derived-modalities example", 1)[1]
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    data = yaml.safe_load((catalogs_dir() / "demo.yaml").read_text())
    data["modalities"] |= example["modalities"]
    r = parse_recipe(data, catalogs_dir())
    assert r.derived_order == ["ndvi", "ndwi"] and r.modalities["ndvi"].derived.expression == NDVI
    assert r.modalities["ndwi"].derived.references() == (BandRef("s2l2a", "B03"), BandRef("s2l2a", "B08"))
    assert r.modalities["ndwi"].collection.display.colormap == "BrBG"
