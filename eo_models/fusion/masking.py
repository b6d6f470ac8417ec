"""Token budgets for masked multimodal training (4M): which tokens of a sample the encoder sees, which it predicts.

Per sample, ``input_tokens`` input tokens and ``target_tokens`` target tokens are split across the sample's
*available* modalities by a Dirichlet draw: one concentration ``alpha`` is picked from a mixture
(``alphas`` with ``alpha_weights``), each modality's concentration is ``alpha`` times its ``input_scale`` (or
``target_scale``), and the proportions are turned into whole token counts that sum exactly to the budget (or to all
the candidates, when the sample has fewer). A small ``alpha`` (0.01) gives nearly all tokens to one modality, a large
one (10, 1000) splits them evenly; the mixture trains for both "predict one modality from another" and "fill in
everything from a bit of everything".

Candidates are tokens that exist: the modality is available and the id is not ``-1``. Targets are drawn after the
inputs, from the tokens not taken as inputs (the two never overlap) and, with ``exclude_invalid_targets``, only
from tokens whose valid-pixel fraction is at least ``min_valid`` (no loss on clouds and nodata). Image modalities
get random positions; a sequence modality (the caption) gets a prefix of its tokens as input and the tokens right
after it as targets, so that a caption can be continued token by token.

    >>> import torch
    >>> from eo_models.fusion.masking import MaskingConfig, sample_masks
    >>> batch = {"a": torch.arange(8).reshape(2, 4), "a_available": torch.tensor([True, False]),
    ...          "a_valid": torch.ones(2, 4)}
    >>> masks = sample_masks(batch, MaskingConfig(input_tokens=1, target_tokens=2),
    ...                      generator=torch.Generator().manual_seed(0))
    >>> masks.input["a"].sum(1).tolist(), masks.target["a"].sum(1).tolist()
    ([1, 0], [2, 0])

The draws are made with NumPy (Dirichlet concentrations as small as 0.01 need log-space gamma draws, and a shuffle per
row is much faster than sorting random keys); they are seeded from the torch ``generator``, so a seeded generator
gives the same masks on any device.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from eo_models.config import Bool, Float, Positive, Section, section
from eo_models.errors import ConfigError, EOModelsError

__all__ = ["MaskingConfig", "Masks", "TokenBatchError", "sample_masks"]

Concentration = Annotated[Float, Field(gt=0, allow_inf_nan=False)]
Weight = Annotated[Float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[Float, Field(ge=0, le=1)]


class TokenBatchError(EOModelsError, ValueError):
    """A token batch that does not follow the contract (shapes, missing ``<m>_available``/``<m>_valid``)."""


@section("masking")
class MaskingConfig(Section):
    """How many tokens a sample gives the encoder (``input_tokens``) and asks the decoder for (``target_tokens``),
    and how they are split across modalities.

    ``alphas``: the Dirichlet concentrations of the mixture, one picked per sample with probabilities proportional
    to ``alpha_weights`` (``None``: equal weights). ``input_scale``/``target_scale``: a multiplier of a modality's
    concentration (modalities not named: 1); 0 means the modality never gets input (target) tokens.
    ``exclude_invalid_targets``: a token is a target only if the fraction of valid pixels under it is at least
    ``min_valid``.
    """

    input_tokens: Positive = 128
    target_tokens: Positive = 128
    alphas: tuple[Concentration, ...] = (0.01, 0.1, 1.0, 10.0)
    alpha_weights: tuple[Weight, ...] | None = None
    input_scale: dict[str, Weight] = field(default_factory=dict)
    target_scale: dict[str, Weight] = field(default_factory=dict)
    exclude_invalid_targets: Bool = True
    min_valid: Fraction = 0.5

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ConfigError("masking.alphas is empty; give at least one Dirichlet concentration, e.g. [1.0]")
        if self.alpha_weights is not None:
            if len(self.alpha_weights) != len(self.alphas):
                raise ConfigError(f"masking.alpha_weights has {len(self.alpha_weights)} weights for "
                                  f"{len(self.alphas)} alphas {list(self.alphas)}; give one weight per alpha")
            if not sum(self.alpha_weights) > 0:
                raise ConfigError(f"masking.alpha_weights {list(self.alpha_weights)} sum to 0; give at least one "
                                  "positive weight (or leave it out for equal weights)")
        for key in ("input_scale", "target_scale"):
            if "" in getattr(self, key):
                raise ConfigError(f"masking.{key} has an empty modality name; keys are the cube's modality names")

    def __hash__(self) -> int:  # the scales are dicts; a config is still a value
        return hash(tuple((f.name, _hashable(getattr(self, f.name))) for f in fields(self)))

    @property
    def weights(self) -> np.ndarray:
        """The mixture's probabilities, one per alpha (summing to 1)."""
        w = np.ones(len(self.alphas)) if self.alpha_weights is None else np.asarray(self.alpha_weights, float)
        return w / w.sum()


def _hashable(value: Any) -> Any:
    return tuple(sorted(value.items())) if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class Masks:
    """Which tokens of a token batch are encoder inputs and which are decoder targets.

    ``input[m]`` and ``target[m]`` are bool tensors shaped like the batch's ``m`` (``(B, L_m)``), one entry per
    modality of the batch (all ``False`` where the modality got no tokens); ``input[m] & target[m]`` is never true.
    """

    input: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor]


def sample_masks(batch: Mapping[str, Any], config: MaskingConfig, *, sequences: Collection[str] = frozenset(),
                 generator: torch.Generator | None = None) -> Masks:
    """Draw input and target masks for a token batch.

    Args:
        batch: a token batch (``<m>``: int ids ``(B, L_m)`` with -1 where there is no token, ``<m>_available``:
            bool ``(B,)``, ``<m>_valid``: valid-pixel fraction ``(B, L_m)``; other keys such as ``index`` are
            ignored). The modalities are the keys ``m`` that have an ``<m>_available``.
        config: the budgets and the Dirichlet mixture.
        sequences: names of sequence modalities (the caption): input a prefix, targets the tokens right after it.
        generator: seeds the draws; the same seed gives the same masks. ``None``: torch's global generator.

    Returns:
        The masks, on the device of the batch's tensors.

    Raises:
        TokenBatchError: the batch does not follow the token batch contract.
        ConfigError: ``input_scale``/``target_scale``/``sequences`` name modalities the batch does not have.
    """
    names = [k for k in batch if f"{k}_available" in batch]
    ids, available, valid = _read_batch(batch, names, need_valid=config.exclude_invalid_targets)
    _check_names(config, sequences, names)
    if not names:
        return Masks({}, {})
    device = ids[names[0]].device
    rng = np.random.default_rng(_seed(generator))
    size = next(iter(available.values())).shape[0]
    alpha = np.asarray(config.alphas, float)[rng.choice(len(config.alphas), size=size, p=config.weights)]
    in_scale = np.array([config.input_scale.get(m, 1.0) for m in names])
    tgt_scale = np.array([config.target_scale.get(m, 1.0) for m in names])

    # inputs: every existing token is a candidate; a sequence's input is its first k real tokens
    exists = {m: (ids[m] != -1) & available[m][:, None] for m in names}
    cap = np.stack([_count(exists[m]) for m in names], axis=1)
    n_in = _split(_log_dirichlet(rng, alpha, in_scale, cap > 0), cap, config.input_tokens)
    orders = {m: _shuffled_positions(rng, *exists[m].shape, device) for m in names if m not in sequences}
    inputs: dict[str, torch.Tensor] = {}
    for j, m in enumerate(names):
        k = torch.as_tensor(n_in[:, j], device=device)[:, None]
        inputs[m] = _prefix(exists[m], k) if m in sequences else _first_in_order(exists[m], orders[m], k)

    # targets: existing tokens that are no input (and valid enough); a sequence's are the ones after its input prefix
    wanted = {m: exists[m] & (valid[m] >= config.min_valid) if config.exclude_invalid_targets else exists[m]
              for m in names}
    candidates = {m: _after_prefix(exists[m], wanted[m], inputs[m]) if m in sequences else wanted[m] & ~inputs[m]
                  for m in names}
    cap = np.stack([_count(candidates[m]) for m in names], axis=1)
    n_tgt = _split(_log_dirichlet(rng, alpha, tgt_scale, cap > 0), cap, config.target_tokens)
    targets: dict[str, torch.Tensor] = {}
    for j, m in enumerate(names):
        k = torch.as_tensor(n_tgt[:, j], device=device)[:, None]
        targets[m] = _prefix(candidates[m], k) if m in sequences else _first_in_order(candidates[m], orders[m], k)
    return Masks(inputs, targets)


def _read_batch(batch: Mapping[str, Any], names: list[str], *, need_valid: bool
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The ids, availability and validity of each modality, checked against the token batch contract."""
    ids, available, valid = {}, {}, {}
    size = None
    for m in names:
        tokens, avail = batch.get(m), batch[f"{m}_available"]
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            raise TokenBatchError(f"token batch: {m!r} should be a (batch, tokens) tensor of ids, found "
                                  f"{_describe(tokens)}; build batches with the fusion token dataset")
        if not isinstance(avail, torch.Tensor) or avail.shape != tokens.shape[:1]:
            raise TokenBatchError(f"token batch: '{m}_available' should be a bool tensor of shape "
                                  f"({tokens.shape[0]},), found {_describe(avail)}")
        size = tokens.shape[0] if size is None else size
        if tokens.shape[0] != size:
            raise TokenBatchError(f"token batch: {m!r} has {tokens.shape[0]} samples, other modalities {size}; "
                                  "every modality of a batch has the same samples")
        ids[m], available[m] = tokens, avail.to(torch.bool)
        if need_valid:
            v = batch.get(f"{m}_valid")
            if not isinstance(v, torch.Tensor) or v.shape != tokens.shape:
                raise TokenBatchError(f"token batch: '{m}_valid' should be a tensor of shape {tuple(tokens.shape)}, "
                                      f"found {_describe(v)}; or set masking.exclude_invalid_targets: false")
            valid[m] = v
    return ids, available, valid


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return "nothing" if value is None else type(value).__name__


def _check_names(config: MaskingConfig, sequences: Collection[str], names: list[str]) -> None:
    for key, given in (("input_scale", config.input_scale), ("target_scale", config.target_scale),
                       ("sequences", sequences)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            where = "sample_masks(sequences=...)" if key == "sequences" else f"masking.{key}"
            raise ConfigError(f"{where} names modalities {unknown} that the token batch does not have; "
                              f"its modalities: {names}")


def _seed(generator: torch.Generator | None) -> int:
    """A NumPy seed drawn from the torch generator (torch's global one when None)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def _count(mask: torch.Tensor) -> np.ndarray:
    return mask.sum(1).cpu().numpy().astype(np.int64)


def _log_dirichlet(rng: np.random.Generator, alpha: np.ndarray, scale: np.ndarray, eligible: np.ndarray
                   ) -> np.ndarray:
    """Log Dirichlet weights ``(B, M)`` over the eligible modalities of each sample (-inf elsewhere; unnormalised).

    Concentration ``alpha[b] * scale[m]``. Gamma draws of a small concentration underflow to 0 in float64, so they are
    drawn in log space: ``G(a) = G(a + 1) * U ** (1 / a)``.
    """
    eligible = eligible & (scale > 0)[None, :]
    a = np.where(eligible, alpha[:, None] * scale[None, :], 1.0)
    log_g = np.log(rng.standard_gamma(a + 1.0)) + np.log1p(-rng.random(a.shape)) / a
    return np.where(eligible, log_g, -np.inf)


def _split(log_w: np.ndarray, cap: np.ndarray, total: int) -> np.ndarray:
    """Whole token counts ``(B, M)`` proportional to ``exp(log_w)``, at most ``cap``, summing to ``min(total, cap
    over the modalities with a finite weight)``.

    Water-filling: each round shares what is left among the modalities with room; a modality whose share exceeds its
    room takes all of it and leaves the game, and in a round where none does, the shares are rounded by largest
    remainder. Each round either ends a sample or fills a modality, so ``M + 1`` rounds suffice.
    """
    open_ = np.isfinite(log_w) & (cap > 0)
    counts = np.zeros_like(cap)
    left = np.minimum(total, np.where(open_, cap, 0).sum(1))
    for _ in range(cap.shape[1] + 1):
        w = np.where(open_, log_w, -np.inf)
        top = w.max(1, keepdims=True)
        q = np.exp(w - np.where(np.isfinite(top), top, 0.0))
        q /= np.maximum(q.sum(1, keepdims=True), 1e-300)
        share = q * left[:, None]
        room = cap - counts
        full = open_ & (share >= room)
        add = np.where(full, room, np.floor(share).astype(np.int64))
        add = np.where(open_, add, 0)
        rest = left - add.sum(1)
        frac = np.where(open_ & ~full, share - np.floor(share), -1.0)
        rank = np.argsort(np.argsort(-frac, axis=1, kind="stable"), axis=1)
        add += ~full.any(1, keepdims=True) & (rank < rest[:, None]) & open_ & ~full
        counts += add
        left -= add.sum(1)
        open_ &= counts < cap
    return counts


def _shuffled_positions(rng: np.random.Generator, size: int, length: int, device: torch.device) -> torch.Tensor:
    """An independent random order of the ``length`` token positions for each of ``size`` samples."""
    order = np.broadcast_to(np.arange(length, dtype=np.int64), (size, length)).copy()
    rng.permuted(order, axis=1, out=order)
    return torch.from_numpy(order).to(device)


def _first_in_order(candidates: torch.Tensor, order: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The first ``k[b]`` candidates of each sample in the order ``order`` (a random order: a random subset)."""
    in_order = candidates.gather(1, order)
    chosen = in_order & (in_order.cumsum(1) <= k)
    return torch.zeros_like(candidates).scatter_(1, order, chosen)


def _prefix(candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The first ``k[b]`` candidates of each sample in sequence order."""
    return candidates & (candidates.cumsum(1) <= k)


def _after_prefix(exists: torch.Tensor, wanted: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """The tokens of a sequence that may be targets: the run of existing, wanted tokens right after the input prefix
    (ending at the first existing token that is not wanted)."""
    after = exists & ~prefix
    stop = after & ~wanted
    return after & (stop.cumsum(1) == 0)

