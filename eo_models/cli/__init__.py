"""The ``eo-models`` command line."""

from eo_models.cli.main import main, parser

__all__ = ["main", "parser"]
