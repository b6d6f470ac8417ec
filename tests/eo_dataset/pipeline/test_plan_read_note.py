"""The caveat under ``eo-dataset plan --from-cube``'s CPU projection says what the measured build read (the
recipe's sources at local paths or URLs) and where it wrote (a local folder or object storage)."""

from __future__ import annotations

from eo_dataset.pipeline.plan import Measured, measure


def _measured(cube: str, local: tuple[str, ...] = (), remote: tuple[str, ...] = ()) -> Measured:
    return Measured(cube, 32, 0.3, {}, sources_local=local, sources_remote=remote)


def test_the_note_says_what_the_build_read_and_wrote() -> None:
    assert _measured("demo.zarr", ("demo", "osm")).read_note().startswith("the measurement reads local files;")
    on_s3 = _measured("s3://bucket/demo.zarr", ("demo", "osm")).read_note()
    assert on_s3.startswith("the measured build read local files and wrote to object storage (s3://bucket/demo.zarr)")
    assert "the measurement reads local files" not in on_s3
    remote = _measured("s3://bucket/c.zarr", (), ("pc",)).read_note()
    assert remote.startswith("the measured build read its sources over the network (pc) and wrote to object storage")
    mixed = _measured("c.zarr", ("osm",), ("pc",)).read_note()
    assert mixed.startswith("the measured build read osm from local files and pc over the network;")


def test_measure_finds_the_demo_recipes_local_sources(demo_cube) -> None:
    m = measure(demo_cube)
    assert set(m.sources_local) == {"demo", "canopy_tiles", "osm"} and m.sources_remote == ()
    assert m.read_note().startswith("the measurement reads local files;")  # the text docs/planet.md quotes
