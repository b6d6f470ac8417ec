"""The installed version of eo-dataset (one place, imported by whatever writes it into a cube or a manifest)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eo-dataset")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
