"""Opening the cube a command reads, with one message for every way a path can fail to be an eo-dataset cube.

A cube is a Zarr v3 store (a folder with ``zarr.json``, or a URL) whose root attrs carry ``modalities`` and
``grid``, as ``eo-dataset build`` and ``eo-dataset demo`` write them. :func:`open_cube` checks a local path before
opening it, so a typo or a folder of something else reads "X is not an eo-dataset cube ..." rather than zarr's
"No group found".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.errors import CubeError, OutputError
from eo_models.errors import ConfigError


class NotACubeError(CubeError, ConfigError):
    """A ``cube`` argument is not an eo-dataset cube (nothing there, not a Zarr store, a Zarr store of something
    else): both eo_dataset's :class:`~eo_dataset.errors.CubeError` and a :class:`~eo_models.errors.ConfigError`."""


HINT = "build one with 'eo-dataset demo' (the demo cube, demo.zarr) or 'eo-dataset build RECIPE --out CUBE'"


def _is_url(cube: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(cube)


def check_local(cube: str | os.PathLike[str]) -> None:
    """Raise :class:`NotACubeError` unless a local ``cube`` is a folder with ``zarr.json`` (URLs pass)."""
    if _is_url(cube):
        return
    path = Path(cube)
    if not path.exists():
        raise NotACubeError(f"{os.fspath(cube)} is not an eo-dataset cube: there is nothing at that path; {HINT}")
    if not path.is_dir():
        raise NotACubeError(f"{os.fspath(cube)} is not an eo-dataset cube: it is a file (a cube is a Zarr v3 "
                            f"folder); {HINT}")
    if not (path / "zarr.json").is_file():
        raise NotACubeError(f"{os.fspath(cube)} is not an eo-dataset cube: a folder without zarr.json (a cube is a "
                            f"Zarr v3 store); {HINT}")


@contextmanager
def open_cube(cube: str | os.PathLike[str], *, schema: bool = True) -> Iterator[xr.Dataset]:
    """The cube's lazy dataset (closed on leaving the ``with`` block).

    Args:
        cube: A local path or an fsspec URL.
        schema: Also require the eo-dataset root attrs (``modalities``, ``grid``); False for readers that need
            only a variable (the caption tokenizer).

    Raises:
        NotACubeError: nothing there, a file, a folder or URL that is not a Zarr v3 store, or (``schema``) a Zarr
            store without the eo-dataset attrs.
    """
    from eo_dataset.torch.handle import open_metadata

    check_local(cube)
    with ExitStack() as stack:
        try:
            ds = stack.enter_context(open_metadata(cube))
        except CubeError as exc:  # open_metadata's own message: a URL that holds no Zarr v3 store
            raise NotACubeError(f"{os.fspath(cube)} is not an eo-dataset cube: {exc}") from exc
        except (OSError, ValueError, KeyError) as exc:  # zarr and xarray raise these for foreign or damaged stores
            raise NotACubeError(f"{os.fspath(cube)} is not an eo-dataset cube: it cannot be read as a Zarr v3 store "
                                f"({type(exc).__name__}: {exc}); {HINT}") from exc
        if schema:
            cube_meta(ds, cube)
        yield ds


def cube_meta(ds: xr.Dataset, cube: str | os.PathLike[str]) -> CubeMeta:
    """The metadata of an opened cube (:class:`~eo_dataset.cube.schema.CubeMeta`).

    Raises:
        NotACubeError: the store is not an eo-dataset cube.
    """
    try:
        meta = CubeMeta.from_attrs(ds.attrs, os.fspath(cube))
    except CubeError as exc:
        raise NotACubeError(f"{os.fspath(cube)} is a Zarr store but not an eo-dataset cube ({exc}); {HINT}") from None
    if meta.store != "cube":
        raise NotACubeError(f"{os.fspath(cube)} is an eo-dataset {meta.store} store, not a cube; {HINT}")
    return meta


def check_cube(cube: str | os.PathLike[str], *, schema: bool = True) -> None:
    """Raise :class:`NotACubeError` unless ``cube`` opens as an eo-dataset cube (see :func:`open_cube`)."""
    with open_cube(cube, schema=schema):
        pass


def store_attrs(path: Path, kind: str, what: str, option: str = "--out") -> dict[str, Any]:
    """The root attrs of ``path``, a folder with a ``zarr.json`` that must be an eo-models store of ``kind`` (the
    ``store`` of its :class:`~eo_dataset.cube.schema.CubeMeta`: ``tokens``, ``generated``, ``embeddings``).

    Raises:
        OutputError: another Zarr store (a cube, a store of another kind) or damaged metadata; it is left untouched.
    """
    refuse = f"; it is left untouched: choose a new or empty folder for {option}"
    try:
        attrs = zarr.open_group(path, mode="r", zarr_format=3).attrs.asdict()
    except Exception as exc:  # zarr raises several types for foreign or damaged metadata
        raise OutputError(f"{option} {path} holds a zarr.json that cannot be read as a {what} "
                          f"({type(exc).__name__}: {exc}){refuse}") from exc
    try:
        store = CubeMeta.from_attrs(attrs, str(path)).store
    except CubeError:
        store = None
    if store != kind:
        found = {None: "a Zarr store", "cube": "an eo-dataset cube"}.get(store, f"an eo-models {store} store")
        raise OutputError(f"{option} {path} is {found}, not a {what}{refuse}")
    return attrs
