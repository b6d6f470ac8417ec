"""eo_dataset: build and load aligned multi-modal Earth-observation cubes (4M4EO).

The packages follow the data flow, each importing only from those before it:

- :mod:`eo_dataset.spec`: what to build (the recipe, its collections, the Major TOM grid);
- :mod:`eo_dataset.sources`: where STAC items come from (static catalogs, STAC APIs, snapshots, OSM), signing, retries;
- :mod:`eo_dataset.engine`: per sample, choose items (``select``), read them (``read``), align them (``align``),
  caption them (``captions``);
- :mod:`eo_dataset.cube`: the cube on disk (its schema, the store, the manifest, updates, statistics);
- :mod:`eo_dataset.pipeline`: a build from start to finish (``run``), its plan, snapshots of sources, coverage checks;
- :mod:`eo_dataset.torch`: PyTorch loading; :mod:`eo_dataset.cli`: the command line; :mod:`eo_dataset.demo`: the
  offline demo world.

The names below are imported lazily, so ``import eo_dataset`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from eo_dataset._version import __version__
from eo_dataset.errors import CubeError, EODatasetError, GridError, RecipeError, SourceError

_LAZY = {
    "BuildReport": "eo_dataset.pipeline.run", "build": "eo_dataset.pipeline.run",
    "Grid": "eo_dataset.spec.grid", "GridSpec": "eo_dataset.spec.grid", "Sample": "eo_dataset.spec.grid",
    "utm_epsg": "eo_dataset.spec.grid",
    "Recipe": "eo_dataset.spec.recipe", "load_recipe": "eo_dataset.spec.recipe",
    "parse_recipe": "eo_dataset.spec.recipe",
    "open_cube": "eo_dataset.cube.store",
}

__all__ = [
    "BuildReport", "CubeError", "EODatasetError", "Grid", "GridError", "GridSpec", "Recipe", "RecipeError",
    "Sample", "SourceError", "build", "load_recipe", "open_cube", "parse_recipe", "utm_epsg", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eo_dataset' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
