"""TerraMind-1.0 backbones (``TerraMind_v1_<size>.pt``; IBM & ESA, Apache-2.0) -> eo_models backbone folders.

The released files hold TerraMind's whole encoder-decoder state dict (terratorch's ``TerraMind``), pickled without a
config. This module reads one (``torch.load(..., weights_only=True)``), reads the encoder's sizes from the tensors'
shapes (width, depth, feed-forward width and kind, biases; heads: width / 64 in every size), maps TerraMind's input
embeddings onto cube modalities with the ``backbone_inputs`` table of ``terramind.yaml`` (bands, order and
normalisation from its tokenizer entries), and writes a folder :class:`~eo_models.backbones.terramind.
TerraMindBackbone` loads: ``model.safetensors``, ``config.json`` and a card naming the upstream licence, repo,
revision and file hash. The decoder's tensors are left out.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from eo_models.backbones.terramind import ARCHITECTURE, BackboneInput, TerraMindBackbone, TerraMindConfig
from eo_models.convert.terramind import (
    download,
    modality_config,
    read_state_dict,
    sha256_of,
    table,
)
from eo_models.errors import CheckpointError, ConfigError
from eo_models.hub.card import CARD_FILE
from eo_models.tokenizers.terramind_encoder import HEAD_DIM

EMBEDDINGS = "encoder_embeddings."
#: TerraMind block tensor names -> ours (the same but for the prefix); LayerNorm biases are zero buffers, dropped
BLOCK_TENSORS = ("norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                 "norm2.weight", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                 "mlp.fc3.weight", "mlp.fc3.bias")


@dataclass(frozen=True)
class ConvertedBackbone:
    """What :func:`convert_backbone` wrote: the folder, the size's name (``tiny``) and the loaded backbone."""

    out: Path
    name: str
    model: TerraMindBackbone


def backbone_entry(size: str | None, source: str) -> tuple[str, dict[str, Any]]:
    """The ``backbones`` table entry of ``size``, or the one whose repo or file name ``source`` is.

    Raises:
        ConfigError: no entry matches.
    """
    entries = table()["backbones"]
    if size is not None:
        if size not in entries:
            raise ConfigError(f"unknown TerraMind backbone size {size!r}; known: {sorted(entries)}")
        return size, entries[size]
    for key, e in entries.items():
        if source.rstrip("/") == e["repo"] or Path(source).name == e["file"]:
            return key, e
    raise ConfigError(f"cannot tell which TerraMind backbone {source!r} is (neither a known repo nor a file named "
                      f"like {entries['tiny']['file']!r}); pass --size, one of {sorted(entries)}")


def source_kind(source: str | os.PathLike[str], *, tokenizer: str | None = None,
                size: str | None = None) -> Literal["tokenizer", "backbone"]:
    """Whether ``source`` is a TerraMind tokenizer or backbone: from ``--tokenizer`` / ``--size``, the repo or file
    name, or (a renamed local file) its tensors (a backbone has ``encoder_embeddings.*``).

    Raises:
        ConfigError: both ``tokenizer`` and ``size`` given.
    """
    if tokenizer is not None and size is not None:
        raise ConfigError(f"--tokenizer {tokenizer} and --size {size} both given; a file is either a tokenizer "
                          "(--tokenizer) or a backbone (--size)")
    if tokenizer is not None or size is not None:
        return "tokenizer" if tokenizer is not None else "backbone"
    src = os.fspath(source).rstrip("/")
    info = table()
    for kind, entries in (("tokenizer", info["tokenizers"]), ("backbone", info["backbones"])):
        if any(src == e["repo"] or Path(src).name == e["file"] for e in entries.values()):
            return kind  # type: ignore[return-value]
    if Path(src).is_file():
        with contextlib.suppress(CheckpointError):
            if any(k.startswith(EMBEDDINGS) for k in read_state_dict(src)):
                return "backbone"
    return "tokenizer"


def _need(sd: dict[str, Tensor], key: str, path: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"{path}: no tensor {key!r}; not a TerraMind-1.0 backbone state dict (it has "
                              f"{len(sd)} tensors, e.g. {sorted(sd)[:3]})")
    return sd[key]


def _square(n: int, what: str, path: str) -> int:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise CheckpointError(f"{path}: {what} has {n} rows, no square grid; not a TerraMind-1.0 backbone")
    return side


def backbone_inputs(sd: dict[str, Tensor], dim: int, path: str) -> tuple[list[BackboneInput], list[str], int]:
    """The inputs of the converted backbone (those of the state dict in the ``backbone_inputs`` table), the
    upstream inputs left out, and the patch size.

    Raises:
        CheckpointError: an input's tensors do not fit its table entry, or the file has no input the table knows.
    """
    info = table()
    present = {k[len(EMBEDDINGS):].split(".")[0] for k in sd if k.startswith(EMBEDDINGS)}
    names = [n for n in info["backbone_inputs"] if n in present] + sorted(present - set(info["backbone_inputs"]))
    inputs, skipped, patches = [], [], set()
    for upstream in names:
        row = info["backbone_inputs"].get(upstream)
        if row is None:
            skipped.append(upstream)
            continue
        entry = info["tokenizers"][row["tokenizer"]]
        pos = _need(sd, f"{EMBEDDINGS}{upstream}.pos_emb", path)
        side = _square(pos.shape[1], f"{upstream}'s position embedding", path)
        if row["kind"] == "pixels":
            proj = _need(sd, f"{EMBEDDINGS}{upstream}.proj.weight", path)
            channels = len(entry["bands"])
            if proj.shape[1] % channels:
                raise CheckpointError(f"{path}: {upstream} projects {proj.shape[1]} values per patch, no multiple of "
                                      f"its {channels} bands {entry['bands']}")
            patches.add(_square(proj.shape[1] // channels, f"{upstream}'s patch", path))
            inputs.append(BackboneInput(name=entry["modality"], kind="pixels", upstream=upstream,
                                        modality=modality_config(row["tokenizer"], entry), grid=(side, side)))
        else:
            vocab = _need(sd, f"{EMBEDDINGS}{upstream}.token_emb.weight", path).shape[0]
            levels = 1
            for level in entry["levels"]:
                levels *= level
            if vocab != levels:
                raise CheckpointError(f"{path}: {upstream} embeds {vocab} token ids, but TerraMind's {row['tokenizer']}"
                                      f" tokenizer makes {levels} (levels {entry['levels']})")
            inputs.append(BackboneInput(name=entry["modality"], kind="tokens", upstream=upstream, vocab_size=vocab,
                                        tokenizer=entry["repo"], grid=(side, side)))
        if sd[f"{EMBEDDINGS}{upstream}.mod_emb"].numel() != dim:
            raise CheckpointError(f"{path}: {upstream}'s modality embedding is not {dim} wide")
    if not inputs:
        raise CheckpointError(f"{path}: none of its inputs {names} is one eo-models converts "
                              f"({sorted(info['backbone_inputs'])})")
    if len(patches) > 1:
        raise CheckpointError(f"{path}: pixel inputs of different patch sizes {sorted(patches)}")
    # a backbone of token inputs only: TerraMind's tokenizers make one token per 16 x 16 px
    return inputs, skipped, patches.pop() if patches else 16


def backbone_config(sd: dict[str, Tensor], name: str, entry: dict[str, Any], path: str = "the state dict",
                    revision: str | None = None, sha256: str = "") -> TerraMindConfig:
    """The :class:`TerraMindConfig` of a TerraMind-1.0 state dict, read from its tensors' shapes.

    Raises:
        CheckpointError: a tensor every TerraMind backbone has is missing, or shapes that do not fit.
    """
    dim = int(_need(sd, "encoder_norm.weight", path).shape[0])
    depth = len({k.split(".")[1] for k in sd if re.match(r"encoder\.\d+\.", k)})
    if not depth:
        raise CheckpointError(f"{path}: no encoder blocks (encoder.0.*); not a TerraMind-1.0 backbone state dict")
    hidden = int(_need(sd, "encoder.0.mlp.fc1.weight", path).shape[0])
    inputs, skipped, patch = backbone_inputs(sd, dim, path)
    return TerraMindConfig(
        inputs=tuple(inputs), dim=dim, depth=depth, heads=max(1, dim // HEAD_DIM), hidden=hidden,
        gated="encoder.0.mlp.fc3.weight" in sd, qkv_bias="encoder.0.attn.qkv.bias" in sd,
        proj_bias="encoder.0.attn.proj.bias" in sd, mlp_bias="encoder.0.mlp.fc1.bias" in sd, patch=patch,
        name=f"terramind-1.0-{name}", upstream=entry["repo"], revision=revision or "", sha256=sha256,
        license=table()["license"], not_converted=tuple(skipped))


def encoder_state(sd: dict[str, Tensor], cfg: TerraMindConfig, path: str = "the state dict") -> dict[str, Tensor]:
    """The encoder's tensors of a TerraMind state dict under :class:`TerraMindBackbone`'s names.

    Raises:
        CheckpointError: a LayerNorm bias that is not zero (TerraMind's are zero buffers; the backbone has none).
    """
    out: dict[str, Tensor] = {}
    for i in cfg.inputs:
        up, ours = f"{EMBEDDINGS}{i.upstream}.", f"embeddings.{i.key}."
        out[ours + "modality"] = sd[up + "mod_emb"].reshape(1, cfg.dim)
        out[ours + "positions"] = sd[up + "pos_emb"].reshape(-1, cfg.dim)
        weight = "proj.weight" if i.kind == "pixels" else "token_emb.weight"
        out[ours + ("proj.weight" if i.kind == "pixels" else "table.weight")] = sd[up + weight]
    for b in range(cfg.depth):
        for name in BLOCK_TENSORS:
            if f"encoder.{b}.{name}" in sd:
                out[f"blocks.{b}.{name}"] = sd[f"encoder.{b}.{name}"]
    out["norm.weight"] = sd["encoder_norm.weight"]
    biases = [k for k in sd if re.fullmatch(r"encoder(\.\d+\.norm[12]|_norm)\.bias", k)]
    nonzero = [k for k in biases if bool(sd[k].any())]
    if nonzero:
        raise CheckpointError(f"{path}: LayerNorm biases that are not zero ({nonzero[:3]}); TerraMind-1.0's "
                              "LayerNorms have none: this is another model")
    return out


def load_encoder(model: TerraMindBackbone, sd: dict[str, Tensor], path: str = "the state dict") -> None:
    """Copy TerraMind's encoder tensors into a backbone built from :func:`backbone_config` (every tensor must fit).

    Raises:
        CheckpointError: a tensor is missing, left over, or of another shape.
    """
    mapped = encoder_state(sd, model.cfg, path)
    own = set(model.state_dict())
    missing, extra = sorted(own - set(mapped)), sorted(set(mapped) - own)
    if missing or extra:
        raise CheckpointError(f"{path}: the weights do not fit the architecture read from them: missing "
                              f"{missing[:3]}, unexpected {extra[:3]}")
    try:
        model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {str(exc).splitlines()[-1].strip()}") from exc


def _ours(folder: Path) -> bool:
    """True for a folder :func:`convert_backbone` wrote (its config is a TerraMind backbone's)."""
    try:
        return json.loads((folder / "config.json").read_text()).get("architecture") == ARCHITECTURE
    except (OSError, ValueError, AttributeError):
        return False


def convert_backbone(source: str | os.PathLike[str], out: str | os.PathLike[str], *, size: str | None = None,
                     revision: str | None = None,
                     cache_dir: str | os.PathLike[str] | None = None) -> ConvertedBackbone:
    """Convert a TerraMind-1.0 backbone's encoder into an eo_models backbone folder.

    Args:
        source: The ``.pt`` file, or its Hub repo id (``ibm-esa-geospatial/TerraMind-1.0-tiny``).
        out: The folder to write (new, empty, or one this function wrote: replaced).
        size: Which backbone (``tiny``, ``small``, ``base``, ``large``), when ``source``'s name does not say.
        revision: With a repo id: the revision to download.
        cache_dir: With a repo id: the Hub cache (default: huggingface_hub's, ``$HF_HUB_CACHE``).

    Raises:
        ConfigError: an unknown size.
        CheckpointError: weights that cannot be read or do not fit.
        OutputError: ``out`` is another tool's folder or cannot be written.
    """
    from eo_dataset.errors import OutputError
    from eo_dataset.outputs import check_output, remove_ours

    src = os.fspath(source)
    what = "backbone folder converted by eo-models"
    if size is None and Path(src).is_file():
        try:
            key, entry = backbone_entry(None, src)
        except ConfigError:  # a renamed file: its sizes say what it is; the card names no upstream file
            key, entry = "custom", {"repo": "", "file": Path(src).name}
    else:
        key, entry = backbone_entry(size, src)
    state = check_output(out, what=what, marker="config.json")
    if Path(src).is_file():
        path, commit = Path(src), revision
    elif Path(src).exists() or src.startswith((".", "/", "~")) or src.count("/") != 1:
        raise CheckpointError(f"--from {src!r} is neither a file nor a Hub repo id org/name; pass TerraMind's "
                              f".pt file or its repo ({entry['repo']})")
    else:
        path, commit = download(src, entry["file"], revision, cache_dir)
    sd = read_state_dict(path)
    cfg = backbone_config(sd, key, entry, str(path), commit, sha256_of(path))
    model = TerraMindBackbone(cfg.to_dict())
    load_encoder(model, sd, str(path))
    if state == "ours":
        if not _ours(Path(out)):
            raise OutputError(f"--out {out} is a folder that eo-models convert terramind did not write as a "
                              "backbone; it is left untouched: choose a new or empty folder for --out")
        remove_ours(Path(out), what=what,
                    owned=lambda rel: rel.as_posix() in ("config.json", "model.safetensors", CARD_FILE))
    with contextlib.redirect_stdout(io.StringIO()):
        model.save_pretrained(out)
    return ConvertedBackbone(Path(out), key, model)
