"""A token store for PyTorch: what each modality's tokens are (:class:`TokenSpec`) and a map-style dataset of them.

:class:`TokenDataset` serves a complete store of ``eo-models tokenize`` (:mod:`eo_models.tokens.store`). Each item
is one sample's dict:

=====================  ==================  ===========================================================================
key                    shape, dtype        meaning
=====================  ==================  ===========================================================================
``<m>``                ``(L_m,)`` int64    token ids: an image modality's ``(ty, tx)`` grid flattened row-major
                                           (``L_m = ty * tx``), the caption's ids in order (``L_m`` = the caption
                                           tokenizer's ``max_length``); ``-1`` where there is no token (the sample
                                           lacks the modality; caption positions past its end)
``<m>_available``      ``()`` bool         the sample has the modality
``<m>_valid``          ``(L_m,)`` float32  fraction of valid pixels under each image token; 1.0 for real caption
                                           tokens; 0.0 wherever the id is ``-1``
``index``              ``()`` int64        the sample's index in the cube (and in the store)
=====================  ==================  ===========================================================================

so ``DataLoader(TokenDataset(store), batch_size=B)`` (torch's default collate) yields token batches: ``<m>``
``(B, L_m)``, ``<m>_available`` ``(B,)``, ``<m>_valid`` ``(B, L_m)``, ``index`` ``(B,)``. The dataset also has
``modalities``, ``availability`` (``(N, M)`` bool) and ``shard_samples``, so
:class:`~eo_dataset.torch.ShardSampler` and :func:`~eo_dataset.torch.indices_with` work on it as on a cube.

**Reading.** When the token ids and validity of the chosen modalities take at most ``max_memory`` bytes
(:data:`MAX_MEMORY`, 256 MiB: about 40,000 samples of one 33 x 33 image modality, which costs 6.5 kB per sample),
they are read whole into memory when the dataset is made (``in_memory=True`` forces it, ``False`` never does).
Otherwise they are read from the store for each batch: a DataLoader batch (``__getitems__``) in spans of neighbouring
samples, one Zarr selection per span and array, through one Zarr handle per process (opened lazily, so each
DataLoader worker opens its own). Availability is always in memory (one byte per sample and modality).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
from torch import Tensor
from torch.utils.data import Dataset

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.cube.storage import is_object_url, open_version
from eo_dataset.errors import CubeError
from eo_dataset.torch.dataset import read_spans
from eo_dataset.torch.handle import CubeHandle, is_url
from eo_models.errors import ConfigError
from eo_models.tokens.store import FORMAT

MAX_MEMORY = 256 * 2**20  #: stores whose tokens and validity fit in this many bytes are read whole into memory
_TOKENIZE = "write one with 'eo-models tokenize --cube CUBE --tokenizers TOKENIZER ... --out STORE'"


@dataclass(frozen=True)
class TokenSpec:
    """What one modality's tokens are, as a token store (or :class:`~eo_models.tokens.online.OnlineTokens`) has them.

    Attributes:
        name: The modality (the cube's name for it).
        kind: ``"image"`` (a token grid) or ``"sequence"`` (the caption).
        vocab_size: Number of distinct token ids (an image tokenizer's codebook size, the caption vocabulary).
        grid: ``(ty, tx)`` tokens of an image modality (``None`` for sequences).
        length: Tokens of a sequence (the caption tokenizer's ``max_length``; ``None`` for images).
        source: Where the tokenizer was loaded from (a folder, a Hub repo id, ``<Tokenizer object>``).
        digest: What tells the tokenizer apart: the sha256 of an image tokenizer's weights (``weights_sha256``), of a
            caption tokenizer's vocabulary (``vocab_sha256``).
        crop_px: The centre crop an image tokenizer reads, in base pixels of the grid (``None`` for sequences).
        crop_offset_px: That crop's ``(row, col)`` offset in base pixels: image token ``(i, j)`` covers base pixels
            ``crop_offset_px + (i, j) * crop_px / grid`` of the sample footprint.
        special_ids: A sequence's special tokens, ``(role, id)`` pairs (``pad``, ``unk``, ``cls``, ``sep``,
            ``mask``); empty for images.
    """

    name: str
    kind: Literal["image", "sequence"]
    vocab_size: int
    grid: tuple[int, int] | None = None
    length: int | None = None
    source: str = ""
    digest: str = ""
    crop_px: int | None = None
    crop_offset_px: tuple[int, int] | None = None
    special_ids: tuple[tuple[str, int], ...] = ()

    @property
    def num_tokens(self) -> int:
        """``L_m``, the token ids per sample: ``ty * tx`` for images, ``length`` for sequences."""
        if self.grid is not None:
            return self.grid[0] * self.grid[1]
        return int(self.length or 0)

    def special_id(self, role: str) -> int:
        """The id of a sequence's special token by role (``pad``, ``unk``, ``cls``, ``sep``, ``mask``).

        Raises:
            KeyError: no such role (an image modality has none).
        """
        ids = dict(self.special_ids)
        if role not in ids:
            raise KeyError(f"{self.name} has no special token {role!r}; it has {sorted(ids)}")
        return ids[role]

    @classmethod
    def from_attrs(cls, name: str, attrs: Mapping[str, Any]) -> TokenSpec:
        """From a token store's ``tokenizers.<m>`` attrs.

        Raises:
            ConfigError: the attrs are not those of this layout.
        """
        try:
            if attrs["kind"] == "image":
                ty, tx = attrs["token_grid"]
                r, c = attrs["crop_offset_px"]
                return cls(name, "image", int(attrs["codebook_size"]), grid=(int(ty), int(tx)),
                           source=str(attrs.get("source", "")), digest=str(attrs["weights_sha256"]),
                           crop_px=int(attrs["crop_px"]), crop_offset_px=(int(r), int(c)))
            if attrs["kind"] == "sequence":
                special = tuple((str(k), int(v)) for k, v in attrs.get("special_ids", {}).items())
                return cls(name, "sequence", int(attrs["vocab_size"]), length=int(attrs["max_length"]),
                           source=str(attrs.get("source", "")), digest=str(attrs["vocab_sha256"]),
                           special_ids=special)
            raise ValueError(f"kind {attrs['kind']!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"tokenizers.{name} of the token store: expected the attrs of layout {FORMAT} (kind "
                              f"'image' or 'sequence' with its sizes and digest), found a problem with {exc}") from None


def read_store_attrs(store: str | os.PathLike[str], *, complete: bool = True) -> dict[str, Any]:
    """The root attrs of a token store of this layout.

    Args:
        store: A token store (local path or URL; at an ``s3://``, ``gs://`` or ``az://`` URL, the published version
            of the icechunk repository ``eo-models tokenize`` wrote there).
        complete: Also require that every block was written.

    Raises:
        ConfigError: nothing there, not a token store, a store of another layout, or (``complete``) an unfinished
            one.
    """
    where = os.fspath(store)
    location: Any = store
    if is_object_url(where):  # an icechunk repository: its published version (only ever a complete store)
        try:
            location = open_version(where)
        except CubeError as exc:
            raise ConfigError(f"{where} holds no finished token store ({exc}); {_TOKENIZE}") from None
    elif not is_url(store) and not (Path(store) / "zarr.json").is_file():
        what = "nothing there" if not Path(store).exists() else "no zarr.json in it"
        raise ConfigError(f"{where} is not a token store ({what}); {_TOKENIZE}")
    try:
        attrs = zarr.open_group(location, mode="r", zarr_format=3).attrs.asdict()
        kind = CubeMeta.from_attrs(attrs, where).store
    except CubeError as exc:
        raise ConfigError(f"{where} is not a token store ({exc}); {_TOKENIZE}") from None
    except Exception as exc:  # zarr and fsspec raise many types for foreign or damaged stores
        raise ConfigError(f"{where} is not a token store: it cannot be read as a Zarr v3 store "
                          f"({type(exc).__name__}: {exc}); {_TOKENIZE}") from exc
    if kind != "tokens":
        raise ConfigError(f"{where} is an eo-dataset {kind} store, not a token store; {_TOKENIZE}")
    if attrs.get("eo_models_tokens") != FORMAT:
        raise ConfigError(f"{where} is a token store of layout {attrs.get('eo_models_tokens')}, this eo-models reads "
                          f"layout {FORMAT} (per-token validity, captions); tokenize the cube again into a new --out")
    if complete and not attrs.get("complete"):
        raise ConfigError(f"{where} is an unfinished token store (complete: false); finish it by rerunning the "
                          "'eo-models tokenize' that wrote it (same cube and tokenizers: it resumes)")
    return attrs


def token_specs(store: str | os.PathLike[str]) -> dict[str, TokenSpec]:
    """``{modality: TokenSpec}`` of a token store, in the order the store was written with.

    Raises:
        ConfigError: not a token store of this layout (an unfinished one is fine).
    """
    attrs = read_store_attrs(store, complete=False)
    return {m: TokenSpec.from_attrs(m, t) for m, t in (attrs.get("tokenizers") or {}).items()}


class TokenDataset(Dataset[dict[str, Tensor]]):
    """The samples of a complete token store as token dicts (see the module docstring for the keys).

    Args:
        store: A token store written by ``eo-models tokenize`` (local path or URL).
        modalities: Modalities to serve (default: all of the store's, in store order).
        in_memory: Read the tokens whole into memory now (``None``: when they fit in ``max_memory``).
        max_memory: Bytes of token ids and validity below which ``in_memory=None`` reads the store whole.

    Raises:
        ConfigError: not a token store of this layout, an unfinished one, or a modality it does not have.

    Example:
        >>> ds = TokenDataset("tokens.zarr")  # doctest: +SKIP
        >>> batch = next(iter(DataLoader(ds, batch_size=8)))  # doctest: +SKIP
        >>> batch["s2l2a"].shape, batch["s2l2a_valid"].dtype, batch["index"]  # doctest: +SKIP
        (torch.Size([8, 1089]), torch.float32, tensor([0, 1, 2, 3, 4, 5, 6, 7]))
    """

    def __init__(self, store: str | os.PathLike[str], modalities: Sequence[str] | None = None, *,
                 in_memory: bool | None = None, max_memory: int = MAX_MEMORY) -> None:
        attrs = read_store_attrs(store)
        specs = {m: TokenSpec.from_attrs(m, t) for m, t in (attrs.get("tokenizers") or {}).items()}
        if isinstance(modalities, str):
            modalities = [modalities]
        names = list(specs) if modalities is None else list(modalities)
        unknown = [m for m in names if m not in specs]
        if unknown or not names or len(set(names)) != len(names):
            raise ConfigError(f"modalities {names}: expected some of the store's {list(specs)}, each once"
                              + (f" ({unknown} are not in it)" if unknown else ""))
        self.location = os.fspath(store)
        self.modalities: list[str] = names
        self.specs: dict[str, TokenSpec] = {m: specs[m] for m in names}
        self.shard_samples = int(attrs["block_samples"])
        self.handle = CubeHandle(store)
        self.availability = np.stack([np.asarray(self.handle.array(f"{m}_available")[:], dtype=bool)
                                      for m in names], axis=1)
        n = len(self.availability)
        self.nbytes = n * sum(s.num_tokens * (4 + 2 * (s.kind == "image")) for s in self.specs.values())
        self.in_memory = self.nbytes <= max_memory if in_memory is None else bool(in_memory)
        self._arrays: dict[str, np.ndarray] | None = None
        if self.in_memory:
            self._arrays = {v: np.asarray(self.handle.array(v)[:]) for v in self._variables()}

    def _variables(self) -> list[str]:
        return [f"{m}_{part}" for m in self.modalities
                for part in (("tokens", "valid") if self.specs[m].kind == "image" else ("tokens",))]

    def __len__(self) -> int:
        return len(self.availability)

    def __repr__(self) -> str:
        how = "in memory" if self.in_memory else "read per batch"
        return f"TokenDataset({self.location!r}, {len(self)} samples, modalities={self.modalities}, {how})"

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """One sample's token dict."""
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        """The token dicts of a DataLoader batch, read together."""
        n = len(self)
        idx = []
        for i in indices:
            if not -n <= int(i) < n:
                raise IndexError(f"sample index {i} out of range for a token store of {n} samples")
            idx.append(int(i) % n)
        data = self._read(idx)
        rows = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        batch: dict[str, Tensor] = {}
        for k, m in enumerate(self.modalities):
            ids = torch.from_numpy(data[f"{m}_tokens"].reshape(len(idx), -1).astype(np.int64))
            if self.specs[m].kind == "image":
                valid = torch.from_numpy(data[f"{m}_valid"].reshape(len(idx), -1).astype(np.float32))
            else:
                valid = (ids >= 0).to(torch.float32)
            batch[m], batch[f"{m}_valid"] = ids, valid
            batch[f"{m}_available"] = torch.from_numpy(self.availability[idx, k].copy())
        return [{**{key: value[j] for key, value in batch.items()}, "index": rows[j]} for j in range(len(idx))]

    def _read(self, idx: list[int]) -> dict[str, np.ndarray]:
        """``{variable: (B, ...)}`` of the samples ``idx``, in that order."""
        if self._arrays is not None:
            return {v: a[idx] for v, a in self._arrays.items()}
        spans = read_spans(idx, self.shard_samples)
        variables = self._variables()
        requests = [(v, (slice(lo, hi),), None) for v in variables for lo, hi in spans]
        arrays = iter(self.handle.read(requests))
        starts, at = {}, 0
        for lo, hi in spans:
            starts[lo], at = at, at + hi - lo
        where = np.asarray([starts[lo] + i - lo for i in idx for lo, hi in spans if lo <= i < hi])
        return {v: np.concatenate([next(arrays) for _ in spans])[where] for v in variables}
