"""The fusion model: one transformer over the discrete tokens of every modality, trained by masked multimodal token
reconstruction (4M).

- **Tokens in one sequence.** The token ids of all modalities of a sample are laid side by side (the config's
  modality order; image grids row-major) into ``T`` slots. Every slot has a fixed position (a shared 2-D sin-cos over
  the footprint for image tokens, :mod:`eo_models.fusion.positions`; 1-D for the caption), and every modality a
  learned embedding shared by encoder and decoder. One embedding table holds every modality's vocabulary (each at
  its own offset).
- **Encoder** over the *input* slots only (:meth:`FusionModel.pack` gathers them; padding masked out of attention).
- **Decoder**: one query per *target* slot (a learned mask token + position + modality embedding; for a sequence
  modality the previous token's embedding instead of the mask token, teacher forcing), self-attention only among
  queries of the same modality (causal for a sequence), cross-attention to the encoder's output.
- **Loss**: cross-entropy per target modality over its target tokens in the batch, then the mean over the modalities
  that have targets (each modality counts equally, whatever its number of tokens).

A slot is used only where its id is not ``-1`` and its modality is available (``<m>_available``), whatever mask is
passed in: a missing modality never reaches the encoder or the loss.

Saved and loaded with ``huggingface_hub``'s :class:`~huggingface_hub.PyTorchModelHubMixin` (``model.safetensors``,
``config.json`` with the whole :class:`~eo_models.fusion.config.FusionConfig`, a model card).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import Tensor, nn

from eo_models.errors import CheckpointError, ConfigError
from eo_models.fusion.config import FusionConfig
from eo_models.fusion.layers import DecoderBlock, EncoderBlock, keep_one, norm
from eo_models.fusion.positions import grid_positions, sequence_positions
from eo_models.hub.card import CardContent, build_card, render_card
from eo_models.hub.resolve import local_or_hub

Batch = Mapping[str, Any]


@dataclass(frozen=True)
class Packed:
    """Slots gathered from a batch, ``(B, N)`` each: ``slot`` (index into the ``T`` slots; padding repeats slot 0),
    ``ids`` (the token ids, ``-1`` where unknown or padding), ``pad`` (``True`` for padding)."""

    slot: Tensor
    ids: Tensor
    pad: Tensor


@dataclass(frozen=True)
class FusionOutput:
    """A training forward: ``loss`` (mean over modalities with targets) and per modality its loss, token accuracy
    and number of target tokens."""

    loss: Tensor
    losses: dict[str, Tensor]
    accuracy: dict[str, float]
    targets: dict[str, int]


@dataclass(frozen=True)
class Embeddings:
    """Encoder outputs: ``pooled`` ``(B, dim)`` (mean over every token of the sample's available modalities),
    ``tokens[m]`` ``(B, L_m, dim)`` (zeros where the modality is missing) and ``available[m]`` ``(B,)``."""

    pooled: Tensor
    tokens: dict[str, Tensor]
    available: dict[str, Tensor]


class FusionModel(nn.Module, PyTorchModelHubMixin, library_name="eo-models",
                  tags=["earth-observation", "4m4eo", "multimodal", "masked-modeling"],
                  docs_url="https://github.com/4m4eo/4m4eo"):
    """The 4M-style fusion transformer.

    Args:
        config: A :class:`FusionConfig` or its dict (``to_dict()``; what ``config.json`` holds).
    """

    def __init__(self, config: dict[str, Any] | FusionConfig) -> None:
        super().__init__()
        self.cfg = FusionConfig.from_dict(config)
        arch, mods = self.cfg.model, self.cfg.modalities
        dim = arch.dim
        lengths = [m.tokens for m in mods]
        vocab = [m.vocab_size for m in mods]
        starts = torch.tensor([0, *lengths]).cumsum(0)
        self.slots = sum(lengths)
        self.register_buffer("starts", starts[:-1].clone(), persistent=False)
        self.register_buffer("offsets", torch.tensor([0, *vocab]).cumsum(0)[:-1].clone(), persistent=False)
        self.register_buffer("slot_modality", torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]),
                             persistent=False)
        self.register_buffer("slot_local", torch.cat([torch.arange(n) for n in lengths]), persistent=False)
        self.register_buffer("slot_sequence", torch.cat([torch.full((m.tokens,), m.kind == "sequence") for m in mods]),
                             persistent=False)
        self.register_buffer("positions", torch.cat([
            grid_positions(m.grid, dim) if m.kind == "image" else sequence_positions(m.length, dim) for m in mods]),
            persistent=False)
        self.embedding = nn.Embedding(sum(vocab), dim)
        self.modality_embedding = nn.Parameter(torch.zeros(len(mods), dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.encoder = nn.ModuleList(EncoderBlock(dim, arch.heads, arch.hidden) for _ in range(arch.encoder_depth))
        self.encoder_norm = norm(dim)
        self.decoder = nn.ModuleList(DecoderBlock(dim, arch.heads, arch.hidden) for _ in range(arch.decoder_depth))
        self.decoder_norm = norm(dim)
        self.output = None if arch.tied_outputs else nn.Parameter(torch.zeros(sum(vocab), dim))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.modality_embedding, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.output is not None:
            nn.init.normal_(self.output, std=0.02)

    # -- description -------------------------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the model reads and predicts, in its order."""
        return self.cfg.names

    def num_parameters(self) -> int:
        """Trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def __repr__(self) -> str:
        a = self.cfg.model
        return (f"FusionModel({a.dim} wide, {a.encoder_depth}+{a.decoder_depth} layers, "
                f"{self.num_parameters() / 1e6:.2f} M parameters; modalities {', '.join(self.modalities)})")

    # -- slots -------------------------------------------------------------------------------------------------
    def _index(self, name: str) -> int:
        return self.modalities.index(name) if name in self.modalities else -1

    def slots_of(self, batch: Batch, modalities: tuple[str, ...] | None = None) -> tuple[Tensor, Tensor]:
        """``(ids, usable)``, both ``(B, T)``: every modality's token ids side by side (``-1`` for a modality the
        batch lacks or one not in ``modalities``), and where a slot holds a token of an available modality.

        Raises:
            ConfigError: a modality's ids do not have the model's number of tokens.
        """
        b = self._batch_size(batch)
        device = self.starts.device
        ids, usable = [], []
        for m in self.cfg.modalities:
            x = batch.get(m.name) if modalities is None or m.name in modalities else None
            if x is None:
                ids.append(torch.full((b, m.tokens), -1, dtype=torch.long, device=device))
                usable.append(torch.zeros((b, m.tokens), dtype=torch.bool, device=device))
                continue
            x = torch.as_tensor(x).to(device=device, dtype=torch.long).reshape(b, -1)
            if x.shape[1] != m.tokens:
                raise ConfigError(f"modality {m.name}: {x.shape[1]} tokens per sample, but the model was built for "
                                  f"{m.tokens} ({'x'.join(map(str, m.grid)) if m.kind == 'image' else m.length}); "
                                  "tokenize with the tokenizers the model was trained with")
            available = batch.get(f"{m.name}_available")
            ok = x >= 0
            if available is not None:
                ok &= torch.as_tensor(available, device=device).reshape(b, 1).bool()
            ids.append(torch.where(ok, x, -1))
            usable.append(ok)
        return torch.cat(ids, dim=1), torch.cat(usable, dim=1)

    def _batch_size(self, batch: Batch) -> int:
        for m in self.modalities:
            if batch.get(m) is not None:
                return int(torch.as_tensor(batch[m]).shape[0])
        raise ConfigError(f"the batch holds none of the model's modalities {list(self.modalities)}; its keys: "
                          f"{sorted(batch)}")

    def masks_to_slots(self, masks: Mapping[str, Tensor], batch_size: int) -> Tensor:
        """Per-modality boolean masks ``(B, L_m)`` as one ``(B, T)`` slot mask (``False`` for modalities left out)."""
        device = self.starts.device
        parts = []
        for m in self.cfg.modalities:
            mask = masks.get(m.name)
            parts.append(torch.zeros((batch_size, m.tokens), dtype=torch.bool, device=device) if mask is None
                         else torch.as_tensor(mask, device=device).reshape(batch_size, m.tokens).bool())
        return torch.cat(parts, dim=1)

    @staticmethod
    def pack(ids: Tensor, select: Tensor) -> Packed:
        """The selected slots of each sample first (in slot order), padded to the largest count in the batch."""
        n = int(select.sum(dim=1).max()) if select.numel() else 0
        order = torch.sort((~select).to(torch.int8), dim=1, stable=True).indices[:, :max(n, 1)]
        pad = ~torch.gather(select, 1, order)
        slot = torch.where(pad, 0, order)
        return Packed(slot=slot, ids=torch.where(pad, -1, torch.gather(ids, 1, order)), pad=pad)

    # -- the network -------------------------------------------------------------------------------------------
    def _embed_tokens(self, slot: Tensor, ids: Tensor) -> Tensor:
        modality = self.slot_modality[slot]
        return self.embedding(ids.clamp(min=0) + self.offsets[modality])

    def _slot_embedding(self, slot: Tensor) -> Tensor:
        return self.positions[slot] + self.modality_embedding[self.slot_modality[slot]]

    def encode(self, inputs: Packed) -> Tensor:
        """Encoder output ``(B, N, dim)`` over packed input slots (padding rows are numbers, never to be read)."""
        x = self._embed_tokens(inputs.slot, inputs.ids) + self._slot_embedding(inputs.slot)
        mask = keep_one(~inputs.pad)[:, None, None, :]
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_norm(x)

    def context_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each decoder block's cross-attention keys and values of an encoder output, for :meth:`decode` calls that
        reuse one context (token-by-token decoding)."""
        return [block.context_kv(context) for block in self.decoder]

    def decode(self, context: Tensor, context_pad: Tensor, queries: Packed, ids: Tensor,
               kv: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Decoder output ``(B, M, dim)`` for packed target slots ``queries``, attending ``context`` (the encoder's
        output with its padding ``context_pad``; ``kv``: its :meth:`context_kv`, when already computed). ``ids``
        ``(B, T)`` are the known ids a sequence query reads its previous token from (``-1``: unknown, the mask
        token is used)."""
        slot = queries.slot
        sequence = self.slot_sequence[slot]
        previous = torch.where(sequence & (self.slot_local[slot] > 0), slot - 1, slot)
        prev_ids = torch.where(previous != slot, torch.gather(ids, 1, previous), -1)
        token = torch.where((prev_ids >= 0)[..., None], self._embed_tokens(previous, prev_ids), self.mask_token)
        x = token + self._slot_embedding(slot)
        modality = self.slot_modality[slot]
        local = self.slot_local[slot]
        same = modality[:, :, None] == modality[:, None, :]
        causal = ~sequence[:, :, None] | (local[:, None, :] <= local[:, :, None])
        eye = torch.eye(slot.shape[1], dtype=torch.bool, device=slot.device)[None]
        mask = ((same & causal & ~queries.pad[:, None, :]) | eye)[:, None]
        context_mask = keep_one(~context_pad)[:, None, None, :]
        for i, block in enumerate(self.decoder):
            x = block(x, mask, context, context_mask, kv[i] if kv is not None else None)
        return self.decoder_norm(x)

    def output_weight(self, modality: int) -> Tensor:
        """The output projection ``(vocab, dim)`` of modality number ``modality``."""
        start = int(self.offsets[modality])
        weight = self.embedding.weight if self.output is None else self.output
        return weight[start:start + self.cfg.modalities[modality].vocab_size]

    def logits(self, hidden: Tensor, modality: int) -> Tensor:
        """Logits over modality number ``modality``'s vocabulary for decoder outputs ``hidden`` ``(..., dim)``."""
        return hidden @ self.output_weight(modality).T

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: Batch, inputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> FusionOutput:
        """Masked token reconstruction: the loss of predicting the ``targets`` slots from the ``inputs`` slots
        (per-modality masks ``(B, L_m)``, e.g. :func:`eo_models.fusion.masking.sample_masks`; only slots of
        available modalities with a token count)."""
        ids, usable = self.slots_of(batch)
        b = ids.shape[0]
        enc = self.pack(ids, self.masks_to_slots(inputs, b) & usable)
        tgt_select = self.masks_to_slots(targets, b) & usable & ~self.masks_to_slots(inputs, b)
        tgt = self.pack(ids, tgt_select)
        context = self.encode(enc)
        hidden = self.decode(context, enc.pad, tgt, torch.where(usable, ids, -1))
        return self._loss(hidden, tgt)

    def _loss(self, hidden: Tensor, tgt: Packed) -> FusionOutput:
        modality = self.slot_modality[tgt.slot]
        losses: dict[str, Tensor] = {}
        accuracy: dict[str, float] = {}
        counts: dict[str, int] = {}
        for i, name in enumerate(self.modalities):
            sel = (modality == i) & ~tgt.pad
            n = int(sel.sum())
            if not n:
                continue
            logits = self.logits(hidden[sel], i).float()
            target = tgt.ids[sel]
            losses[name] = F.cross_entropy(logits, target)
            accuracy[name] = float((logits.argmax(-1) == target).float().mean())
            counts[name] = n
        loss = torch.stack(list(losses.values())).mean() if losses else hidden.sum() * 0.0
        return FusionOutput(loss=loss, losses=losses, accuracy=accuracy, targets=counts)

    # -- embeddings --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, batch: Batch, modalities: tuple[str, ...] | list[str] | None = None) -> Embeddings:
        """Encoder outputs over every token of ``modalities`` (default: all of the model's) that the batch has."""
        chosen = tuple(modalities) if modalities is not None else self.modalities
        for name in chosen:
            self.cfg.modality(name)
        with self._evaluating():
            ids, usable = self.slots_of(batch, chosen)
            packed = self.pack(ids, usable)
            out = self.encode(packed)
        b, dim = ids.shape[0], self.cfg.model.dim
        keep = (~packed.pad)[..., None].to(out.dtype)
        pooled = (out * keep).sum(1) / keep.sum(1).clamp(min=1)
        full = torch.zeros((b, self.slots + 1, dim), dtype=out.dtype, device=out.device)
        full.scatter_(1, torch.where(packed.pad, self.slots, packed.slot)[..., None].expand(-1, -1, dim), out)
        tokens, available = {}, {}
        for i, m in enumerate(self.cfg.modalities):
            if m.name in chosen:
                start = int(self.starts[i])
                tokens[m.name] = full[:, start:start + m.tokens]
                available[m.name] = usable[:, start:start + m.tokens].any(dim=1)
        return Embeddings(pooled=pooled, tokens=tokens, available=available)

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    # -- hub ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *args: Any,
                        **kwargs: Any) -> FusionModel:
        """The library's ``from_pretrained`` after :func:`eo_models.hub.resolve.local_or_hub` (a local path that is
        no folder fails at once)."""
        where = local_or_hub(pretrained_model_name_or_path, what="fusion model", writer="train-fusion")
        return super().from_pretrained(where, *args, **kwargs)

    def generate_model_card(self, *args: Any, metrics: dict[str, Any] | None = None, **kwargs: Any) -> ModelCard:
        """A model card stating the modalities, tokenizers, architecture, training cube and metrics."""
        return build_card(card_content(self.cfg, self.num_parameters(), metrics))

    def check_tokens(self, specs: Mapping[str, Any]) -> None:
        """Refuse tokens made by other tokenizers than the model's (``specs``: modality -> anything with ``digest``
        and ``source``, e.g. :class:`eo_models.tokens.dataset.TokenSpec`).

        Raises:
            ConfigError: a modality of the model whose tokens come from another tokenizer (other weights digest), or
                with another vocabulary or grid.
        """
        for m in self.cfg.modalities:
            spec = specs.get(m.name)
            if spec is None:
                continue
            digest = getattr(spec, "digest", "")
            if m.digest and digest and digest != m.digest:
                source = getattr(spec, "source", "?")
                raise ConfigError(f"modality {m.name}: these tokens were made by tokenizer {source}"
                                  f" (weights {digest[:12]}), but the fusion model was trained on tokens of "
                                  f"{m.tokenizer or '?'} (weights {m.digest[:12]}); tokenize with that tokenizer")
            if int(spec.vocab_size) != m.vocab_size:
                raise ConfigError(f"modality {m.name}: {spec.vocab_size} token ids, the model has {m.vocab_size}")


CARD_TITLE = "# 4M4EO fusion model"


def card_content(cfg: FusionConfig, parameters: int, metrics: dict[str, Any] | None = None) -> CardContent:
    """What a fusion model's card says: modalities and their tokenizers, architecture, training cube, metrics."""
    a = cfg.model
    modalities = ["| modality | kind | tokens | vocabulary | tokenizer |", "|---|---|---|---:|---|"]
    for m in cfg.modalities:
        shape = f"{m.grid[0]} x {m.grid[1]}" if m.kind == "image" else f"{m.length}"
        modalities.append(f"| {m.name} | {m.kind} | {shape} | {m.vocab_size} | {m.tokenizer or 'n/a'} "
                          f"({m.digest[:12] or 'no digest'}) |")
    t, k = cfg.train, cfg.masking
    training = [f"- cube recipe hash: {cfg.recipe_hash or 'n/a'}",
                f"- {t.steps} steps, batch {t.batch_size} x {t.accumulate}, lr {t.lr:g} (cosine, warm-up {t.warmup})",
                f"- budgets: {k.input_tokens} input and {k.target_tokens} target tokens per sample"]
    return CardContent(
        title=CARD_TITLE,
        summary=(f"A 4M-style fusion transformer ({cfg.name or 'custom'} config): {a.dim} wide, {a.encoder_depth} "
                 f"encoder and {a.decoder_depth} decoder blocks, {parameters:,} parameters, trained by masked "
                 "multimodal token reconstruction."),
        tags=("earth-observation", "4m4eo", "multimodal", "masked-modeling", *cfg.names),
        sections=(("Modalities", tuple(modalities)), ("Training", tuple(training))), metrics=metrics,
        recipe_hash=cfg.recipe_hash or None,
        usage=("from eo_models.fusion import FusionModel",
               "model = FusionModel.from_pretrained(\"<this repo or folder>\")"))


def model_card(cfg: FusionConfig, parameters: int, metrics: dict[str, Any] | None = None) -> str:
    """The markdown of a fusion model's card (:func:`card_content` rendered by :mod:`eo_models.hub.card`)."""
    return render_card(card_content(cfg, parameters, metrics))


def load_fusion(model: FusionModel | str | os.PathLike[str]) -> FusionModel:
    """A :class:`FusionModel` as is, or loaded with ``FusionModel.from_pretrained`` (a folder or a Hub repo id).

    Raises:
        CheckpointError: it cannot be loaded.
    """
    if isinstance(model, FusionModel):
        return model
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return FusionModel.from_pretrained(model)
    except CheckpointError:
        raise
    except Exception as exc:  # huggingface_hub and safetensors raise many types
        raise CheckpointError(f"cannot load fusion model {os.fspath(model)!r} ({type(exc).__name__}: {exc}); pass a "
                              "folder written by train-fusion or a Hub repo id") from exc
