"""TerraMind-1.0's encoder (IBM & ESA, Apache-2.0) as an eo_models backbone: embeddings and fine-tuning on our cubes.

``eo-models convert terramind --from TerraMind_v1_tiny.pt --out tm-tiny`` writes a folder this class loads
(:meth:`TerraMindBackbone.from_pretrained`); ``tests/eo_models/convert/`` checks its output against terratorch's
``TerraMindViT``.

**What it computes.** Every input becomes one token per ``patch`` x ``patch`` pixels (16, TerraMind's):

- a *pixel* input (a cube modality's stored values, e.g. S2 L2A's 12 bands) is brought into TerraMind's units
  (dB for SAR) and normalised with TerraMind's pretraining statistics (``(x - mean) / std`` per band, 0 where not
  valid), each patch flattened (rows, columns, bands) and projected linearly (no bias);
- a *token* input holds the ids of TerraMind's tokenizer of that modality (``eo-models tokenize --tokenizers`` with
  the converted tokenizer makes them), looked up in an embedding table.

Each token gets its input's position embedding (a 2-D sin-cos over TerraMind's 14 x 14 grid of 224 px, stored with
the weights; bicubically resized for other grids, e.g. 16 x 16 for 256 px crops, as TerraMind does) plus its input's
learned modality embedding. The tokens of all given inputs form one sequence through ``depth`` pre-norm blocks
(self-attention, then a GELU MLP (tiny, small) or a SwiGLU (base, large); LayerNorm without bias, eps 1e-6), then a
final LayerNorm.

**Why not the fusion model** (:class:`~eo_models.fusion.model.FusionModel`): its blocks have no biases, a SwiGLU of
another hidden width and LayerNorm eps 1e-5, its positions are fractions of the footprint (TerraMind's are integer
grid cells) and it reads tokens only, while TerraMind's backbone is mostly used on pixels. Holding TerraMind exactly
there would take five options in the fusion model; this module holds it instead. TerraMind's decoder (which
predicts tokens of other modalities) is not converted.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import Tensor, nn

from eo_models.config import Bool, Float, ModalityConfig, NonNegative, Positive, Section, section
from eo_models.errors import CheckpointError, ConfigError
from eo_models.hub.card import CardContent, build_card
from eo_models.hub.resolve import local_or_hub
from eo_models.modality import to_db

ARCHITECTURE = "terramind-1.0-encoder"  #: ``architecture`` of every config of this module


@section("inputs")
class BackboneInput(Section):
    """One input of the backbone: ``pixels`` of the cube modality ``name`` (``modality``: its bands in TerraMind's
    channel order and TerraMind's normalisation) or ``tokens`` of it (``vocab_size`` ids made by ``tokenizer``, the
    upstream tokenizer's repo). ``upstream``: TerraMind's name of the input (``untok_sen2l2a@224``); ``grid``: the
    token grid its stored position embedding covers."""

    name: str
    kind: Literal["pixels", "tokens"]
    upstream: str = ""
    vocab_size: NonNegative = 0
    modality: ModalityConfig | None = None
    tokenizer: str = ""
    grid: tuple[Positive, Positive] = (14, 14)

    def __post_init__(self) -> None:
        if self.kind == "tokens" and self.vocab_size < 1:
            raise ConfigError(f"input {self.name} (tokens): vocab_size must be >= 1, found {self.vocab_size}")
        if self.kind == "pixels":
            if self.modality is None or self.modality.kind != "continuous":
                raise ConfigError(f"input {self.name} (pixels): needs a continuous modality (bands, mean, std), "
                                  f"found {self.modality}")
            if self.modality.name != self.name:
                raise ConfigError(f"input {self.name} (pixels): its modality is called {self.modality.name!r}; "
                                  "name the input after it")

    @property
    def key(self) -> str:
        """The input's key in :attr:`BackboneOutput.tokens` and the model's ``embeddings`` (``s2l2a_pixels``)."""
        return f"{self.name}_{self.kind}"


@section()
class TerraMindConfig(Section):
    """A TerraMind-1.0 encoder: its ``inputs``, ``depth`` blocks ``dim`` wide with ``heads`` heads, a feed-forward of
    ``hidden`` units (``gated``: SwiGLU, else GELU), the biases it has, LayerNorm ``norm_eps``, ``patch`` px per
    token; where it came from (``upstream`` repo, ``revision``, ``sha256`` of the .pt file, ``license``)."""

    inputs: tuple[BackboneInput, ...]
    dim: Positive
    depth: Positive
    heads: Positive
    hidden: Positive
    gated: Bool = False
    qkv_bias: Bool = True
    proj_bias: Bool = True
    mlp_bias: Bool = True
    norm_eps: Float = 1e-6
    patch: Positive = 16
    name: str = "terramind-1.0"
    upstream: str = ""
    revision: str = ""
    sha256: str = ""
    license: str = "apache-2.0"
    not_converted: tuple[str, ...] = ()
    architecture: Literal["terramind-1.0-encoder"] = ARCHITECTURE

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("a TerraMind backbone needs at least one input")
        keys = [i.key for i in self.inputs]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"inputs given twice: {sorted({k for k in keys if keys.count(k) > 1})}")
        if self.dim % self.heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

    def input(self, name: str, kind: str) -> BackboneInput:
        """The input ``name`` of ``kind``; ConfigError naming the inputs otherwise."""
        for i in self.inputs:
            if i.name == name and i.kind == kind:
                return i
        have = [f"{i.name} ({i.kind})" for i in self.inputs]
        raise ConfigError(f"the backbone has no {kind} input {name!r}; it has {have}")


@dataclass(frozen=True)
class BackboneOutput:
    """Encoder outputs: ``tokens[key]`` ``(B, L, dim)`` per given input (``key``: ``<modality>_pixels`` or
    ``<modality>_tokens``; after the final norm), ``grids[key]`` their token grids (rows, columns), ``pooled``
    ``(B, dim)`` (mean over every token) and, when asked for, ``layers``: every block's output ``(B, N, dim)`` over
    the whole sequence (the last one after the final norm, as TerraMind's backbone returns them)."""

    tokens: dict[str, Tensor]
    grids: dict[str, tuple[int, int]]
    pooled: Tensor
    layers: tuple[Tensor, ...] = ()


def pool(x: Tensor, kept: Tensor) -> Tensor:
    """Mean of ``x`` ``(B, N, dim)`` over the tokens ``kept`` ``(B, N)`` (0 for a sample with none)."""
    w = kept.to(x.dtype)[..., None]
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)


def resize_positions(positions: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """``(gh * gw, dim)`` position embeddings of ``grid`` bicubically resized to a ``size`` grid (unchanged when
    equal)."""
    if tuple(size) == tuple(grid):
        return positions
    x = rearrange(positions, "(h w) d -> 1 d h w", h=grid[0], w=grid[1])
    x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
    return rearrange(x, "1 d h w -> (h w) d")


class InputEmbedding(nn.Module):
    """One input's tokens plus its position and modality embeddings (see the module docstring)."""

    def __init__(self, spec: BackboneInput, dim: int, patch: int) -> None:
        super().__init__()
        self.spec, self.patch = spec, patch
        if spec.kind == "tokens":
            self.table = nn.Embedding(spec.vocab_size, dim)
        else:
            m = spec.modality
            assert m is not None  # checked by BackboneInput
            self.proj = nn.Linear(len(m.bands) * patch * patch, dim, bias=False)
            self.register_buffer("mean", torch.tensor(m.mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(m.std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.modality = nn.Parameter(torch.zeros(1, dim))
        self.register_buffer("positions", torch.zeros(spec.grid[0] * spec.grid[1], dim))

    def normalise(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Stored values ``(B, C, H, W)`` -> TerraMind's normalised inputs, 0 where not ``valid`` ``(B, H, W)``."""
        m = self.spec.modality
        assert m is not None
        z = ((to_db(x) if m.transform == "db" else x.float()) - self.mean) / self.std
        if valid is not None:
            z = torch.where(torch.as_tensor(valid, device=z.device).bool().unsqueeze(1), z, 0.0)
        return z

    def forward(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """``(B, L, dim)`` embedded tokens and their grid; ``x``: stored values ``(B, C, H, W)`` (pixels) or token
        ids ``(B, h, w)`` (tokens; ``(B, h * w)`` for a square grid)."""
        spec, p = self.spec, self.patch
        if spec.kind == "pixels":
            c = len(spec.modality.bands)  # type: ignore[union-attr]
            if x.ndim != 4 or x.shape[1] != c or x.shape[2] % p or x.shape[3] % p:
                raise ConfigError(f"input {spec.name} (pixels): expected (B, {c}, H, W) with H, W multiples of {p}, "
                                  f"found {tuple(x.shape)}; crop the samples (e.g. CubeDataset(crop=224))")
            grid = (x.shape[2] // p, x.shape[3] // p)
            z = rearrange(self.normalise(x, valid), "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
            tokens = self.proj(z.to(self.proj.weight.dtype))
        else:
            ids = torch.as_tensor(x, device=self.table.weight.device).long()
            if ids.ndim == 2:
                side = int(round(ids.shape[1] ** 0.5))
                if side * side != ids.shape[1]:
                    raise ConfigError(f"input {spec.name} (tokens): {ids.shape[1]} ids per sample is no square grid; "
                                      "pass them as (B, rows, columns)")
                ids = ids.reshape(ids.shape[0], side, side)
            if ids.ndim != 3:
                raise ConfigError(f"input {spec.name} (tokens): expected ids (B, rows, columns), found "
                                  f"{tuple(ids.shape)}")
            if bool((ids < 0).any()) or bool((ids >= spec.vocab_size).any()):
                raise ConfigError(f"input {spec.name} (tokens): ids must be in [0, {spec.vocab_size}), found "
                                  f"[{int(ids.min())}, {int(ids.max())}]; tokenize with {spec.tokenizer or 'its'} "
                                  "tokenizer")
            grid = (ids.shape[1], ids.shape[2])
            tokens = self.table(ids.flatten(1))
        slot = resize_positions(self.positions, spec.grid, grid) + self.modality
        return tokens + slot, grid


class SelfAttention(nn.Module):
    """Multi-head self-attention (``torch.nn.functional.scaled_dot_product_attention``)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, proj_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Module):
    """``fc2(gelu(fc1 x))``, or gated: ``fc2(silu(fc1 x) * fc3 x)`` (SwiGLU)."""

    def __init__(self, dim: int, hidden: int, gated: bool, bias: bool) -> None:
        super().__init__()
        self.gated = gated
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        if gated:
            self.fc3 = nn.Linear(dim, hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x) if self.gated else F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm self-attention and feed-forward, LayerNorm without bias."""

    def __init__(self, cfg: TerraMindConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=False)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.qkv_bias, cfg.proj_bias)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=False)
        self.mlp = FeedForward(cfg.dim, cfg.hidden, cfg.gated, cfg.mlp_bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class TerraMindBackbone(nn.Module, PyTorchModelHubMixin, library_name="eo-models",
                        tags=["earth-observation", "4m4eo", "terramind", "backbone"],
                        docs_url="https://github.com/4m4eo/4m4eo"):
    """TerraMind-1.0's encoder (see the module docstring).

    Args:
        config: A :class:`TerraMindConfig` or its dict (what ``config.json`` holds).
    """

    def __init__(self, config: dict[str, Any] | TerraMindConfig) -> None:
        super().__init__()
        self.cfg = TerraMindConfig.from_dict(config)
        cfg = self.cfg
        self.embeddings = nn.ModuleDict({i.key: InputEmbedding(i, cfg.dim, cfg.patch) for i in cfg.inputs})
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=False)

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        return self.cfg.dim

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        inputs = ", ".join(f"{i.name} ({i.kind})" for i in self.cfg.inputs)
        return f"TerraMindBackbone({self.cfg.name}: {self.cfg.dim} wide, {self.cfg.depth} blocks, {n / 1e6:.2f} M " \
               f"parameters; inputs {inputs})"

    def forward(self, pixels: Mapping[str, Tensor] | None = None, tokens: Mapping[str, Tensor] | None = None,
                valid: Mapping[str, Tensor] | None = None, available: Mapping[str, Tensor] | None = None, *,
                all_layers: bool = False) -> BackboneOutput:
        """Encode the given inputs together (with gradients: fine-tuning; :meth:`embed` for inference).

        Args:
            pixels: Cube modality -> stored values ``(B, C, H, W)`` (``CubeDataset(..., normalize=False)``; H, W
                multiples of 16, e.g. ``crop=224``).
            tokens: Cube modality -> ids of TerraMind's tokenizer ``(B, rows, columns)``.
            valid: Cube modality -> ``(B, H, W)`` valid pixels of ``pixels`` (invalid ones are set to the mean).
            available: Cube modality -> ``(B,)`` whether each sample has it (``<m>_available`` of a batch): the
                tokens of a sample's missing inputs are left out of attention and of ``pooled`` (their outputs are
                numbers never to be read). Without it every input counts, as in TerraMind.
            all_layers: Also return every block's output.

        Raises:
            ConfigError: no input, an input the backbone does not have, or inputs of the wrong shape.
        """
        given = [(self.cfg.input(n, "pixels"), x) for n, x in (pixels or {}).items()]
        given += [(self.cfg.input(n, "tokens"), x) for n, x in (tokens or {}).items()]
        if not given:
            have = [f"{i.name} ({i.kind})" for i in self.cfg.inputs]
            raise ConfigError(f"no inputs given; the backbone takes {have}")
        parts, grids, keep = [], {}, []
        for spec, x in given:
            emb, grid = self.embeddings[spec.key](x, (valid or {}).get(spec.name) if spec.kind == "pixels" else None)
            parts.append(emb)
            grids[spec.key] = grid
            has = (available or {}).get(spec.name)
            has = torch.ones(emb.shape[0], dtype=torch.bool) if has is None else torch.as_tensor(has).bool()
            keep.append(has.to(emb.device).reshape(-1, 1).expand(-1, emb.shape[1]))
        if len({p.shape[0] for p in parts}) != 1:
            sizes = {k: p.shape[0] for k, p in zip(grids, parts, strict=True)}
            raise ConfigError(f"inputs of different batch sizes {sizes}; give every input the same samples")
        x = torch.cat(parts, dim=1)
        kept = torch.cat(keep, dim=1)
        mask = None
        if not bool(kept.all()):
            keys = kept.clone()
            keys[~kept.any(dim=1), 0] = True  # a sample with no input at all: numbers instead of NaN, never read
            mask = keys[:, None, None, :]
        layers = []
        for block in self.blocks:
            x = block(x, mask)
            if all_layers:
                layers.append(x)
        x = self.norm(x)
        if all_layers:
            layers[-1] = x
        split = torch.split(x, [p.shape[1] for p in parts], dim=1)
        return BackboneOutput(tokens=dict(zip(grids, split, strict=True)), grids=grids, pooled=pool(x, kept),
                              layers=tuple(layers))

    @torch.no_grad()
    def embed(self, pixels: Mapping[str, Tensor] | None = None, tokens: Mapping[str, Tensor] | None = None,
              valid: Mapping[str, Tensor] | None = None,
              available: Mapping[str, Tensor] | None = None) -> BackboneOutput:
        """:meth:`forward` in eval mode without gradients."""
        with self._evaluating():
            return self(pixels, tokens, valid, available)

    def inputs_of(self, batch: Mapping[str, Any],
                  bands: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, Tensor]]:
        """``pixels`` and ``valid`` for :meth:`forward` from a ``CubeDataset(..., normalize=False)`` batch: every
        pixel input of the backbone the batch has (``batch[m]``, ``batch[m + '_valid']``); ``tokens`` from a token
        batch (``batch[m]`` ids) for its token inputs; ``available`` from ``batch[m + '_available']``. Call as
        ``model(**model.inputs_of(batch))``.

        Args:
            batch: The batch.
            bands: Modality -> the batch's band names (``{m: ds.info[m].meta.bands for m in ds.modalities}``):
                the bands are then picked in the backbone's order. Without it the batch's bands must be the
                backbone's, in its order (the card lists them).

        Raises:
            ConfigError: the batch holds none of the inputs, or lacks one of an input's bands.
        """
        out: dict[str, dict[str, Tensor]] = {"pixels": {}, "tokens": {}, "valid": {}, "available": {}}
        for i in self.cfg.inputs:
            x = batch.get(i.name)
            if x is None or not isinstance(x, Tensor):
                continue
            if isinstance(batch.get(f"{i.name}_available"), Tensor):
                out["available"][i.name] = batch[f"{i.name}_available"]
            if i.kind == "pixels" and x.ndim == 4:
                if bands is not None and i.name in bands:
                    want, have = list(i.modality.bands), list(bands[i.name])  # type: ignore[union-attr]
                    lacking = [b for b in want if b not in have]
                    if lacking:
                        raise ConfigError(f"input {i.name}: the batch lacks bands {lacking} (it has {have}); the "
                                          f"backbone needs {want}")
                    x = x[:, [have.index(b) for b in want]]
                out["pixels"][i.name] = x
                if batch.get(f"{i.name}_valid") is not None:
                    out["valid"][i.name] = batch[f"{i.name}_valid"]
            elif i.kind == "tokens" and x.ndim in (2, 3) and not x.is_floating_point():
                out["tokens"][i.name] = x
        if not out["pixels"] and not out["tokens"]:
            raise ConfigError(f"the batch holds none of the backbone's inputs "
                              f"{[f'{i.name} ({i.kind})' for i in self.cfg.inputs]}; its keys: {sorted(batch)}")
        return out

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *args: Any,
                        **kwargs: Any) -> TerraMindBackbone:
        """The library's ``from_pretrained`` after :func:`eo_models.hub.resolve.local_or_hub`."""
        where = local_or_hub(pretrained_model_name_or_path, what="TerraMind backbone",
                             writer="eo-models convert terramind")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return super().from_pretrained(where, *args, **kwargs)
        except (CheckpointError, ConfigError):
            raise
        except Exception as exc:  # huggingface_hub and safetensors raise many types
            raise CheckpointError(f"cannot load TerraMind backbone {os.fspath(where)!r} ({type(exc).__name__}: "
                                  f"{exc}); convert it again with eo-models convert terramind") from exc

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card: upstream source and licence, inputs (bands, normalisation, tokenizers), architecture."""
        return build_card(card_content(self.cfg, sum(p.numel() for p in self.parameters())))


CITATION = ("Jakubik, J., Yang, F., Blumenstiel, B., et al. TerraMind: Large-Scale Generative Multimodality for "
            "Earth Observation. arXiv:2504.11171 (2025).")


def card_content(cfg: TerraMindConfig, parameters: int) -> CardContent:
    """What a converted TerraMind backbone's card says."""
    rows = ["| input | kind | TerraMind name | bands / vocabulary | normalisation or tokenizer |",
            "|---|---|---|---|---|"]
    for i in cfg.inputs:
        if i.kind == "pixels" and i.modality is not None:
            m = i.modality
            norm = f"{'dB, ' if m.transform == 'db' else ''}mean {list(m.mean)}, std {list(m.std)}"
            rows.append(f"| {i.name} | pixels | {i.upstream} | {', '.join(m.bands)} | {norm} |")
        else:
            rows.append(f"| {i.name} | tokens | {i.upstream} | {i.vocab_size} ids | {i.tokenizer or 'n/a'} |")
    source = [f"- upstream: `{cfg.upstream or 'unknown'}`, licence {cfg.license} (IBM & ESA's TerraMind-1.0)",
              f"- revision: {cfg.revision or 'unknown (a local file)'}",
              f"- sha256 of the .pt file: `{cfg.sha256 or 'unknown'}`", "- converter: `eo-models convert terramind`",
              "- TerraMind's decoder is not converted"]
    if cfg.not_converted:
        source.append(f"- TerraMind inputs not converted (no eo-models counterpart): {', '.join(cfg.not_converted)}")
    ff = "SwiGLU" if cfg.gated else "GELU MLP"
    return CardContent(
        title=f"# {cfg.name} backbone, converted for eo-models",
        summary=(f"The encoder of IBM & ESA's TerraMind-1.0 ({cfg.dim} wide, {cfg.depth} blocks of {cfg.heads} heads, "
                 f"{ff}, {parameters:,} parameters) as an eo-models backbone: embeddings and fine-tuning on "
                 f"eo-dataset cubes, one token per {cfg.patch} x {cfg.patch} px. Weights unchanged; verified against "
                 "terratorch's TerraMindViT."),
        tags=("earth-observation", "terramind", "backbone", *sorted({i.name for i in cfg.inputs})),
        license=cfg.license,
        sections=(("Source", tuple(source)), ("Inputs", tuple(rows)), ("Citation", (CITATION,))),
        usage=("from eo_models.backbones.terramind import TerraMindBackbone",
               "model = TerraMindBackbone.from_pretrained(\"<this folder or repo>\")",
               "out = model.embed(pixels={\"<modality>\": x})  # stored values (B, C, 224, 224)",
               "out.pooled, out.tokens  # (B, dim), per input (B, 196, dim)"))


def load_backbone(model: TerraMindBackbone | str | os.PathLike[str]) -> TerraMindBackbone:
    """A :class:`TerraMindBackbone` as is, or loaded from a folder or Hub repo id."""
    return model if isinstance(model, TerraMindBackbone) else TerraMindBackbone.from_pretrained(model)
