"""Encoder-only ONNX export of image tokenizers and fusion models, checked with onnxruntime against torch.

:func:`export_onnx` writes one self-contained ``.onnx`` file (weights inside) for:

- an **image tokenizer** (:class:`~eo_models.tokenizers.tokenizer.Tokenizer`): its encoder path, stored values and
  valid mask in, token ids out. Inputs ``values`` ``(batch, C, H, W)`` float32 (the modality's *stored* values, as
  the cube holds them, cast to float32; the head inside normalises them with the statistics in the metadata) and
  ``valid`` ``(batch, H, W)`` bool; outputs ``tokens`` ``(batch, H / patch, W / patch)`` int64 (the ids
  ``Tokenizer.tokenize`` gives) and ``latents`` ``(batch, D, H / patch, W / patch)`` float32 (the encoder's output
  before quantisation). ``H = W`` is fixed at export (``size``; by default the crop ``eo-models tokenize`` reads
  from a sample of the default grid, 264 px at 10 m); the batch size is free.
- a **fusion model** (:class:`~eo_models.fusion.model.FusionModel`): its encoder over the full token grids (or
  sequences) of a chosen set of its modalities. One input per modality, named after it, ``(batch, L_m)`` int64 token
  ids (row-major grid; ``-1`` where there is no token: a caption past its end, or every id of a sample that lacks
  the modality); outputs ``pooled`` ``(batch, dim)`` (the mean over the sample's tokens) and ``<m>_tokens``
  ``(batch, L_m, dim)`` (zeros where the id is ``-1``), what ``FusionModel.embed`` returns. The batch size is free.

The file's metadata (``metadata_props``; onnxruntime: ``session.get_modelmeta().custom_metadata_map``) says what
to feed it: where the model came from, the modality, bands, normalisation, class table, token grid, inputs and
outputs (JSON values), and the model's whole config.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): with torch 2.14 it exports
every quantizer, while the ``torch.export``-based one stops at vector-quantize-pytorch's data-dependent branch in
the VQ codebook (and takes ten times longer). Every file is run by onnxruntime on a batch of another size than the
traced one before it is put in place; a file whose outputs differ from torch's is not written.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eo_models.errors import CheckpointError, ConfigError
from eo_models.fusion.model import FusionModel, Packed, load_fusion
from eo_models.hub.resolve import local_or_hub
from eo_models.tokenizers.tokenizer import Tokenizer, load_tokenizer
from eo_models.tokens.plan import is_caption_config, token_crop, weights_digest

FORMAT = "eo-models-onnx/1"  #: the ``format`` metadata value of every file :func:`export_onnx` writes
CONFIG_FILE = "config.json"
#: The default sample grid (TerraMesh's, the recipe default): side in pixels at its base resolution in metres.
DEFAULT_SAMPLE_PX, DEFAULT_PIXEL_M = 264, 10.0
TRACE_BATCH, CHECK_BATCH = 2, 3  #: traced with one batch size, checked with another (the batch axis is dynamic)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well onnxruntime reproduces torch.

    Attributes:
        path: The ``.onnx`` file.
        kind: ``tokenizer`` or ``fusion``.
        inputs: Input name -> ``[shape, dtype]`` (``"batch"`` for the free axis).
        outputs: Output name -> ``[shape, dtype]``.
        metadata: The file's metadata (string values; structured ones are JSON).
        max_abs_diff: Per float output, the largest absolute difference between onnxruntime and torch on the check
            batch.
        tokens_equal: For a tokenizer, ``(equal, total)`` token ids on the check batch; ``None`` for a fusion model.
    """

    path: Path
    kind: str
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    metadata: dict[str, str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    tokens_equal: tuple[int, int] | None = None


# -- what a model argument is -----------------------------------------------------------------------------------
def _config_json(where: Path | str) -> Any:
    """The parsed ``config.json`` of a folder, or of a Hub repo (or its cache); ``None`` when it cannot be read."""
    try:
        if isinstance(where, Path):
            path = where / CONFIG_FILE
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(where, CONFIG_FILE, library_name="eo-models"))
        return json.loads(path.read_text())
    except Exception:  # the Hub client, the file system and json raise many types; the caller says what is wrong
        return None


def model_kind(config: Any) -> str:
    """``tokenizer``, ``caption`` or ``fusion`` for a model's parsed ``config.json``; ``""`` for anything else."""
    if not isinstance(config, Mapping):
        return ""
    if is_caption_config(config):
        return "caption"
    if isinstance(config.get("modality"), Mapping) and "encoder" in config:
        return "tokenizer"
    if isinstance(config.get("modalities"), list) and "model" in config:
        return "fusion"
    return ""


def load_exportable(model: str | os.PathLike[str] | Tokenizer | FusionModel) -> Tokenizer | FusionModel:
    """An image tokenizer or a fusion model: objects as they are, folders and Hub repo ids loaded by the kind their
    ``config.json`` says.

    Raises:
        CheckpointError: no such folder or repo, no readable config.json, or it cannot be loaded.
        ConfigError: it is another kind of model (a caption tokenizer, anything else).
    """
    if isinstance(model, Tokenizer | FusionModel):
        return model
    where = local_or_hub(model, what="model", writer="train-tokenizer or train-fusion")
    config = _config_json(where)
    kind = model_kind(config)
    shown = os.fspath(model)
    if kind == "tokenizer":
        return load_tokenizer(where)
    if kind == "fusion":
        return load_fusion(where)
    if kind == "caption":
        raise ConfigError(f"{shown} is a caption tokenizer (WordPiece, no network to export); export takes an image "
                          "tokenizer or a fusion model: use the caption tokenizer's tokenizer.json as it is")
    if config is None:
        why = ("the folder has none, or not JSON" if isinstance(where, Path) else "the Hub cannot be reached, has no "
               "such repo, or, offline (HF_HUB_OFFLINE=1), the local Hub cache does not hold it")
        raise CheckpointError(f"cannot read the {CONFIG_FILE} of {shown} ({why}); pass a folder written by "
                              "train-tokenizer or train-fusion, or a Hub repo id of one")
    found = f"config.json keys: {sorted(config)}" if isinstance(config, Mapping) else "config.json is no mapping"
    raise ConfigError(f"{shown} is neither an image tokenizer nor a fusion model of eo-models ({found}); pass a folder "
                      "written by train-tokenizer or train-fusion, or a Hub repo id of one")


# -- the exported networks ----------------------------------------------------------------------------------------
class TokenizerEncoder(nn.Module):
    """A tokenizer's encoder path: ``(values, valid) -> (tokens, latents)`` (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, values: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        t = self.tokenizer
        latents = t.encoder(t.head.inputs(values, valid))
        return t.quantizer(latents).indices, latents


class FusionEncoder(nn.Module):
    """A fusion model's encoder over the full token grids of ``modalities``: ``(*ids) -> (pooled, *tokens)``."""

    def __init__(self, model: FusionModel, modalities: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(modalities)
        index = {m.name: i for i, m in enumerate(model.cfg.modalities)}
        slots = [torch.arange(int(model.starts[index[n]]), int(model.starts[index[n]]) + model.cfg.modality(n).tokens)
                 for n in self.names]
        self.lengths = [len(s) for s in slots]
        self.register_buffer("slot", torch.cat(slots), persistent=False)

    def forward(self, *ids: Tensor) -> tuple[Tensor, ...]:
        tokens = torch.cat([i.long() for i in ids], dim=1)
        pad = tokens < 0
        slot = self.slot[None].expand(tokens.shape[0], -1)
        # a sample without any token attends its first slot, so attention gives numbers (never read): what
        # FusionModel's keep_one does, without the Python branch a trace would freeze
        first = torch.zeros_like(pad)
        first[:, 0] = True
        attend_pad = pad & ~(first & pad.all(dim=1, keepdim=True))
        out = self.model.encode(Packed(slot=slot, ids=torch.where(pad, -1, tokens), pad=attend_pad))
        keep = (~pad)[..., None].to(out.dtype)
        out = out * keep
        pooled = out.sum(1) / keep.sum(1).clamp(min=1)
        return (pooled, *out.split(self.lengths, dim=1))


# -- example inputs -----------------------------------------------------------------------------------------------
def tokenizer_inputs(tokenizer: Tokenizer, batch: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random stored values shaped like the modality's (drawn from its class table or statistics) and a valid mask
    with about one pixel in ten invalid: ``(batch, C, size, size)`` float32 and ``(batch, size, size)`` bool."""
    m = tokenizer.cfg.modality
    g = torch.Generator().manual_seed(seed)
    shape = (batch, len(m.bands), size, size)
    if m.kind == "continuous":
        mean = torch.tensor(m.mean).view(1, -1, 1, 1)
        std = torch.tensor(m.std).view(1, -1, 1, 1)
        x = mean + std * torch.randn(shape, generator=g)
        if m.transform == "db":  # the statistics are in dB, the stored values linear
            x = 10 ** (x / 10)
    elif m.kind == "categorical":
        classes = torch.tensor(m.classes, dtype=torch.float32)
        x = classes[torch.randint(0, len(classes), shape, generator=g)]
    else:
        x = (torch.rand(shape, generator=g) > 0.5).float()
    valid = torch.rand((batch, size, size), generator=g) > 0.1
    return x.float(), valid


def fusion_inputs(model: FusionModel, modalities: Sequence[str], batch: int, seed: int = 0) -> list[Tensor]:
    """Random token ids ``(batch, L_m)`` per modality; a sequence modality's last quarter is ``-1`` (past the end)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in modalities:
        m = model.cfg.modality(name)
        ids = torch.randint(0, m.vocab_size, (batch, m.tokens), generator=g)
        if m.kind == "sequence":
            ids[:, m.tokens - m.tokens // 4:] = -1
        out.append(ids)
    return out


def default_size(tokenizer: Tokenizer) -> int:
    """The side (modality pixels) ``eo-models tokenize`` reads from a sample of the default grid (264 px at 10 m):
    the largest multiple of the patch that fits."""
    factor = max(1, round(tokenizer.cfg.modality.resolution_m / DEFAULT_PIXEL_M))
    return token_crop(DEFAULT_SAMPLE_PX, factor, tokenizer.patch).side


# -- metadata -----------------------------------------------------------------------------------------------------
def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def tokenizer_metadata(tokenizer: Tokenizer, source: str, size: int) -> dict[str, str]:
    """What a user needs to feed a tokenizer's encoder file (string values, structured ones JSON)."""
    m = tokenizer.cfg.modality
    grid = [size // tokenizer.patch] * 2
    norm = {"kind": m.kind, "transform": m.transform}
    if m.kind == "continuous":
        norm.update(formula="(transform(value) - mean) / std per band, 0 where not valid", mean=list(m.mean),
                    std=list(m.std))
    elif m.kind == "categorical":
        norm["formula"] = "stored class id -> class index (unknown ids and invalid pixels: no data)"
    else:
        norm["formula"] = "value > 0 -> 1 else 0, per band"
    return {
        "kind": "tokenizer", "source": source, "modality": m.name, "bands": _json(list(m.bands)),
        "units": m.units, "scale": repr(m.scale), "offset": repr(m.offset), "resolution_m": repr(m.resolution_m),
        "normalisation": _json(norm), "classes": _json(dict(zip(map(str, m.classes), m.class_names, strict=False))),
        "input_size": _json([size, size]), "patch": str(tokenizer.patch), "token_grid": _json(grid),
        "codebook_size": str(tokenizer.codebook_size), "weights_sha256": weights_digest(tokenizer),
        "inputs": _json({"values": [["batch", len(m.bands), size, size], "float32"],
                         "valid": [["batch", size, size], "bool"]}),
        "outputs": _json({"tokens": [["batch", *grid], "int64"],
                          "latents": [["batch", tokenizer.cfg.encoder.latent_dim, *grid], "float32"]}),
        "config": _json(tokenizer.cfg.to_dict()),
    }


def fusion_metadata(model: FusionModel, modalities: Sequence[str], source: str) -> dict[str, str]:
    """What a user needs to feed a fusion encoder file (string values, structured ones JSON)."""
    dim = model.cfg.model.dim
    mods = [model.cfg.modality(n) for n in modalities]
    described = [{"name": m.name, "kind": m.kind, "vocab_size": m.vocab_size, "tokens": m.tokens,
                  "token_grid": list(m.grid) if m.kind == "image" else None,
                  "length": m.length if m.kind == "sequence" else None, "tokenizer": m.tokenizer,
                  "tokenizer_weights_sha256": m.digest} for m in mods]
    return {
        "kind": "fusion", "source": source, "modalities": _json(described), "dim": str(dim),
        "recipe_hash": model.cfg.recipe_hash,
        "inputs": _json({m.name: [["batch", m.tokens], "int64"] for m in mods}),
        "outputs": _json({"pooled": [["batch", dim], "float32"],
                          **{f"{m.name}_tokens": [["batch", m.tokens, dim], "float32"] for m in mods}}),
        "config": _json(model.cfg.to_dict()),
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of an ONNX file (``{}`` for a file that is no ONNX model)."""
    import onnx

    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # protobuf and the file system raise many types: not an ONNX file we can read
        return {}
    return {p.key: p.value for p in proto.metadata_props}


def is_export(path: str | os.PathLike[str]) -> bool:
    """True for an ONNX file :func:`export_onnx` wrote (the only kind of file it replaces)."""
    return read_metadata(path).get("format") == FORMAT


# -- export -------------------------------------------------------------------------------------------------------
def export_onnx(model: str | os.PathLike[str] | Tokenizer | FusionModel, out: str | os.PathLike[str], *,
                modalities: Sequence[str] | None = None, size: int | None = None, opset: int = 17,
                tolerance: float = 1e-4) -> ExportResult:
    """Write the encoder of an image tokenizer or a fusion model to an ONNX file, checked with onnxruntime.

    Args:
        model: A tokenizer or fusion model folder, a Hub repo id ``org/name``, or the object.
        out: The ``.onnx`` file to write: a new path, or a file this function wrote before (replaced).
        modalities: Fusion model only: the modalities the encoder reads (default: all of the model's).
        size: Tokenizer only: the input side in the modality's pixels, a multiple of the patch (default:
            :func:`default_size`).
        opset: The ONNX opset.
        tolerance: Largest accepted difference between onnxruntime's and torch's float outputs, relative to their
            magnitude (``tolerance * max(1, max |torch output|)``).

    Returns:
        What was written, with the differences measured on a check batch.

    Raises:
        ConfigError: not an exportable model, unknown modalities, a size that is no multiple of the patch.
        CheckpointError: the model cannot be loaded, or onnxruntime's outputs differ from torch's (nothing written).
        OutputError: ``out`` is a folder, or a file that is not an export of eo-models (left untouched).
    """
    from eo_dataset.outputs import check_output_file

    path = check_output_file(out, what="ONNX file written by eo-models export", is_ours=is_export)
    source = f"<{type(model).__name__} object>" if isinstance(model, nn.Module) else os.fspath(model)
    net = load_exportable(model)
    if isinstance(net, Tokenizer):
        if modalities:
            raise ConfigError(f"modalities {list(modalities)} given for a tokenizer; a tokenizer reads one modality "
                              f"({net.modality}): leave them out")
        side = default_size(net) if size is None else size
        if isinstance(side, bool) or not isinstance(side, int) or side < net.patch or side % net.patch:
            raise ConfigError(f"size {side!r} is not a positive multiple of the tokenizer's patch ({net.patch} px); "
                              f"pass e.g. {default_size(net)}")
        wrapper: nn.Module = TokenizerEncoder(net)
        names, outputs = ["values", "valid"], ["tokens", "latents"]
        trace = tokenizer_inputs(net, TRACE_BATCH, side, seed=0)
        check = tokenizer_inputs(net, CHECK_BATCH, side, seed=1)
        metadata = tokenizer_metadata(net, source, side)
    else:
        if size is not None:
            raise ConfigError(f"size {size} given for a fusion model; its inputs are token ids: leave it out")
        chosen = tuple(modalities) if modalities else net.modalities
        for name in chosen:
            net.cfg.modality(name)
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"modalities named twice: {list(chosen)}; name each once")
        wrapper = FusionEncoder(net, chosen)
        names, outputs = list(chosen), ["pooled", *(f"{n}_tokens" for n in chosen)]
        trace = fusion_inputs(net, chosen, TRACE_BATCH, seed=0)
        check = fusion_inputs(net, chosen, CHECK_BATCH, seed=1)
        metadata = fusion_metadata(net, chosen, source)
    metadata = {"format": FORMAT, **metadata}
    was = net.training
    net.eval()
    try:
        expected = _reference(net, wrapper, check, names)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        try:
            _write(wrapper, tuple(trace), Path(tmp), names, outputs, opset, metadata)
            got = _run(Path(tmp), names, check)
            diffs, equal = _compare(outputs, expected, got, tolerance, source)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        net.train(was)
    shapes = json.loads(metadata["inputs"]), json.loads(metadata["outputs"])
    return ExportResult(path=path, kind=metadata["kind"], inputs=shapes[0], outputs=shapes[1], metadata=metadata,
                        max_abs_diff=diffs, tokens_equal=equal)


def _write(wrapper: nn.Module, args: tuple[Tensor, ...], path: Path, names: list[str], outputs: list[str],
           opset: int, metadata: Mapping[str, str]) -> None:
    """Trace ``wrapper`` into ``path`` (batch axis dynamic), then add the metadata and check the file."""
    import onnx

    axes = {n: {0: "batch"} for n in [*names, *outputs]}
    with warnings.catch_warnings():
        # the TorchScript exporter warns that it is deprecated, and about every Python value the trace freezes (the
        # fixed input size, shape checks): expected here, the check on another batch size below says it works. No
        # torch.no_grad(): without gradients nn.TransformerEncoderLayer takes a fused kernel ONNX has no operator for
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    proto = onnx.load(str(path))
    proto.producer_name, proto.doc_string = "eo-models", _doc(metadata)
    onnx.helper.set_model_props(proto, dict(metadata))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _reference(net: Tokenizer | FusionModel, wrapper: nn.Module, inputs: Sequence[Tensor],
               names: Sequence[str]) -> list[np.ndarray]:
    """Torch's outputs for the check batch, from the models' own methods (``tokenize``, ``embed``) wherever they give
    them, so the file is checked against the library and not only against the wrapper that was traced."""
    with torch.no_grad():
        if isinstance(net, Tokenizer):
            return [net.tokenize(*inputs).numpy(), wrapper(*inputs)[1].numpy()]
        emb = net.embed(dict(zip(names, inputs, strict=True)), list(names))
        return [emb.pooled.numpy(), *(emb.tokens[n].numpy() for n in names)]


def _doc(metadata: Mapping[str, str]) -> str:
    if metadata["kind"] == "tokenizer":
        return (f"eo-models tokenizer encoder ({metadata['modality']}, from {metadata['source']}): stored values "
                "(float32) and valid mask -> token ids and pre-quantisation latents; see the metadata")
    return (f"eo-models fusion encoder (from {metadata['source']}): token ids per modality -> pooled and per-token "
            "embeddings; see the metadata")


def _run(path: Path, names: list[str], inputs: Sequence[Tensor]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not for the user of this command
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def _compare(outputs: list[str], expected: list[np.ndarray], got: list[np.ndarray], tolerance: float,
             source: str) -> tuple[dict[str, float], tuple[int, int] | None]:
    diffs: dict[str, float] = {}
    equal = None
    for name, want, have in zip(outputs, expected, got, strict=True):
        if tuple(want.shape) != tuple(have.shape):
            raise CheckpointError(f"the ONNX export of {source} gives {name} of shape {list(have.shape)}, torch "
                                  f"{list(want.shape)}; nothing was written (please report this)")
        if np.issubdtype(want.dtype, np.integer):
            equal = (int((want == have).sum()), int(want.size))
            continue
        diff = float(np.abs(want.astype(np.float64) - have).max()) if want.size else 0.0
        limit = tolerance * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
        if not math.isfinite(diff) or diff > limit:
            raise CheckpointError(f"the ONNX export of {source} gives {name} up to {diff:.3g} away from torch's "
                                  f"(accepted: {limit:.3g}); nothing was written (please report this)")
        diffs[name] = diff
    return diffs, equal
