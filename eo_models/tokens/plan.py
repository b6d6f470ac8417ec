"""What each tokenizer reads from a cube and how its tokens are made.

Shared by the token store (:mod:`eo_models.tokens.store`) and tokenizing on the fly
(:mod:`eo_models.tokens.online`), so both give the same tokens, the same availability and the same per-token
validity for the same samples.

Two kinds of tokenizers:

- **image** (:class:`~eo_models.tokenizers.tokenizer.Tokenizer`, one per raster modality): token ids ``(ty, tx)`` of
  the largest centre crop of the sample whose side, at the modality's resolution, is a multiple of the tokenizer's
  patch (:func:`token_crop`); with them, the fraction of valid pixels (the cube's ``<m>_valid``) under each token.
- **sequence** (:class:`~eo_models.tokenizers.text.CaptionTokenizer`, the text modality): the caption's WordPiece
  ids as :meth:`~eo_models.tokenizers.text.CaptionTokenizer.encode` gives them (``[CLS] ... [SEP]`` included), ``-1``
  at padding positions. A sample has a caption when its caption is a non-empty string.

A folder or Hub repo is told apart by its ``config.json``: a caption tokenizer's config names its modality with a
string (``"modality": "caption"``), an image tokenizer's config holds a whole modality section.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import torch
from torch import Tensor

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.torch.crop import crop_offset, plan_crop
from eo_models.cube import cube_meta, open_cube
from eo_models.errors import ConfigError
from eo_models.hub.resolve import local_or_hub
from eo_models.tokenizers.text import CONFIG_FILE, CaptionTokenizer
from eo_models.tokenizers.tokenizer import Tokenizer, load_tokenizer

FILL = -1  #: token id where there is no token: a sample without the modality, a caption position past its end
ModalityTokenizer = Tokenizer | CaptionTokenizer  #: an image or a caption tokenizer
TokenizerSource = str | os.PathLike[str] | Tokenizer | CaptionTokenizer  #: a folder, a Hub repo id or an object


@dataclass(frozen=True)
class TokenCrop:
    """Where a tokenizer reads a sample: ``size`` base pixels (``side`` pixels of the modality), ``grid`` tokens."""

    size: int
    side: int
    grid: tuple[int, int]


def token_crop(patch_px: int, factor: int, patch: int) -> TokenCrop:
    """The largest whole-sample crop whose side at the modality's resolution is a multiple of ``patch``.

    Args:
        patch_px: Sample side in base pixels (the grid's ``patch_px``, 264 by default).
        factor: Modality resolution / base resolution (1 for 10 m, 3 for 30 m on a 10 m grid).
        patch: The tokenizer's pixels (of the modality) per token side.

    Raises:
        ConfigError: the sample is smaller than one token at this resolution.
    """
    full = patch_px // factor
    side = full // patch * patch
    if side == 0:
        raise ConfigError(f"a sample is {full} px at this resolution, less than one token of {patch} px; this "
                          "tokenizer cannot tokenize this cube")
    return TokenCrop(side * factor, side, (side // patch, side // patch))


# -- loading -------------------------------------------------------------------------------------------------------
def is_caption_config(config: Any) -> bool:
    """True for the ``config.json`` of a caption tokenizer (its modality is a name, not a modality section)."""
    return isinstance(config, Mapping) and isinstance(config.get("modality"), str)


def _config_json(where: Path | str) -> Any:
    """The parsed ``config.json`` of a folder or (from the Hub or its cache) a repo; ``None`` when it cannot be read
    (the loader then says why)."""
    try:
        if isinstance(where, Path):
            path = where / CONFIG_FILE
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(where, CONFIG_FILE, library_name="eo-models"))
        return json.loads(path.read_text())
    except Exception:  # the Hub client, the file system and json raise many types; the loader reports the problem
        return None


def load_modality_tokenizer(source: TokenizerSource) -> ModalityTokenizer:
    """An image :class:`Tokenizer` or a :class:`CaptionTokenizer`: objects as they are, folders and Hub repo ids
    loaded with the class their ``config.json`` names.

    Raises:
        CheckpointError: no such folder or repo, or it cannot be loaded.
    """
    if isinstance(source, Tokenizer | CaptionTokenizer):
        return source
    where = local_or_hub(source)
    if is_caption_config(_config_json(where)):
        return CaptionTokenizer.from_pretrained(where if isinstance(where, Path) else str(where))
    return load_tokenizer(source)


def load_tokenizers(sources: Sequence[TokenizerSource]) -> dict[str, tuple[ModalityTokenizer, str]]:
    """``{modality: (tokenizer, where it came from)}``, one tokenizer per modality, in the order given.

    Raises:
        ConfigError: no tokenizers, or two for one modality.
        CheckpointError: a tokenizer cannot be loaded.
    """
    if isinstance(sources, str | os.PathLike | Tokenizer | CaptionTokenizer):
        sources = [sources]
    if not sources:
        raise ConfigError("no tokenizers given; pass at least one tokenizer folder, Hub repo id or tokenizer object")
    out: dict[str, tuple[ModalityTokenizer, str]] = {}
    for src in sources:
        tok = load_modality_tokenizer(src)
        where = f"<{type(src).__name__} object>" if isinstance(src, Tokenizer | CaptionTokenizer) else os.fspath(src)
        m = modality_of(tok)
        if m in out:
            raise ConfigError(f"two tokenizers for modality {m!r}: {out[m][1]} and {where}; pass one per modality")
        out[m] = (tok, where)
    return out


def modality_of(tok: ModalityTokenizer) -> str:
    """The cube variable a tokenizer reads: an image modality, or the text modality its config names."""
    return tok.config.modality if isinstance(tok, CaptionTokenizer) else tok.modality


def weights_digest(tok: Tokenizer) -> str:
    """sha256 of the weights tokens depend on (head, encoder, quantizer), to tell tokenizers apart."""
    h = hashlib.sha256()
    for part in ("head", "encoder", "quantizer"):
        for name, t in sorted(getattr(tok, part).state_dict().items()):
            h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def vocab_digest(tok: CaptionTokenizer) -> str:
    """sha256 of a caption tokenizer's vocabulary (every token with its id, special tokens included)."""
    vocab = sorted(tok.tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    """As it reads back from JSON attrs (tuples become lists), so stored and fresh values compare equal."""
    return json.loads(json.dumps(value))


# -- plans ---------------------------------------------------------------------------------------------------------
@dataclass
class ImagePlan:
    """An image tokenizer on one modality of a cube: its crop, token grid and identity.

    Attributes:
        modality: The cube's modality.
        tok: The tokenizer.
        source: Where it was loaded from (a folder, a repo id, ``<Tokenizer object>``).
        crop: The centre crop it reads and the token grid it gives.
        offset: The crop's (row, col) offset in base pixels.
        factor: Modality resolution / base resolution.
        sample_side: The whole sample's side in pixels of the modality (what :meth:`tokenize` takes).
        identity: What tells its tokens apart (stored in the token store's attrs, compared on resume).
    """

    modality: str
    tok: Tokenizer
    source: str
    crop: TokenCrop
    offset: tuple[int, int]
    factor: int
    sample_side: int
    identity: dict[str, Any]
    kind = "image"

    @property
    def attrs(self) -> dict[str, Any]:
        """The token store's ``tokenizers.<m>`` attrs: the identity and where the tokenizer came from."""
        return {**self.identity, "source": self.source}

    @property
    def shape(self) -> tuple[int, ...]:
        """Token ids per sample: ``(ty, tx)``."""
        return self.crop.grid

    def window(self) -> tuple[slice, slice]:
        """The crop in pixels of the modality, within the whole sample."""
        r0, c0 = (o // self.factor for o in self.offset)
        return slice(r0, r0 + self.crop.side), slice(c0, c0 + self.crop.side)

    def tokenize(self, x: Tensor, valid: Tensor, available: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Token ids and per-token validity of whole samples.

        Args:
            x: Stored values of whole samples ``(B, C, H, W)`` (``CubeDataset(..., normalize=False)``, no crop), on
                the tokenizer's device.
            valid: Their valid masks ``(B, H, W)``.
            available: ``(B,)`` bool, which samples have the modality (default: all); only those are tokenized.

        Returns:
            ``ids`` int64 ``(B, ty, tx)`` (``-1`` where unavailable) and ``valid`` float32 ``(B, ty, tx)``: the
            fraction of valid pixels under each token, rounded to float16 as the store keeps it (0 where
            unavailable).
        """
        if tuple(x.shape[-2:]) != (self.sample_side, self.sample_side):
            raise ConfigError(f"{self.modality} comes as {tuple(x.shape[-2:])} px, expected whole samples of "
                              f"{self.sample_side} x {self.sample_side} px (read the cube without a crop: "
                              "CubeDataset(..., crop=None, normalize=False))")
        rows, cols = self.window()
        x, valid = x[..., rows, cols], valid[..., rows, cols]
        b, p = x.shape[0], self.tok.patch
        if available is None:
            available = torch.ones(b, dtype=torch.bool, device=x.device)
        available = available.to(device=x.device, dtype=torch.bool)
        ids = torch.full((b, *self.crop.grid), FILL, dtype=torch.int64, device=x.device)
        frac = einops.reduce(valid.float(), "b (ty p) (tx q) -> b ty tx", "mean", p=p, q=p)
        frac = (frac * available[:, None, None]).to(torch.float16).to(torch.float32)
        picked = torch.nonzero(available).flatten()
        if picked.numel():
            with torch.no_grad():
                tokens = self.tok.tokenize(x[picked], valid[picked])
            if tuple(tokens.shape) != (picked.numel(), *self.crop.grid):
                raise ConfigError(f"tokenizer {self.source} gave tokens of shape {tuple(tokens.shape)} for "
                                  f"{picked.numel()} crops of {self.crop.side} px; expected "
                                  f"{(picked.numel(), *self.crop.grid)} (one token per {p} px)")
            ids[picked] = tokens.to(torch.int64)
        return ids, frac


@dataclass
class CaptionPlan:
    """A caption tokenizer on the cube's text modality.

    Attributes:
        modality: The cube's text variable (the tokenizer config's ``modality``).
        tok: The tokenizer.
        source: Where it was loaded from.
        identity: What tells its tokens apart (stored in the token store's attrs, compared on resume).
    """

    modality: str
    tok: CaptionTokenizer
    source: str
    identity: dict[str, Any]
    kind = "sequence"

    @property
    def attrs(self) -> dict[str, Any]:
        """The token store's ``tokenizers.<m>`` attrs: the identity and where the tokenizer came from."""
        return {**self.identity, "source": self.source}

    @property
    def shape(self) -> tuple[int, ...]:
        """Token ids per sample: ``(max_length,)``."""
        return (self.tok.max_length,)

    def encode(self, texts: Sequence[Any]) -> tuple[Tensor, Tensor]:
        """Token ids ``(B, max_length)`` int64 (``-1`` at padding and for samples without a caption) and
        availability ``(B,)`` bool (the caption is a non-empty string)."""
        available = torch.tensor([isinstance(t, str) and bool(t.strip()) for t in texts], dtype=torch.bool)
        enc = self.tok.encode([t if a else "" for t, a in zip(texts, available.tolist(), strict=True)])
        ids = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, FILL)
        ids[~available] = FILL
        return ids, available


Plan = ImagePlan | CaptionPlan


def plan_tokenizers(cube: str | os.PathLike[str], sources: Sequence[TokenizerSource]) -> dict[str, Plan]:
    """Load the tokenizers and check each against the cube: ``{modality: plan}``, in the order given.

    Raises:
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: no tokenizers, two for one modality, a modality the cube does not have (or with other bands or
            resolution), a caption tokenizer for a cube without captions.
        CheckpointError: a tokenizer cannot be loaded.
    """
    toks = load_tokenizers(sources)
    with open_cube(cube, schema=False) as ds:
        meta = cube_meta(ds, cube)
        variables = {str(v) for v in ds.variables}
    plans: dict[str, Plan] = {}
    for m, (tok, source) in toks.items():
        if isinstance(tok, CaptionTokenizer):
            plans[m] = _caption_plan(cube, variables, m, tok, source)
        else:
            plans[m] = _image_plan(cube, meta, m, tok, source)
    return plans


def _image_plan(cube: str | os.PathLike[str], meta: CubeMeta, m: str, tok: Tokenizer, source: str) -> ImagePlan:
    if m not in meta.modalities:
        raise ConfigError(f"tokenizer {source} is for modality {m!r}, which the cube {cube} does not have; it has "
                          f"{sorted(meta.modalities)}")
    mi, want = meta.modalities[m], tok.cfg.modality
    if tuple(want.bands) != tuple(mi.bands):
        raise ConfigError(f"tokenizer {source} reads {m} bands {list(want.bands)}, the cube has {list(mi.bands)}; "
                          "use a tokenizer trained on a cube with the same bands")
    if not math.isclose(want.resolution_m, mi.resolution_m):
        raise ConfigError(f"tokenizer {source} was trained on {m} at {want.resolution_m:g} m, the cube has it at "
                          f"{mi.resolution_m:g} m")
    factor = round(mi.resolution_m / meta.pixel_size_m)
    crop = token_crop(meta.patch_px, factor, tok.patch)
    # the offset CubeDataset(crop=crop.size, crop_mode="center") takes for this modality alone
    offset = crop_offset(plan_crop(crop.size, "center", meta.patch_px, meta.pixel_size_m, [mi.resolution_m]))
    identity = {"kind": "image", "config": _jsonable(tok.cfg.to_dict()), "codebook_size": int(tok.codebook_size),
                "patch": int(tok.patch), "crop_px": crop.size, "crop_offset_px": list(offset),
                "crop_px_modality": crop.side, "token_grid": list(crop.grid), "weights_sha256": weights_digest(tok)}
    return ImagePlan(m, tok, source, crop, offset, factor, meta.patch_px // factor, identity)


def _caption_plan(cube: str | os.PathLike[str], variables: set[str], m: str, tok: CaptionTokenizer,
                  source: str) -> CaptionPlan:
    if m not in variables:
        raise ConfigError(f"caption tokenizer {source} reads the text variable {m!r}, which the cube {cube} does not "
                          "have; build the cube with a recipe that has a `captions:` section, or leave this "
                          "tokenizer out")
    identity = {"kind": "sequence", "config": _jsonable(tok.config.to_dict()), "vocab_size": int(tok.vocab_size),
                "max_length": int(tok.max_length), "vocab_sha256": vocab_digest(tok),
                "special_ids": {role: int(tok.token_id(role)) for role in tok.config.special_tokens}}
    return CaptionPlan(m, tok, source, identity)

