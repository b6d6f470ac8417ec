"""The ``eo-dataset`` command line."""

from eo_dataset.cli.main import main, parser

__all__ = ["main", "parser"]
