"""Any-to-any generation with a fusion model: MaskGIT and ROAR decoding of image modalities, autoregressive decoding
of the caption, chained over target modalities.

For an image target the decoder predicts every still-masked token; a schedule (:class:`Schedule`) says how many
are fixed at each of ``steps`` steps (cosine or linear in the fraction still masked, as MaskGIT) and which ones:
the most confident (``maskgit``) or random ones (``roar``). Fixed tokens join the encoder's input for the next
step. ``steps=1`` predicts all tokens at once (dense "translation"). Sampling: temperature (constant, or decaying
linearly or by a cosine towards 0 over the steps), top-k, top-p; a temperature of 0 takes the most likely token.

A sequence target (the caption) is decoded token by token (causal decoder), each token fed back as the next
query's previous token, until ``stop`` ids or the modality's length.

Targets are generated in the order given; each finished modality joins the conditioning of the next (chained).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from eo_models.errors import ConfigError
from eo_models.fusion.model import Batch, FusionModel


@dataclass(frozen=True)
class Schedule:
    """How an image modality is decoded.

    Args:
        steps: Decoding steps (1: every token at once).
        order: ``maskgit`` (the most confident tokens first) or ``roar`` (random order).
        tokens: ``cosine`` or ``linear``: the fraction of tokens still masked after step ``s`` of ``S`` is
            ``cos(pi/2 * s/S)`` or ``1 - s/S``.
        temperature: Sampling temperature at the first step (0: the most likely token).
        temperature_schedule: ``constant``, or a ``linear`` or ``cosine`` decay towards 0 over the steps (step
            ``s`` of ``S`` samples at ``temperature * (1 - s/S)``, resp. ``temperature * (1 + cos(pi s/S)) / 2``).
        top_k: Sample among the ``k`` most likely tokens (0: all).
        top_p: Sample among the most likely tokens whose probabilities add up to ``p`` (0 or 1: all).
    """

    steps: int = 8
    order: Literal["maskgit", "roar"] = "maskgit"
    tokens: Literal["cosine", "linear"] = "cosine"
    temperature: float = 1.0
    temperature_schedule: Literal["constant", "linear", "cosine"] = "constant"
    top_k: int = 0
    top_p: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an int >= 1, found {self.steps!r}")
        for name, allowed in (("order", ("maskgit", "roar")), ("tokens", ("cosine", "linear")),
                              ("temperature_schedule", ("constant", "linear", "cosine"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, found {getattr(self, name)!r}")
        if self.temperature < 0 or self.top_k < 0 or not 0 <= self.top_p <= 1:
            raise ConfigError(f"temperature and top_k must be >= 0 and top_p in [0, 1], found {self.temperature}, "
                              f"{self.top_k}, {self.top_p}")

    def masked_after(self, step: int, total: int) -> int:
        """Tokens still masked after step ``step`` (1-based) of ``self.steps``, of ``total``."""
        r = step / self.steps
        frac = math.cos(math.pi / 2 * r) if self.tokens == "cosine" else 1 - r
        return 0 if step >= self.steps else min(total - 1, max(0, math.floor(total * frac)))

    def temperature_at(self, step: int) -> float:
        """The temperature of step ``step`` (0-based)."""
        r = step / self.steps
        if self.temperature_schedule == "linear":
            return self.temperature * (1 - r)
        if self.temperature_schedule == "cosine":
            return self.temperature * 0.5 * (1 + math.cos(math.pi * r))
        return self.temperature


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """``logits`` with everything outside the top-k / top-p set at ``-inf``."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the first token that crosses p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def sample(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 0.0,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Token ids and their probabilities (under the unfiltered softmax at temperature 1) from ``logits``
    ``(..., V)``."""
    probs = logits.float().softmax(-1)
    if temperature <= 0:
        ids = logits.argmax(-1)
    else:
        filtered = filter_logits(logits.float() / temperature, top_k, top_p)
        flat = filtered.softmax(-1).reshape(-1, logits.shape[-1])
        if generator is not None and generator.device != flat.device:
            flat = flat.to(generator.device)
        ids = torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1]).to(logits.device)
    return ids, torch.gather(probs, -1, ids[..., None])[..., 0]


@torch.no_grad()
def generate(model: FusionModel, batch: Batch, targets: Sequence[str], *, conditioning: Sequence[str] | None = None,
             schedule: Schedule | Mapping[str, Schedule] | None = None, stop: Mapping[str, Sequence[int]] | None = None,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Generate the token ids of ``targets`` from the batch's tokens of ``conditioning``.

    Args:
        model: The fusion model.
        batch: A token batch (``<m>`` ids ``(B, L_m)`` or ``(B, ty, tx)``, ``<m>_available``).
        targets: Modalities to generate, in order (each joins the conditioning of the next).
        conditioning: Modalities of the batch to condition on (default: every model modality the batch has that is
            not a target).
        schedule: One :class:`Schedule` for every image target, or one per target (default: ``Schedule()``).
        stop: Per sequence target, ids that end it (the caption tokenizer's ``[SEP]``); positions after are -1.
        generator: Random generator for sampling (CPU) and ROAR's order.

    Returns:
        ``{target: ids (B, L_target)}`` (int64).

    Raises:
        ConfigError: an unknown modality, a target also given as conditioning, or a batch without conditioning.
    """
    targets = list(targets)
    for name in targets:
        model.cfg.modality(name)
    if len(set(targets)) != len(targets):
        raise ConfigError(f"targets named twice: {targets}")
    if conditioning is None:
        conditioning = [m for m in model.modalities if m not in targets and batch.get(m) is not None]
    for name in conditioning:
        model.cfg.modality(name)
    both = sorted(set(conditioning) & set(targets))
    if both:
        raise ConfigError(f"{both} both conditioning and target; a target is generated from the others")
    was = model.training
    model.eval()
    try:
        ids, known = model.slots_of(batch, tuple(conditioning))
        if not bool(known.any(dim=1).all()):
            raise ConfigError("some samples have no token of the conditioning modalities "
                              f"{list(conditioning)}; generate only for samples that have at least one")
        out = {}
        for name in targets:
            i = model.modalities.index(name)
            spec = model.cfg.modalities[i]
            plan = schedule.get(name, Schedule()) if isinstance(schedule, Mapping) else (schedule or Schedule())
            if spec.kind == "sequence":
                ids, known = _sequence(model, ids, known, i, plan, (stop or {}).get(name, ()), generator)
            else:
                ids, known = _image(model, ids, known, i, plan, generator)
            start = int(model.starts[i])
            out[name] = ids[:, start:start + spec.tokens].clone()
        return out
    finally:
        model.train(was)


def _slot_mask(model: FusionModel, b: int, i: int) -> Tensor:
    mask = (model.slot_modality == i)[None].expand(b, -1)
    return mask


def _image(model: FusionModel, ids: Tensor, known: Tensor, i: int, plan: Schedule,
           generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    b = ids.shape[0]
    target = _slot_mask(model, b, i)
    ids, known = ids.clone(), known & ~target
    total = int(target[0].sum())
    for step in range(plan.steps):
        masked = target & ~known
        remaining = int(masked[0].sum())
        fix = remaining - plan.masked_after(step + 1, total)
        if fix <= 0:
            continue
        enc = model.pack(ids, known)
        context = model.encode(enc)
        queries = model.pack(ids, masked)
        hidden = model.decode(context, enc.pad, queries, torch.where(known, ids, -1))
        sampled, prob = sample(model.logits(hidden, i), plan.temperature_at(step), plan.top_k, plan.top_p, generator)
        if plan.order == "maskgit":
            score = prob
        else:
            score = torch.rand(prob.shape, generator=generator).to(prob.device)
        score = score.masked_fill(queries.pad, -1.0)
        chosen = torch.topk(score, fix, dim=1).indices
        slots = torch.gather(queries.slot, 1, chosen)
        ids.scatter_(1, slots, torch.gather(sampled, 1, chosen))
        known.scatter_(1, slots, True)
    return ids, known


def _sequence(model: FusionModel, ids: Tensor, known: Tensor, i: int, plan: Schedule, stop: Sequence[int],
              generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    b = ids.shape[0]
    target = _slot_mask(model, b, i)
    ids, known = ids.clone(), known & ~target
    ids[target] = -1
    enc = model.pack(ids, known)
    context = model.encode(enc)
    kv = model.context_kv(context)  # the context stays: its keys and values once for every token
    start = int(model.starts[i])
    length = model.cfg.modalities[i].length
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)
    stop_ids = torch.tensor(list(stop), dtype=torch.long, device=ids.device)
    for t in range(length):
        select = torch.zeros_like(target)
        select[:, start:start + t + 1] = True
        queries = model.pack(ids, select)
        hidden = model.decode(context, enc.pad, queries, ids, kv)
        token, _ = sample(model.logits(hidden[:, t], i), plan.temperature, plan.top_k, plan.top_p, generator)
        token = torch.where(done, -1, token)
        ids[:, start + t] = token
        known[:, start + t] = ~done
        done |= torch.isin(token, stop_ids)
        if bool(done.all()):
            break
    return ids, known


def describe(schedule: Schedule) -> dict[str, Any]:
    """The schedule as a JSON-able dict (for provenance attrs)."""
    return {k: getattr(schedule, k) for k in schedule.__dataclass_fields__}
