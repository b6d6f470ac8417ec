"""What the browser serves, as data: a cube opened read-only, with an optional token store, store of generated
modalities and embeddings, answering
in JSON-able dicts and PNG bytes. The web app (:mod:`.app`) and the static export (:mod:`.export`) both read
through :class:`CubeBrowser`; neither touches a file named by a request: sample ids and modality names are looked
up in the cube's own lists, and an unknown one is a :class:`NotFound`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import xarray as xr

from eo_dataset._version import __version__
from eo_dataset.cube.manifest import MANIFEST_DIR
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.errors import CubeError
from eo_dataset.spec.meaning import DisplaySpec
from eo_dataset.view.browse.generated import GeneratedStore
from eo_dataset.view.browse.index import MAX_POINTS, CubeIndex, Query
from eo_dataset.view.browse.render import Picture, render, token_map

CACHE_PICTURES = 512  #: rendered (sample, modality) pictures kept in memory
NEIGHBOURS = 6


class NotFound(CubeError, LookupError):
    """A sample, modality or picture the cube does not have (the web app answers 404)."""


class CubeBrowser:
    """A cube (local path or URL, read-only) and what is attached to it.

    Args:
        cube: The cube.
        tokens: A token store of ``eo-models tokenize`` over this cube: its token maps are shown.
        generated: A store of ``eo-models generate`` over this cube: each generated modality is shown beside the
            truth, drawn by the same display spec; generated captions beside the caption.
        embeddings: A Zarr store with ``embedding (sample, dim)`` and ``sample_id``: nearest neighbours are shown.
        max_points: Above this many matched samples the overview map aggregates.

    Raises:
        CubeError: not a cube, or a token store / generated store / embeddings store that does not fit it.
    """

    def __init__(self, cube: str | os.PathLike[str], *, tokens: str | os.PathLike[str] | None = None,
                 generated: str | os.PathLike[str] | None = None, embeddings: str | os.PathLike[str] | None = None,
                 max_points: int = MAX_POINTS) -> None:
        self.path = os.fspath(cube)
        self.ds = _open(self.path, "cube")
        self.meta = CubeMeta.from_attrs(self.ds.attrs, self.path)
        if self.meta.store != "cube":
            raise CubeError(f"{self.path} is an eo-dataset {self.meta.store} store, not a cube; browse a cube (and "
                            "attach a token store with --tokens)")
        self.index = CubeIndex(self.ds, self.meta, max_points)
        self.tokens = _Tokens(tokens, self.index) if tokens is not None else None
        self.generated = GeneratedStore(generated, _open(os.fspath(generated), "--generated"), self.ds, self.meta,
                                        self.index.ids) if generated is not None else None
        self.embeddings = _Embeddings(embeddings, self.index) if embeddings is not None else None
        self._pictures: OrderedDict[tuple[int, str, str], Picture] = OrderedDict()
        self._lock = threading.Lock()
        manifest = self._build_record("manifest.json")
        self._shard_samples = int(manifest["shard_samples"]) if manifest else None

    # -- the overview --------------------------------------------------------------------------------------------
    def cube(self) -> dict[str, Any]:
        """What the overview needs once: name, counts, modalities, extent, dates, attachments."""
        ix = self.index
        modalities = []
        for m, mm in self.meta.modalities.items():
            var = self.ds[m]
            modalities.append({"name": m, "title": mm.title, "kind": mm.kind, "collection": mm.collection,
                               "resolution_m": mm.resolution_m, "shape": [int(v) for v in var.shape[-2:]],
                               "count": int(ix.available[m].sum())})
        recipe = self.meta.recipe or {}
        return {"name": Path(self.path.rstrip("/")).name, "title": self.meta.title, "n": ix.n,
                "recipe": recipe.get("name"), "recipe_hash": self.meta.recipe_hash, "built_by": self.meta.version,
                "browser": __version__, "anchor": self.meta.anchor, "modalities": modalities, "bbox": ix.bbox(),
                "dates": ix.date_range(), "max_points": ix.max_points,
                "tokens": self.tokens is not None, "embeddings": self.embeddings is not None,
                "generated": self.generated.summary() if self.generated is not None else None}

    def query(self, params: dict[str, str]) -> dict[str, Any]:
        """The overview for URL parameters (see :class:`~.index.Query`).

        Raises:
            CubeError: a bad parameter or an unknown modality.
        """
        return self.index.query(Query.from_params(params))

    # -- one sample ----------------------------------------------------------------------------------------------
    def position(self, sample_id: str) -> int:
        """The sample's position in the cube.

        Raises:
            NotFound: no such sample.
        """
        i = self.index.position.get(sample_id)
        if i is None:
            raise NotFound(f"no sample {sample_id!r} in the cube")
        return i

    def sample(self, sample_id: str) -> dict[str, Any]:
        """The sample page's data: where, when, caption, and per modality its picture, legend and provenance.

        Raises:
            NotFound: no such sample.
        """
        i = self.position(sample_id)
        ix = self.index
        anchor = _time(ix.anchor_time[i])
        reasons = self.reasons(i)
        modalities = []
        for m, mm in self.meta.modalities.items():
            entry: dict[str, Any] = {"name": m, "title": mm.title, "kind": mm.kind, "collection": mm.collection,
                                     "resolution_m": mm.resolution_m, "licence": mm.licence,
                                     "shape": [int(v) for v in self.ds[m].shape[-2:]],
                                     "available": bool(ix.available[m][i])}
            if entry["available"]:
                pic = self.picture(sample_id, m)
                t = _time(ix.times[m][i])
                static = (mm.rule or {}).get("type") == "static"
                entry |= {"image": _img(sample_id, f"{m}.png"), "overlay": _img(sample_id, f"{m}.valid.png"),
                          "legend": pic.legend, "valid_fraction": pic.valid_fraction, "time": _iso(t),
                          "static": static, "gap_days": None if static else _gap(t, anchor),
                          "items": [x for x in str(self.ds[f"{m}_item"][i].values).split(",") if x]}
            else:
                entry["reason"] = reasons.get(m, "no reason recorded")
            modalities.append(entry)
        out = {"id": sample_id, "position": i, "cell": str(ix.cells[i]), "epsg": int(ix.epsg[i]),
               "lon": float(ix.lon[i]), "lat": float(ix.lat[i]), "x0": float(ix.x0[i]), "y0": float(ix.y0[i]),
               "footprint": [[float(a), float(b)] for a, b in ix.rings[i]],
               "anchor": _iso(anchor), "anchor_modality": self.meta.anchor, "caption": str(ix.captions[i]),
               "previous": str(ix.ids[i - 1]) if i > 0 else None,
               "next": str(ix.ids[i + 1]) if i + 1 < ix.n else None, "modalities": modalities}
        if self.tokens is not None:
            out["tokens"] = self.tokens.describe(sample_id)
        if self.generated is not None:
            out["generated"] = self.generated_entries(sample_id)
        if self.embeddings is not None:
            out["neighbours"] = self.embeddings.neighbours(sample_id)
        return out

    def picture(self, sample_id: str, modality: str) -> Picture:
        """The rendered modality of a sample (cached).

        Raises:
            NotFound: no such sample or modality, or the sample lacks the modality.
        """
        i = self.position(sample_id)
        if modality not in self.meta.modalities:
            raise NotFound(f"no modality {modality!r} in the cube; it has {list(self.meta.modalities)}")
        if not self.index.available[modality][i]:
            raise NotFound(f"sample {sample_id} has no {modality}")
        return self._cached((i, "cube", modality), lambda: render(
            self.meta.modalities[modality], self.ds[[modality, f"{modality}_valid"]].isel(sample=i).load()))

    def generated_picture(self, sample_id: str, modality: str) -> Picture:
        """The generated modality of a sample (cached), drawn by the truth's display spec; where the spec gives no
        value range, with the range of the sample's truth (when it has one), so that their colours compare.

        Raises:
            NotFound: no generated store, no such sample, or no generated ``modality`` for the sample.
        """
        i = self.position(sample_id)
        g = self.generated
        if g is None:
            raise NotFound("no store of generated modalities attached (eo-dataset browse --generated STORE)")
        if not g.has(i, modality):
            raise NotFound(f"no generated {modality!r} for sample {sample_id!r} in {g.path}")

        def draw() -> Picture:
            meta = self.meta.modalities[modality]
            if self.index.available[modality][i]:
                span = self.picture(sample_id, modality).legend.get("range")
                if span is not None and (meta.display is None or meta.display.range is None):
                    display = meta.display or DisplaySpec()
                    meta = meta.model_copy(update={"display": display.model_copy(update={"range": tuple(span)})})
            return render(meta, g.sample(i, modality))

        return self._cached((i, "generated", modality), draw)

    def generated_entries(self, sample_id: str) -> dict[str, Any]:
        """The sample page's generated modalities (provenance, crop, picture URLs, legends) and caption.

        Raises:
            NotFound: no generated store or no such sample.
        """
        i = self.position(sample_id)
        g = self.generated
        if g is None:
            raise NotFound("no store of generated modalities attached (eo-dataset browse --generated STORE)")
        entries = []
        for m in g.modalities:
            entry = g.describe(i, m)
            if entry["available"]:
                pic = self.generated_picture(sample_id, m)
                entry |= {"image": _img(sample_id, f"generated/{m}.png"),
                          "overlay": _img(sample_id, f"generated/{m}.valid.png"), "legend": pic.legend,
                          "valid_fraction": pic.valid_fraction, "shape": list(pic.shape)}
            entries.append(entry)
        return {"store": g.summary()["store"], "complete": g.complete, "modalities": entries,
                "caption": g.caption_of(i)}

    def _cached(self, key: tuple[int, str, str], draw: Any) -> Picture:
        with self._lock:
            if key in self._pictures:
                self._pictures.move_to_end(key)
                return self._pictures[key]
        pic = draw()
        with self._lock:
            self._pictures[key] = pic
            while len(self._pictures) > CACHE_PICTURES:
                self._pictures.popitem(last=False)
        return pic

    def image(self, sample_id: str, name: str) -> bytes:
        """PNG bytes of picture ``name`` of a sample: ``<m>.png`` (the modality) or ``<m>.valid.png`` (its overlay).

        Raises:
            NotFound: anything else.
        """
        if name.endswith(".valid.png"):
            return self.picture(sample_id, name[: -len(".valid.png")]).overlay
        if name.endswith(".png"):
            return self.picture(sample_id, name[: -len(".png")]).png
        raise NotFound(f"no picture {name!r}; pictures are <modality>.png and <modality>.valid.png")

    def generated_image(self, sample_id: str, name: str) -> bytes:
        """PNG bytes of generated picture ``name`` of a sample: ``<m>.png`` or ``<m>.valid.png`` (its overlay).

        Raises:
            NotFound: anything else.
        """
        if name.endswith(".valid.png"):
            return self.generated_picture(sample_id, name[: -len(".valid.png")]).overlay
        if name.endswith(".png"):
            return self.generated_picture(sample_id, name[: -len(".png")]).png
        raise NotFound(f"no generated picture {name!r}; they are <modality>.png and <modality>.valid.png")

    def token_image(self, sample_id: str, name: str) -> bytes:
        """PNG of the token map ``<m>.png`` of a sample.

        Raises:
            NotFound: no token store, or no tokens of that modality for that sample.
        """
        if self.tokens is None:
            raise NotFound("no token store attached (eo-dataset browse --tokens STORE)")
        if not name.endswith(".png"):
            raise NotFound(f"no token map {name!r}; token maps are <modality>.png")
        return self.tokens.image(sample_id, name[: -len(".png")])

    def reasons(self, i: int) -> dict[str, str]:
        """Why sample ``i`` lacks what it lacks: its own block's entry in the build manifest (a planet cube has
        ~70,000 entries; one is read)."""
        if self._shard_samples is None:
            return {}
        entry = self._build_record(f"blocks/{i // self._shard_samples:06d}.json") or {}
        return dict(entry.get("missing", {}).get(str(self.index.ids[i]), {}))

    def _build_record(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the cube's build manifest (``_build/<name>``, a name made here, never from a request), from
        a local cube or over HTTP; None when there is none."""
        if "://" not in self.path:
            path = Path(self.path) / MANIFEST_DIR / name
            return json.loads(path.read_text()) if path.is_file() else None
        import fsspec

        try:
            with fsspec.open(f"{self.path.rstrip('/')}/{MANIFEST_DIR}/{name}", "rt") as f:
                return json.load(f)
        except (OSError, ValueError):  # not there (FileNotFoundError), unreadable, not JSON
            return None


class _Tokens:
    """A token store of ``eo-models tokenize`` (read with xarray: eo_dataset does not depend on eo_models)."""

    def __init__(self, path: str | os.PathLike[str], index: CubeIndex) -> None:
        self.path = os.fspath(path)
        self.ds = _open(self.path, "--tokens")
        meta = CubeMeta.from_attrs(self.ds.attrs, self.path)
        if meta.store != "tokens":
            raise CubeError(f"--tokens {self.path}: expected a token store written by 'eo-models tokenize', found "
                            f"an eo-dataset {meta.store}")
        self.info = dict(self.ds.attrs.get("tokenizers") or {})
        # image token maps (sample, ty, tx); caption tokens are a sequence, not a map
        self.modalities = [m for m in self.info if f"{m}_tokens" in self.ds and self.ds[f"{m}_tokens"].ndim == 3]
        ids = [str(i) for i in self.ds["sample_id"].values]
        self.position = {sid: i for i, sid in enumerate(ids)}
        if not set(ids) & set(index.position):
            raise CubeError(f"--tokens {self.path}: none of its {len(ids)} samples is in the cube; expected the "
                            "token store of this cube")

    def describe(self, sample_id: str) -> list[dict[str, Any]]:
        i = self.position.get(sample_id)
        out = []
        for m in self.modalities:
            has = i is not None and bool(self.ds[f"{m}_available"].values[i])
            t = self.info[m]
            out.append({"modality": m, "available": has, "grid": list(self.ds[f"{m}_tokens"].shape[1:]),
                        "codebook_size": self.codebook_size(m), "crop_px": t.get("crop_px"),
                        "image": _img(sample_id, f"tokens/{m}.png") if has else None})
        return out

    def image(self, sample_id: str, modality: str) -> bytes:
        i = self.position.get(sample_id)
        if modality not in self.modalities or i is None or not bool(self.ds[f"{modality}_available"].values[i]):
            raise NotFound(f"no {modality!r} tokens for sample {sample_id!r} in the token store")
        tokens = np.asarray(self.ds[f"{modality}_tokens"][i].values)
        return token_map(tokens, self.codebook_size(modality))

    def codebook_size(self, m: str) -> int:
        return int(self.info[m].get("codebook_size") or self.ds[f"{m}_tokens"].attrs.get("codebook_size") or 0)


class _Embeddings:
    """Embeddings ``embedding (sample, dim)`` with ``sample_id``; nearest neighbours by cosine similarity."""

    def __init__(self, path: str | os.PathLike[str], index: CubeIndex) -> None:
        self.path = os.fspath(path)
        ds = _open(self.path, "--embeddings")
        if "embedding" not in ds or ds["embedding"].ndim != 2 or "sample_id" not in ds.variables:
            raise CubeError(f"--embeddings {self.path}: expected a variable 'embedding' (sample, dim) and "
                            f"'sample_id'; found {sorted(ds.data_vars)}")
        self.ids = [str(i) for i in ds["sample_id"].values]
        x = np.asarray(ds["embedding"].values, dtype=np.float64)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        self.unit = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
        self.position = {sid: i for i, sid in enumerate(self.ids)}
        self.in_cube = np.array([sid in index.position for sid in self.ids])
        if not self.in_cube.any():
            raise CubeError(f"--embeddings {self.path}: none of its {len(self.ids)} samples is in the cube")

    def neighbours(self, sample_id: str, k: int = NEIGHBOURS) -> list[dict[str, Any]]:
        i = self.position.get(sample_id)
        if i is None:
            return []
        sim = self.unit @ self.unit[i]
        sim[i] = -np.inf
        sim[~self.in_cube] = -np.inf
        order = np.argsort(-sim, kind="stable")[:k]
        return [{"id": self.ids[j], "similarity": float(sim[j])} for j in order if np.isfinite(sim[j])]


def _open(path: str, what: str) -> xr.Dataset:
    if "://" not in path and not (Path(path) / "zarr.json").is_file():
        raise CubeError(f"{'' if what == 'cube' else what + ' '}{path} is not a Zarr v3 store (no zarr.json); "
                        f"expected {'a cube built by eo-dataset' if what == 'cube' else 'a store of this cube'}")
    try:
        return xr.open_zarr(path, zarr_format=3, chunks=None)
    except (OSError, ValueError, KeyError) as exc:
        raise CubeError(f"{path} cannot be read as a Zarr v3 store ({type(exc).__name__}: {exc})") from None


def _img(sample_id: str, name: str) -> str:
    return f"img/{quote(sample_id, safe='')}/{name}"


def _time(v: Any) -> np.datetime64 | None:
    t = np.asarray(v).astype("datetime64[ns]")
    return None if np.isnat(t) else t


def _iso(t: np.datetime64 | None) -> str | None:
    return None if t is None else np.datetime_as_string(t, unit="s") + "Z"


def _gap(t: np.datetime64 | None, anchor: np.datetime64 | None) -> float | None:
    if t is None or anchor is None:
        return None
    days = float((t - anchor) / np.timedelta64(1, "s")) / 86400.0
    return days if math.isfinite(days) else None
