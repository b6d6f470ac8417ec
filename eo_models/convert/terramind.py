"""TerraMind-1.0 tokenizers (IBM & ESA, Apache-2.0) -> standard eo_models tokenizer folders.

TerraMind ships pickled ``.pt`` state dicts without a config; its architecture lives only in terratorch's code. This
module reads such a file (``torch.load(..., weights_only=True)``: tensors only, no code runs), reads the sizes of the
architecture from the tensors' shapes, takes what is not in them (FSQ levels, band order, normalisation) from
``terramind.yaml`` beside this file, and writes a folder :class:`~eo_models.tokenizers.tokenizer.Tokenizer` loads:
``model.safetensors``, ``config.json`` and a model card naming the upstream licence, repo, revision and file hash.

The eo_models modules that hold TerraMind's architecture are :mod:`eo_models.tokenizers.terramind_encoder`
(``encoder.type: terramind_vit``), :mod:`eo_models.tokenizers.quantizers.sigmoid_fsq` (``quantizer.type:
sigmoid_fsq``), :mod:`eo_models.tokenizers.decoders.terramind_diffusion` (``decoder.type: terramind_diffusion``,
the S2/S1/DEM tokenizers) and :mod:`eo_models.tokenizers.decoders.terramind_vit` (``decoder.type: terramind_vit``,
the LULC VQ-VAE, whose input is a one-hot of the classes: the categorical head's class embedding, set here to the
one-hot table in TerraMind's channel order); ``tests/eo_models/convert/`` checks them against terratorch's own
modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from eo_models.config import ModalityConfig, TokenizerConfig
from eo_models.errors import CheckpointError, ConfigError
from eo_models.hub.card import CARD_FILE, CardContent, render_card
from eo_models.tokenizers.terramind_encoder import HEAD_DIM
from eo_models.tokenizers.tokenizer import Tokenizer

TABLE = Path(__file__).with_name("terramind.yaml")
#: eo_models parameter prefix of each TerraMind state-dict prefix
PREFIXES = {"encoder.": "encoder.encoder.", "quant_proj.": "encoder.quant_proj.", "decoder.": "decoder.decoder.",
            "post_quant_proj.": "decoder.post_quant_proj."}


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_tokenizer` wrote: the folder, the upstream tokenizer's name and the loaded tokenizer."""

    out: Path
    name: str
    tokenizer: Tokenizer


def table() -> dict[str, Any]:
    """``terramind.yaml``: TerraMind's tokenizers by name (``S2L2A`` ...) and what their inputs are in our cubes."""
    return yaml.safe_load(TABLE.read_text())


def entry_for(name: str | None, source: str) -> tuple[str, dict[str, Any]]:
    """The table entry of tokenizer ``name``, or the one whose repo or file name ``source`` is.

    Raises:
        ConfigError: no entry matches.
    """
    entries = table()["tokenizers"]
    if name is not None:
        if name not in entries:
            raise ConfigError(f"unknown TerraMind tokenizer {name!r}; known: {sorted(entries)}")
        return name, entries[name]
    for key, e in entries.items():
        if source.rstrip("/") == e["repo"] or Path(source).name == e["file"]:
            return key, e
    raise ConfigError(f"cannot tell which TerraMind tokenizer {source!r} is (neither a known repo nor a file named "
                      f"like {entries['S2L2A']['file']!r}); pass --tokenizer, one of {sorted(entries)}")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A TerraMind ``.pt`` state dict, loaded with ``weights_only=True`` (tensors only; no code runs).

    Raises:
        CheckpointError: the file is missing, not a tensor pickle, or not a state dict.
    """
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"no such file {os.fspath(path)!r}: expected TerraMind's .pt weights (e.g. "
                              "TerraMind_Tokenizer_S2L2A.pt)") from exc
    except Exception as exc:  # torch raises many types for files that are not tensor pickles
        raise CheckpointError(f"cannot read {os.fspath(path)!r} as a state dict ({type(exc).__name__}: {exc}); "
                              "expected TerraMind's .pt weights, loadable with torch.load(weights_only=True)") from exc
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # a training checkpoint around the weights
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{os.fspath(path)!r} holds a {type(sd).__name__}, not a state dict of tensors")
    return sd


def _need(sd: dict[str, Tensor], key: str, path: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"{path}: no tensor {key!r}; not a TerraMind-1.0 tokenizer state dict (it has "
                              f"{len(sd)} tensors, e.g. {sorted(sd)[:3]})")
    return sd[key]


def architecture(sd: dict[str, Tensor], path: str = "the state dict") -> dict[str, Any]:
    """The ``encoder`` and ``decoder`` config sections and the input ``channels``, read from a state dict's shapes
    (attention heads: ``dim / 64``, as in every TerraMind ViT). The decoder is the patched-UNet diffusion decoder
    (S2, S1, DEM) or, with ``post_quant_proj`` and ``decoder.out_proj`` tensors, the ViT decoder (LULC).

    Raises:
        CheckpointError: a tensor TerraMind's tokenizers have is missing, or the decoder is not theirs.
    """
    proj = _need(sd, "encoder.proj.weight", path)
    dim, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = len({k.split(".")[2] for k in sd if re.match(r"encoder\.blocks\.\d+\.", k)})
    latent = _need(sd, "quant_proj.weight", path).shape[0]
    encoder = {"type": "terramind_vit", "patch": int(patch), "dim": int(dim), "depth": depth,
               "heads": max(1, int(dim) // HEAD_DIM), "latent_dim": int(latent)}
    if "post_quant_proj.weight" in sd or "decoder.out_proj.weight" in sd:
        return {"encoder": encoder, "decoder": _vit_decoder(sd, path, int(channels), int(patch), int(latent)),
                "channels": int(channels)}
    first = _need(sd, "decoder.input_blocks.0.0.weight", path)
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("decoder.input_blocks.")})
    down = [i for i in blocks if f"decoder.input_blocks.{i}.0.op.weight" in sd]
    levels = len(down) + 1
    per_level = len(blocks) // levels - 1
    widths = [int(sd[f"decoder.input_blocks.{i}.0.in_layers.2.weight"].shape[0]) for i in blocks[1:] if i not in down]
    decoder = {"type": "terramind_diffusion", "unet_dims": tuple(widths[per_level - 1::per_level]),
               "layers_per_block": per_level}
    unet_patch2 = (first.shape[1] - latent) // channels
    if unet_patch2 != 16 or first.shape[0] != decoder["unet_dims"][0]:
        raise CheckpointError(f"{path}: the decoder's first layer {tuple(first.shape)} is not TerraMind's patched "
                              f"UNet (4 x 4 pixel patches of {channels} channels plus {latent} latent channels)")
    return {"encoder": encoder, "decoder": decoder, "channels": int(channels)}


def _vit_decoder(sd: dict[str, Tensor], path: str, channels: int, patch: int, latent: int) -> dict[str, Any]:
    """The ``decoder`` section of a ViT decoder (TerraMind's VQ-VAE tokenizers: LULC), read from its shapes."""
    post = _need(sd, "post_quant_proj.weight", path)
    out = _need(sd, "decoder.out_proj.weight", path)
    depth = len({k.split(".")[2] for k in sd if re.match(r"decoder\.blocks\.\d+\.", k)})
    if post.shape[1] != latent or out.shape != (channels * patch * patch, post.shape[0]) or depth == 0:
        raise CheckpointError(f"{path}: the decoder (post_quant_proj {tuple(post.shape)}, out_proj "
                              f"{tuple(out.shape)}, {depth} blocks) is not TerraMind's ViT decoder ({latent} latent "
                              f"channels to {patch} x {patch} pixel patches of {channels} channels)")
    return {"type": "terramind_vit", "dim": int(post.shape[0]), "layers_per_block": depth}


def modality_config(name: str, entry: dict[str, Any]) -> ModalityConfig:
    """The cube modality of TerraMind's tokenizer ``name`` (its table entry): bands in TerraMind's order, units,
    TerraMind's normalisation statistics; a categorical one: the cube's class codes in TerraMind's one-hot channel
    order, one embedding channel per class."""
    if entry["kind"] == "categorical":
        return ModalityConfig(name=entry["modality"], kind="categorical", bands=tuple(entry["bands"]),
                              classes=tuple(entry["classes"]), class_names=tuple(entry["class_names"]),
                              units=entry.get("units", ""), resolution_m=float(entry.get("resolution_m", 10.0)),
                              embed_dim=len(entry["classes"]), stats_from=f"TerraMind-1.0 ({name})")
    return ModalityConfig(name=entry["modality"], kind=entry["kind"], bands=tuple(entry["bands"]),
                          mean=tuple(entry["mean"]), std=tuple(entry["std"]),
                          transform=entry.get("transform", "none"), units=entry.get("units", ""),
                          scale=float(entry.get("scale", 1.0)), offset=float(entry.get("offset", 0.0)),
                          resolution_m=float(entry.get("resolution_m", 10.0)),
                          stats_from=f"TerraMind-1.0 pretraining statistics ({name})")


def tokenizer_config(name: str, entry: dict[str, Any], arch: dict[str, Any], sample_steps: int = 50) -> TokenizerConfig:
    """The :class:`TokenizerConfig` of a converted TerraMind tokenizer."""
    want = len(entry["classes"]) if entry["kind"] == "categorical" else len(entry["bands"])
    if arch["channels"] != want:
        what = (f"{want} classes (a one-hot)" if entry["kind"] == "categorical"
                else f"{len(entry['bands'])} bands {entry['bands']}")
        raise CheckpointError(f"TerraMind {name} weights take {arch['channels']} channels, but its table entry has "
                              f"{what}; pass the right --tokenizer")
    return TokenizerConfig.from_dict({
        "modality": modality_config(name, entry), "name": f"terramind-1.0-{name.lower()}",
        "quantizer": {"type": "sigmoid_fsq", "levels": tuple(entry["levels"])},
        "encoder": arch["encoder"], "decoder": {**arch["decoder"], "sample_steps": sample_steps}})


def load_terramind(tok: Tokenizer, sd: dict[str, Tensor], path: str = "the state dict") -> None:
    """Copy a TerraMind state dict into a tokenizer built from :func:`tokenizer_config` (every tensor must fit).

    Raises:
        CheckpointError: a tensor is missing, left over, or of another shape.
    """
    mapped = {}
    for key, value in sd.items():
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"{path}: unexpected tensor {key!r}; TerraMind tokenizers have only "
                                  f"{sorted(p.rstrip('.') for p in PREFIXES)}")
        mapped[PREFIXES[prefix] + key[len(prefix):]] = value
    own = {k for k in tok.state_dict() if not k.startswith("head.")}
    missing, extra = sorted(own - set(mapped)), sorted(set(mapped) - own)
    if missing or extra:
        raise CheckpointError(f"{path}: the weights do not fit the architecture read from them: missing "
                              f"{missing[:3]}, unexpected {extra[:3]}")
    try:
        tok.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {str(exc).splitlines()[-1].strip()}") from exc


def set_one_hot(tok: Tokenizer, entry: dict[str, Any]) -> None:
    """Make a categorical tokenizer's class embedding TerraMind's one-hot: class ``i`` of ``entry["classes"]`` ->
    channel ``i``; pixels that are not valid or of another code (the head's last row) -> the channel of
    ``entry["nodata"]``. Continuous tokenizers are left as they are."""
    if entry["kind"] != "categorical":
        return
    k = len(entry["classes"])
    table = torch.eye(k + 1, k)
    table[k] = table[entry["classes"].index(entry["nodata"])]
    with torch.no_grad():
        tok.head.embed.weight.copy_(table)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The file's sha256 (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(repo: str, file: str, revision: str | None = None,
             cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str | None]:
    """``file`` of Hub repo ``repo`` (the cache works offline with ``HF_HUB_OFFLINE=1``) and the commit it came from.

    Raises:
        CheckpointError: the Hub or the cache has no such file.
    """
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo, file, revision=revision, cache_dir=cache_dir))
    except Exception as exc:  # network, offline cache misses, missing repos: many types
        raise CheckpointError(f"cannot get {file} from the Hub repo {repo} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}); online, check the repo id; offline, download it first "
                              "or pass the .pt file's path") from exc
    commit = path.parent.name if path.parent.parent.name == "snapshots" else revision
    return path, commit


def card(name: str, entry: dict[str, Any], cfg: TokenizerConfig, source: str, revision: str | None,
         sha256: str) -> str:
    """The converted tokenizer's model card: upstream licence, repo, revision, file hash, bands and normalisation."""
    m, info = cfg.modality, table()
    if m.kind == "categorical":
        rows = ["- input: a one-hot of the classes in TerraMind's channel order (not valid or other codes: "
                f"channel of {entry['nodata']}); output: one logit per class", "",
                "| channel | class id (cube) | name |", "|---:|---:|---|",
                *(f"| {i} | {c} | {n} |" for i, (c, n) in enumerate(zip(m.classes, m.class_names, strict=True)))]
    else:
        rows = ["- normalisation: (x - mean) / std per band, TerraMind's pretraining statistics", "",
                "| band (cube) | band (TerraMind) | mean | std |", "|---|---|---:|---:|",
                *(f"| {b} | {u} | {mu} | {sd} |" for b, u, mu, sd in
                  zip(m.bands, entry["upstream_bands"], m.mean, m.std, strict=True))]
    content = CardContent(
        title=f"# TerraMind-1.0 tokenizer {name}, converted for eo-models",
        summary=(f"IBM & ESA's TerraMind-1.0 {name} tokenizer (ViT encoder, FSQ levels {list(cfg.quantizer.levels)}, "
                 f"{'patched-UNet diffusion' if cfg.decoder.type == 'terramind_diffusion' else 'ViT'} decoder) as an "
                 f"eo-models tokenizer for the cube modality `{m.name}`: one token per {cfg.encoder.patch} x "
                 f"{cfg.encoder.patch} px. Weights unchanged; verified against terratorch's modules."),
        tags=("earth-observation", "tokenizer", "terramind", m.name), license=info["license"],
        sections=(
            ("Source", (f"- upstream: `{entry['repo']}` (file `{entry['file']}`), licence Apache-2.0",
                        f"- converted from: `{source}`", f"- revision: {revision or 'unknown (a local file)'}",
                        f"- sha256 of the .pt file: `{sha256}`", "- converter: `eo-models convert terramind`")),
            ("Modality", (f"- cube modality: `{m.name}` ({m.kind}, {m.units or 'n/a'}"
                          f"{', modelled in dB' if m.transform == 'db' else ''})", *rows)),
            ("Citation", (info["citation"],))),
        usage=("from eo_models.tokenizers import Tokenizer",
               "tok = Tokenizer.from_pretrained(\"<this folder or repo>\")",
               "tokens = tok.tokenize(x, valid)  # stored values (B, C, H, W), H, W multiples of 16; valid (B, H, W)",
               "recon = tok.reconstruct(x, valid, steps=50, seed=0)" if cfg.decoder.type == "terramind_diffusion"
               else "recon = tok.reconstruct(x, valid)  # class ids"))
    return render_card(content)


def _converted_here(folder: Path) -> bool:
    """True for a folder :func:`convert_tokenizer` wrote (its config names a TerraMind-1.0 tokenizer)."""
    try:
        return str(json.loads((folder / "config.json").read_text()).get("name", "")).startswith("terramind-1.0-")
    except (OSError, ValueError, AttributeError):
        return False


def convert_tokenizer(source: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
                      revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                      sample_steps: int = 50) -> Converted:
    """Convert a TerraMind-1.0 tokenizer into an eo_models tokenizer folder.

    Args:
        source: The ``.pt`` file, or its Hub repo id (``ibm-esa-geospatial/TerraMind-1.0-Tokenizer-S2L2A``).
        out: The folder to write (new, empty, or a converted tokenizer's: replaced).
        name: Which TerraMind tokenizer (``S2L2A`` ...), when ``source``'s name does not say.
        revision: With a repo id: the revision to download.
        cache_dir: With a repo id: the Hub cache (default: huggingface_hub's, ``$HF_HUB_CACHE``).
        sample_steps: DDIM steps ``detokenize`` uses when not told.

    Raises:
        ConfigError: an unknown tokenizer.
        CheckpointError: weights that cannot be read or do not fit.
        OutputError: ``out`` is another tool's folder or cannot be written.
    """
    from eo_dataset.errors import OutputError
    from eo_dataset.outputs import check_output, remove_ours

    src = os.fspath(source)
    key, entry = entry_for(name, src)
    state = check_output(out, what="tokenizer folder converted by eo-models", marker="config.json")
    if Path(src).is_file():
        path, commit = Path(src), revision
    elif Path(src).exists() or src.startswith((".", "/", "~")) or src.count("/") != 1:
        raise CheckpointError(f"--from {src!r} is neither a file nor a Hub repo id org/name; pass TerraMind's "
                              f".pt file or its repo ({entry['repo']})")
    else:
        path, commit = download(src, entry["file"], revision, cache_dir)
    sd = read_state_dict(path)
    cfg = tokenizer_config(key, entry, architecture(sd, str(path)), sample_steps)
    tok = Tokenizer(cfg.to_dict())
    load_terramind(tok, sd, str(path))
    set_one_hot(tok, entry)
    if state == "ours":
        if not _converted_here(Path(out)):
            raise OutputError(f"--out {out} is a tokenizer folder that eo-models convert did not write; it is left "
                              "untouched: choose a new or empty folder for --out")
        remove_ours(Path(out), what="tokenizer folder converted by eo-models",
                    owned=lambda rel: rel.as_posix() in ("config.json", "model.safetensors", CARD_FILE))
    with contextlib.redirect_stdout(io.StringIO()):
        tok.save_pretrained(out)
    (Path(out) / CARD_FILE).write_text(card(key, entry, cfg, src, commit, sha256_of(path)))
    return Converted(Path(out), key, tok)
