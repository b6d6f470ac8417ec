"""The offline demo world: synthetic COGs, static STAC catalogs and an OSM extract that the demo recipe builds."""

from eo_dataset.demo.scaled import make_scaled_world
from eo_dataset.demo.world import demo_sources, make_world

__all__ = ["demo_sources", "make_scaled_world", "make_world"]
