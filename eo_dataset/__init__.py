"""eo_dataset: build and load aligned multi-modal Earth-observation cubes (4M4EO).

The data flow: recipe -> grid -> sources -> select -> readers -> align -> store -> build.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eo-dataset")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from eo_dataset.build import BuildReport, build  # noqa: E402
from eo_dataset.errors import CubeError, EODatasetError, GridError, RecipeError, SourceError  # noqa: E402
from eo_dataset.grid import Grid, GridSpec, Sample, utm_epsg  # noqa: E402
from eo_dataset.recipe import Recipe, load_recipe, parse_recipe  # noqa: E402
from eo_dataset.store import open_cube  # noqa: E402

__all__ = [
    "BuildReport", "CubeError", "EODatasetError", "Grid", "GridError", "GridSpec", "Recipe", "RecipeError",
    "Sample", "SourceError", "build", "load_recipe", "open_cube", "parse_recipe", "utm_epsg", "__version__",
]
