"""The text modality's tokenizer: a WordPiece vocabulary trained on a cube's captions with HuggingFace ``tokenizers``.

:func:`train_caption_tokenizer` reads the non-empty ``caption`` of every sample of a cube and trains a BERT-style
(uncased) WordPiece tokenizer on them; :class:`CaptionTokenizer` turns captions into fixed-length token ids and back,
and is saved to / loaded from a folder or the Hugging Face Hub with ``huggingface_hub``'s ``ModelHubMixin``
(``save_pretrained``, ``push_to_hub``, ``from_pretrained``). A saved tokenizer is a folder of three files:

- ``tokenizer.json``: the whole ``tokenizers`` pipeline (normaliser, pre-tokeniser, vocabulary, ``[CLS]``/``[SEP]``
  template, padding and truncation to ``max_length``); ``tokenizers.Tokenizer.from_file`` reads it on its own.
- ``config.json``: a :class:`CaptionTokenizerConfig` (vocabulary size, length, special tokens, the training cube,
  its ``recipe_hash`` and how many captions it was trained on).
- ``README.md``: a model card (a ``huggingface_hub.ModelCard``: licence, tags and library in its front matter).

``config.json`` with ``"modality": "caption"`` marks such a folder: ``eo-models train-text-tokenizer --out`` writes
only into a new or empty folder or one that carries it (:func:`check_save_folder`), and replaces nothing but those
three files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import torch
import xarray as xr
from huggingface_hub import ModelCard, ModelHubMixin, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.errors import CubeError
from eo_models.cube import HINT, NotACubeError, check_local
from eo_models.errors import CheckpointError, ConfigError
from eo_models.hub.card import LIBRARY, LICENSE, CardContent, build_card, render_card
from eo_models.hub.resolve import local_or_hub

#: Special tokens by role, in id order (``[PAD]`` is id 0).
SPECIAL_TOKENS: dict[str, str] = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
#: The files :meth:`CaptionTokenizer.save_pretrained` writes.
TOKENIZER_FILE, CONFIG_FILE, CARD_FILE = "tokenizer.json", "config.json", "README.md"
CARD_TAGS = ("earth-observation", "tokenizer", "4m4eo", "caption", "wordpiece")
_PREFIX = "##"  # WordPiece's continuing-subword prefix
_READ_CHUNK = 65_536  # captions read from the cube at a time


class CaptionEncoding(TypedDict):
    """What :meth:`CaptionTokenizer.encode` returns (a plain dict, so ``model(**batch)`` works).

    ``input_ids``: int64 ``(B, max_length)``, ``[CLS] tokens... [SEP]`` then ``[PAD]`` (id :attr:`~CaptionTokenizer.
    pad_id`). ``attention_mask``: int64 ``(B, max_length)``, 1 on real tokens (``[CLS]``/``[SEP]`` included), 0 on
    padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class CaptionTokenizerConfig(BaseModel):
    """What a caption tokenizer is and how it was trained (``config.json``).

    A frozen pydantic model: unknown keys, missing keys, wrong types (``"64"`` or ``true`` for an integer) and another
    modality or model are refused with one :class:`~eo_models.errors.ConfigError` line naming the key path, whether
    it is built directly or with :meth:`from_dict`.

    Attributes:
        vocab_size: Number of token ids (the trained vocabulary, special tokens included).
        max_length: Every encoding is padded or truncated to this many tokens (``[CLS]`` and ``[SEP]`` included).
        special_tokens: Role (``pad``, ``unk``, ``cls``, ``sep``, ``mask``) -> token string.
        cube: The cube the vocabulary was trained on (as given to :func:`train_caption_tokenizer`).
        recipe_hash: That cube's ``recipe_hash`` attribute (``None`` if it has none).
        num_captions: How many non-empty captions the vocabulary was trained on.
        requested_vocab_size: The ``vocab_size`` asked of the trainer (a small corpus can give fewer tokens).
        min_frequency: The trainer's minimum pair frequency for a merge.
        samples: The ``[start, stop, step]`` of the sample slice trained on, ``None`` for the whole cube.
        lowercase: Text is lowercased and accents are stripped (BERT uncased normalisation).
        modality: Always ``"caption"``.
        model: Always ``"wordpiece"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: Annotated[StrictInt, Field(ge=1)]
    max_length: Annotated[StrictInt, Field(ge=3)]
    special_tokens: dict[StrictStr, StrictStr]
    cube: StrictStr | None
    recipe_hash: StrictStr | None
    num_captions: Annotated[StrictInt, Field(ge=0)]
    requested_vocab_size: Annotated[StrictInt, Field(ge=1)]
    min_frequency: Annotated[StrictInt, Field(ge=0)] = 1
    samples: Annotated[list[StrictInt | None], Field(min_length=3, max_length=3)] | None = None
    lowercase: StrictBool = True
    modality: Literal["caption"] = "caption"
    model: Literal["wordpiece"] = "wordpiece"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @field_validator("special_tokens")
    @classmethod
    def _every_role(cls, value: dict[str, str]) -> dict[str, str]:
        if sorted(value) != sorted(SPECIAL_TOKENS):
            raise ValueError(f"expected the roles {sorted(SPECIAL_TOKENS)}, found {sorted(value)}")
        return {role: value[role] for role in SPECIAL_TOKENS}  # in id order, as config.json sorts them by name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``config.json`` holds)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptionTokenizerConfig:
        """From :meth:`to_dict`'s output (a ``config.json``); anything else raises :class:`ConfigError`."""
        if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
            raise ConfigError(f"{_WHAT}: expected a mapping with string keys (a JSON object), found "
                              f"{type(data).__name__} {data!r:.80}")
        return cls(**data)  # pydantic validates in __init__, which words its errors


_WHAT = "caption tokenizer config"


def _describe(exc: ValidationError) -> str:
    """One line for pydantic's errors: unknown and missing keys first, then each problem with its key path."""
    unknown, missing, problems = [], [], []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        kind, found = err["type"], err.get("input")
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            unknown.append(path)
        elif kind == "missing":
            missing.append(path)
        elif err["loc"] in (("modality",), ("model",)):
            problems.append(f"found {path} {found!r}, expected {CaptionTokenizerConfig.model_fields[path].default!r}"
                            " (is this another modality's tokenizer? load it with its own class)")
        elif kind == "value_error":
            problems.append(f"{path}: {err['ctx']['error']}")
        elif err["msg"].startswith("Input should be "):
            problems.append(f"{path}: expected {err['msg'].removeprefix('Input should be ')}, found {found!r}")
        else:
            problems.append(f"{path}: {err['msg']}, found {found!r}")
    if unknown or missing:
        problems.insert(0, f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; expected the keys "
                           f"{sorted(CaptionTokenizerConfig.model_fields)} (a config.json written by "
                           "CaptionTokenizer.save_pretrained)")
    return f"{_WHAT}: " + "; ".join(problems)


# -- training --------------------------------------------------------------------------------------------------------
def train_caption_tokenizer(cube: str | os.PathLike[str], *, vocab_size: int = 2000, min_frequency: int = 1,
                            max_length: int = 128, samples: slice | None = None) -> CaptionTokenizer:
    """Train a WordPiece caption tokenizer on the non-empty captions of a cube.

    BERT-style and uncased: the text is lowercased, accents stripped, split on whitespace and punctuation, and each
    word split greedily into the longest WordPiece vocabulary entries (``##`` marks a word's continuation; a word
    with a character never seen in training becomes ``[UNK]``). Encodings are ``[CLS] ... [SEP]``, padded with
    ``[PAD]`` or truncated to ``max_length``. Training is deterministic: the same captions give the same vocabulary
    and ids.

    Args:
        cube: Path or fsspec URL of a cube built by eo-dataset, with a ``caption`` variable.
        vocab_size: Target vocabulary size, special tokens included. A small corpus runs out of merges and gives
            fewer tokens; the special tokens and every character seen (alone and as ``##c``) are always kept, even
            past it. The trained size is :attr:`CaptionTokenizer.vocab_size`.
        min_frequency: A pair of pieces must occur this many times to be merged into a new piece.
        max_length: Tokens per encoding, ``[CLS]`` and ``[SEP]`` included (at least 3).
        samples: Train on these samples only (a slice of the cube's ``sample`` dimension); ``None``: all.

    Returns:
        The trained :class:`CaptionTokenizer`.

    Raises:
        ConfigError: Bad arguments, no cube at ``cube`` (a :class:`~eo_models.cube.NotACubeError`), or no
            non-empty caption in it (or in ``samples``).
    """
    for name, value, low in (("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1), ("min_frequency", min_frequency, 0),
                             ("max_length", max_length, 3)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"train_caption_tokenizer: {name} must be an integer >= {low}, found {value!r}")
    if samples is not None and not isinstance(samples, slice):
        raise ConfigError(f"train_caption_tokenizer: samples must be a slice (e.g. slice(0, 1000)) or None, found "
                          f"{type(samples).__name__} {samples!r}")
    captions, recipe_hash = _open_captions(cube, samples)

    # One pass to count the captions and collect the characters that continue a word ("##c" pieces).
    pipeline = _pipeline(models.WordPiece(unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix=_PREFIX))
    count, continuing = 0, set()
    for text in _iter_captions(captions):
        count += 1
        for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(pipeline.normalizer.normalize_str(text)):
            continuing.update(word[1:])
    if count == 0:
        where = "" if samples is None else f" in samples {samples}"
        raise ConfigError(f"cube {os.fspath(cube)!r} has a caption variable but no non-empty caption{where}; "
                          "expected captions to train the tokenizer on (build the cube with a recipe that has a "
                          "`captions:` section, or pick samples that have captions)")

    # The trainer numbers the "##c" pieces in the order of a randomly seeded hash map, and ties between merges are
    # broken by id, so the vocabulary would change from run to run. Handing the "##c" pieces to the trainer as
    # special tokens (numbered first, in the order given) fixes their ids and makes training deterministic; they
    # are plain vocabulary entries again in the tokenizer built below.
    seeded = list(SPECIAL_TOKENS.values()) + [_PREFIX + c for c in sorted(continuing)]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                        special_tokens=seeded, continuing_subword_prefix=_PREFIX)
    pipeline.train_from_iterator(_iter_captions(captions), trainer=trainer, length=count)
    vocab = pipeline.get_vocab(with_added_tokens=False)

    config = CaptionTokenizerConfig(
        vocab_size=len(vocab), max_length=max_length, special_tokens=dict(SPECIAL_TOKENS), cube=os.fspath(cube),
        recipe_hash=recipe_hash, num_captions=count, requested_vocab_size=vocab_size, min_frequency=min_frequency,
        samples=None if samples is None else [samples.start, samples.stop, samples.step])
    model = models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix=_PREFIX)
    return CaptionTokenizer(_finish(_pipeline(model), config), config)


def _open_captions(cube: str | os.PathLike[str], samples: slice | None) -> tuple[xr.DataArray, str | None]:
    """The cube's ``caption`` variable (lazy, restricted to ``samples``) and its ``recipe_hash``."""
    check_local(cube)
    try:
        ds = xr.open_zarr(cube)
    except (OSError, ValueError, KeyError) as exc:  # zarr and fsspec raise these for missing or foreign stores
        raise NotACubeError(f"{os.fspath(cube)} is not an eo-dataset cube: it cannot be read as a Zarr v3 store "
                            f"({type(exc).__name__}: {exc}); {HINT}") from exc
    if "caption" not in ds.data_vars:
        raise ConfigError(f"cube {os.fspath(cube)!r} has no `caption` variable (found {sorted(ds.data_vars)}); "
                          "expected a cube built with a recipe that has a `captions:` section")
    captions = ds["caption"] if samples is None else ds["caption"].isel(sample=samples)
    try:
        recipe_hash = CubeMeta.from_attrs(ds.attrs, os.fspath(cube)).recipe_hash
    except CubeError:  # captions of a store without the cube's attrs: trained on, with no recipe to record
        recipe_hash = None
    return captions, recipe_hash


def _iter_captions(captions: xr.DataArray) -> Iterator[str]:
    """The non-empty captions, in sample order, read a chunk at a time."""
    for start in range(0, captions.sizes["sample"], _READ_CHUNK):
        for text in captions.isel(sample=slice(start, start + _READ_CHUNK)).values:
            if isinstance(text, str) and text.strip():
                yield text


def _pipeline(model: models.Model) -> Tokenizer:
    """A tokenizer around ``model`` with the BERT uncased normaliser, pre-tokeniser and WordPiece decoder."""
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=_PREFIX)
    return tok


def _finish(tok: Tokenizer, config: CaptionTokenizerConfig) -> Tokenizer:
    """Add the special tokens, the ``[CLS] ... [SEP]`` template, padding and truncation to ``max_length``."""
    special = config.special_tokens
    tok.add_special_tokens([special[role] for role in SPECIAL_TOKENS])
    cls_token, sep_token = special["cls"], special["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
        special_tokens=[(cls_token, tok.token_to_id(cls_token)), (sep_token, tok.token_to_id(sep_token))])
    tok.enable_truncation(max_length=config.max_length)
    tok.enable_padding(pad_id=tok.token_to_id(special["pad"]), pad_token=special["pad"], length=config.max_length)
    return tok


# -- the tokenizer ---------------------------------------------------------------------------------------------------
class CaptionTokenizer(ModelHubMixin, library_name=LIBRARY, license=LICENSE, tags=list(CARD_TAGS),
                       docs_url="https://github.com/4m4eo/4m4eo"):
    """Captions <-> fixed-length token ids (a ``tokenizers.Tokenizer`` and its :class:`CaptionTokenizerConfig`).

    Make one with :func:`train_caption_tokenizer` or :meth:`from_pretrained`. Saved, loaded and pushed with
    ``huggingface_hub``'s :class:`~huggingface_hub.ModelHubMixin`: ``save_pretrained(folder)`` (also
    ``push_to_hub=True, repo_id=...``), ``push_to_hub(repo_id)`` and ``from_pretrained`` (a folder or a Hub repo id).

    Args:
        tokenizer: The ``tokenizers`` pipeline (vocabulary, normaliser, template, padding, truncation).
        config: What it is and how it was trained.

    Example:
        >>> tok = train_caption_tokenizer("demo.zarr", vocab_size=2000)  # doctest: +SKIP
        >>> batch = tok.encode(["Trees cover 40% of it.", "A scene near Rosenheim."])  # doctest: +SKIP
        >>> batch["input_ids"].shape, tok.decode(batch["input_ids"])  # doctest: +SKIP
        (torch.Size([2, 128]), ['trees cover 40 % of it.', 'a scene near rosenheim.'])
    """

    def __init__(self, tokenizer: Tokenizer, config: CaptionTokenizerConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config

    def __repr__(self) -> str:
        return (f"CaptionTokenizer(wordpiece, {self.vocab_size} tokens, max_length {self.config.max_length}, "
                f"trained on {self.config.num_captions} captions of {self.config.cube!r})")

    @property
    def vocab_size(self) -> int:
        """Number of token ids (special tokens included): the size of a model's embedding table."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def max_length(self) -> int:
        """Tokens per encoding, ``[CLS]`` and ``[SEP]`` included."""
        return self.config.max_length

    @property
    def pad_id(self) -> int:
        """The id of ``[PAD]`` (fills ``input_ids`` after ``[SEP]``)."""
        return self.token_id("pad")

    def token_id(self, role: str) -> int:
        """The id of a special token by role: ``pad``, ``unk``, ``cls``, ``sep`` or ``mask``."""
        if role not in self.config.special_tokens:
            raise KeyError(f"no special token {role!r}; known: {sorted(self.config.special_tokens)}")
        return self.tokenizer.token_to_id(self.config.special_tokens[role])

    # -- text <-> ids ------------------------------------------------------------------------------------------
    def encode(self, texts: str | Sequence[str]) -> CaptionEncoding:
        """Token ids and attention mask of one caption or a list of captions.

        Args:
            texts: A caption (then ``B = 1``) or a sequence of ``B`` captions.

        Returns:
            ``{"input_ids", "attention_mask"}``, both int64 ``(B, max_length)`` (see :class:`CaptionEncoding`).
            Longer captions are truncated, keeping ``[CLS]`` and the final ``[SEP]``.
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in batch):
            raise TypeError(f"encode: expected a str or a sequence of str, found {[type(t).__name__ for t in batch]}")
        if not batch:
            empty = torch.zeros((0, self.max_length), dtype=torch.long)
            return CaptionEncoding(input_ids=empty, attention_mask=empty.clone())
        encodings = self.tokenizer.encode_batch(batch)
        return CaptionEncoding(input_ids=torch.tensor([e.ids for e in encodings], dtype=torch.long),
                               attention_mask=torch.tensor([e.attention_mask for e in encodings], dtype=torch.long))

    def decode(self, ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]]) -> list[str]:
        """Captions of token ids, special tokens (``[PAD]``, ``[CLS]``, ``[SEP]``, ``[UNK]`` ...) left out.

        Args:
            ids: ``(B, L)`` or ``(L,)`` ids (a tensor or nested lists), e.g. ``encode(...)["input_ids"]``.

        Returns:
            ``B`` strings (one for a ``(L,)`` input), normalised as :meth:`normalize` describes.
        """
        if isinstance(ids, torch.Tensor):
            rows = ids.tolist() if ids.dim() in (1, 2) else [[None]]  # anything else: the error below
        else:
            rows = [r if isinstance(r, int) else list(r) for r in ids]
        if rows and all(isinstance(i, int) for i in rows):
            rows = [rows]
        if not all(isinstance(r, list) and all(isinstance(i, int) for i in r) for r in rows):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else "nested lists"
            raise ValueError(f"decode: expected integer token ids of shape (B, L) or (L,), found {shape}; pass "
                             "encode(...)['input_ids'] or one row of it")
        return self.tokenizer.decode_batch(rows, skip_special_tokens=True)

    def normalize(self, text: str) -> str:
        """``text`` as :meth:`decode` gives it back: lowercased, accents stripped, words and punctuation separated
        by one space except before ``.``, ``,``, ``!``, ``?`` (``decode(encode(text)) == normalize(text)`` unless
        ``text`` is truncated or has a character the vocabulary lacks)."""
        words = self.tokenizer.pre_tokenizer.pre_tokenize_str(self.tokenizer.normalizer.normalize_str(text))
        return self.tokenizer.decoder.decode([w for w, _ in words])

    # -- hub: huggingface_hub's ModelHubMixin (save_pretrained, push_to_hub, from_pretrained) -----------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """``tokenizer.json`` and ``config.json``; the mixin's ``save_pretrained`` then writes the model card
        (:meth:`generate_model_card`) to ``README.md``, and ``push_to_hub`` uploads the folder."""
        self.tokenizer.save(str(save_directory / TOKENIZER_FILE))
        (save_directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        (save_directory / CARD_FILE).unlink(missing_ok=True)  # the mixin writes a card only where there is none

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card: vocabulary, length, normalisation, training cube and how to load it."""
        return build_card(card_content(self.config))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *, revision: str | None = None,
                        cache_dir: str | os.PathLike[str] | None = None, force_download: bool = False,
                        token: str | bool | None = None, local_files_only: bool = False) -> CaptionTokenizer:
        """Load a tokenizer from a folder :meth:`save_pretrained` wrote, or from a Hugging Face Hub repo.

        The library's ``from_pretrained``, after :func:`eo_models.hub.resolve.local_or_hub` has decided between a
        local folder and a Hub repo id (a path that is no folder fails at once, without asking the Hub).

        Args:
            pretrained_model_name_or_path: A local folder, or a Hub repo id (``org/name``), downloaded with
                ``huggingface_hub`` (with ``HF_HUB_OFFLINE=1`` read from the local Hub cache).
            revision: A branch, tag or commit of the Hub repo (default ``main``).
            cache_dir: The Hub cache (default: ``huggingface_hub``'s, ``~/.cache/huggingface/hub``).
            force_download, token, local_files_only: As ``huggingface_hub.snapshot_download`` takes them.

        Raises:
            CheckpointError: No such folder or repo (or not in the cache when offline), or its files are not a
                caption tokenizer.
        """
        where = local_or_hub(pretrained_model_name_or_path, what="caption tokenizer",
                             writer="train-text-tokenizer (CaptionTokenizer.save_pretrained)")
        if isinstance(where, Path):  # checked before the library, which only logs a missing config.json
            _read_config(where)
        try:
            return super().from_pretrained(where, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, token=token,
                                           local_files_only=local_files_only)
        except CheckpointError:
            raise
        except (HFValidationError, EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled) as exc:
            at = f" at revision {revision!r}" if revision else ""
            cache = f" (cache {os.fspath(cache_dir)})" if cache_dir is not None else ""
            raise CheckpointError(
                f"no caption tokenizer {where!r}: it is not a local folder, and the Hugging Face Hub{cache} has no "
                f"repo {where!r}{at} ({type(exc).__name__}: {exc}). Pass the folder CaptionTokenizer.save_pretrained "
                "wrote, or a Hub repo id (org/name) that exists; offline (HF_HUB_OFFLINE=1), download it once while "
                "online or pass the cache_dir that holds it") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # the library reads a Hub repo's config.json first
            raise CheckpointError(f"cannot read {CONFIG_FILE} of caption tokenizer {os.fspath(where)!r}: "
                                  f"{exc}") from exc

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         **from_config: Any) -> CaptionTokenizer:
        """The library's loading hook: the folder, or the Hub repo's snapshot (``snapshot_download``), read.

        ``from_config`` is what the library passes on from ``config.json`` (``config=`` the whole of it); unused:
        ``config.json`` is read and validated from the folder that holds ``tokenizer.json`` (one snapshot of the
        repo, never two revisions of it).
        """
        if os.path.isdir(model_id):
            folder = Path(model_id)
        else:
            folder = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, token=token,
                                            local_files_only=local_files_only, library_name="eo-models",
                                            allow_patterns=[TOKENIZER_FILE, CONFIG_FILE, CARD_FILE]))
        return _load_folder(folder)


def _read_config(folder: Path) -> CaptionTokenizerConfig:
    """The config of the caption tokenizer in ``folder``, which must hold ``tokenizer.json`` and ``config.json``."""
    missing = [f for f in (TOKENIZER_FILE, CONFIG_FILE) if not (folder / f).is_file()]
    if missing:
        found = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(f"{folder} has no {' or '.join(missing)} (found {found}); expected a folder written "
                              "by CaptionTokenizer.save_pretrained")
    try:
        return CaptionTokenizerConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError, as is a JSON syntax error
        raise CheckpointError(f"cannot read {folder / CONFIG_FILE}: {exc}") from exc


def _load_folder(folder: Path) -> CaptionTokenizer:
    """The tokenizer in a folder :meth:`CaptionTokenizer.save_pretrained` wrote (or a snapshot of its Hub repo)."""
    config = _read_config(folder)
    try:
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers raises a plain Exception for a file it cannot parse
        raise CheckpointError(f"cannot read {folder / TOKENIZER_FILE} with tokenizers: {exc}") from exc
    if tokenizer.get_vocab_size(with_added_tokens=True) != config.vocab_size:
        raise CheckpointError(f"{folder}: tokenizer.json has {tokenizer.get_vocab_size()} tokens but config.json "
                              f"says {config.vocab_size}; the files come from different tokenizers (save both "
                              "with CaptionTokenizer.save_pretrained)")
    return CaptionTokenizer(tokenizer, config)


def check_save_folder(out: str | os.PathLike[str], option: str = "--out") -> Path:
    """Check that a caption tokenizer may be saved to ``out``: new, an empty folder, or a caption tokenizer folder
    (its ``config.json`` reads as a :class:`CaptionTokenizerConfig`), whose three files are then replaced.

    Raises:
        OutputError: a URL, a file, an unwritable place, or a folder that is not a caption tokenizer's; nothing
            is touched.
    """
    from eo_dataset.errors import OutputError
    from eo_dataset.outputs import check_output

    what = "caption tokenizer folder written by train-text-tokenizer"
    if check_output(out, what=what, marker=CONFIG_FILE, option=option) == "ours":
        try:
            CaptionTokenizerConfig.from_dict(json.loads((Path(out) / CONFIG_FILE).read_text()))
        except (OSError, ValueError) as exc:  # ConfigError and JSON syntax errors are ValueErrors
            raise OutputError(f"{option} {out} exists and is not a {what} (its {CONFIG_FILE} is another tool's); it "
                              f"is left untouched: choose a new or empty folder for {option}") from exc
    return Path(out)


def card_content(config: CaptionTokenizerConfig) -> CardContent:
    """What a caption tokenizer's model card says: vocabulary, length, normalisation, training cube."""
    samples = "all samples" if config.samples is None else f"samples slice{tuple(config.samples)}"
    return CardContent(
        title="# 4M4EO tokenizer: caption",
        summary=("A WordPiece tokenizer (BERT-style, uncased) for the text modality of 4M4EO cubes: the per-sample "
                 "`caption`."),
        tags=CARD_TAGS, license=LICENSE, recipe_hash=config.recipe_hash,
        sections=(
            ("Modality", (
                f"- modality: {config.modality}",
                f"- vocabulary: {config.vocab_size} tokens (special: {', '.join(config.special_tokens.values())})",
                f"- length: {config.max_length} tokens per caption (`[CLS] ... [SEP]`, padded with `[PAD]` or "
                "truncated)",
                "- normalisation: lowercase, accents stripped, split on whitespace and punctuation")),
            ("Training", (
                f"- cube: {config.cube or 'n/a'} (recipe hash {config.recipe_hash or 'n/a'})",
                f"- captions: {config.num_captions} non-empty, {samples}",
                f"- trainer: WordPiece, vocab_size {config.requested_vocab_size}, min_frequency "
                f"{config.min_frequency}"))),
        usage=("from eo_models.tokenizers.text import CaptionTokenizer",
               "tok = CaptionTokenizer.from_pretrained(\"<this repo or folder>\")",
               "batch = tok.encode([\"Trees cover 40% of it.\"])  # input_ids, attention_mask: (B, max_length) int64",
               "texts = tok.decode(batch[\"input_ids\"])"),
        footer=("`tokenizer.json` also loads on its own with `tokenizers.Tokenizer.from_file(\"tokenizer.json\")`.",))


def model_card(config: CaptionTokenizerConfig) -> str:
    """The markdown of a caption tokenizer's model card (``README.md``; :meth:`CaptionTokenizer.generate_model_card`
    makes it a ``huggingface_hub.ModelCard``)."""
    return render_card(card_content(config))
