"""The token budget sampler: per sample, Dirichlet-split input and target budgets over the available modalities;
exact sums, disjoint positions, no missing or invalid token chosen, caption prefix + continuation, seeded draws,
proportions that follow the concentration, and configs that refuse bad values."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from torch.utils.data import default_collate

from eo_models.errors import ConfigError
from eo_models.fusion.masking import MaskingConfig, Masks, TokenBatchError, sample_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRIDS = {"a": 36, "b": 16, "c": 4}  # flattened token grids (6x6, 4x4, 2x2), as image modalities of different res.
CAPTION = 10


def token_batch(size: int, *, seed: int = 0, grids: dict[str, int] | None = None, caption: bool = True,
                p_available: float = 0.7, p_missing: float = 0.1, p_invalid: float = 0.3) -> dict[str, torch.Tensor]:
    """A token batch as a DataLoader yields it (per-sample dicts through torch's default collate): some modalities
    unavailable (-1 ids), some tokens missing (-1), some under invalid pixels (valid < 0.5), captions of varied length.
    """
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(size):
        sample: dict[str, torch.Tensor] = {"index": torch.tensor(i)}
        for m, length in (grids or GRIDS).items():
            available = bool(torch.rand((), generator=g) < p_available)
            ids = torch.randint(0, 1000, (length,), generator=g)
            ids[torch.rand(length, generator=g) < p_missing] = -1
            valid = torch.where(torch.rand(length, generator=g) < p_invalid, 0.2, 1.0)
            if not available:
                ids[:] = -1
            sample |= {m: ids, f"{m}_available": torch.tensor(available),
                       f"{m}_valid": torch.where(ids == -1, 0.0, valid).float()}
        if caption:
            n = int(torch.randint(0, CAPTION + 1, (), generator=g))
            ids = torch.full((CAPTION,), -1)
            ids[:n] = torch.randint(5, 500, (n,), generator=g)
            sample |= {"caption": ids, "caption_available": torch.tensor(n > 0),
                       "caption_valid": (ids != -1).float()}
        samples.append(sample)
    return default_collate(samples)


def masks(batch, config=None, seed=0, sequences=frozenset({"caption"}), **values) -> Masks:
    config = config or MaskingConfig(**{"input_tokens": 12, "target_tokens": 15, **values})
    sequences = sequences & set(batch)
    return sample_masks(batch, config, sequences=sequences, generator=torch.Generator().manual_seed(seed))


def names(batch) -> list[str]:
    return [k for k in batch if f"{k}_available" in batch]


def total(mask: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v.sum(1) for v in mask.values())


@pytest.mark.parametrize("seed", range(6))
def test_budgets_sum_to_n_or_to_the_candidates(seed):
    batch = token_batch(48, seed=seed)
    out = masks(batch, seed=seed, input_tokens=12, target_tokens=15)
    exists = {m: (batch[m] != -1) & batch[f"{m}_available"][:, None] for m in names(batch)}
    n_exist = total(exists)
    assert torch.equal(total(out.input), torch.clamp(n_exist, max=12))
    # targets: valid existing tokens not taken as inputs (images) / the caption's tokens after its input prefix
    targetable = {m: exists[m] & (batch[f"{m}_valid"] >= 0.5) & ~out.input[m] for m in names(batch)}
    assert torch.equal(total(out.target), torch.clamp(total(targetable), max=15))
    assert (n_exist < 12).any() and (n_exist > 12 + 15).any()  # both regimes occur in this batch
    for m in names(batch):
        assert out.input[m].dtype == out.target[m].dtype == torch.bool
        assert out.input[m].shape == out.target[m].shape == batch[m].shape


def test_too_few_candidates_take_them_all():
    batch = token_batch(8, grids={"a": 4, "b": 9}, caption=False, p_available=1.0, p_missing=0.0, p_invalid=0.0)
    out = masks(batch, input_tokens=10, target_tokens=10)
    assert (total(out.input) == 10).all() and (total(out.target) == 3).all()
    out = masks(batch, input_tokens=20, target_tokens=10)
    assert (total(out.input) == 13).all() and (total(out.target) == 0).all()


def test_a_full_modality_passes_its_share_on():
    """With an even split wanted (alpha 1000) and one modality of 4 tokens, the other two take the rest."""
    batch = token_batch(64, grids={"a": 36, "b": 36, "c": 4}, caption=False, p_available=1.0, p_missing=0.0)
    out = masks(batch, alphas=(1000.0,), input_tokens=30, target_tokens=1)
    assert (out.input["c"].sum(1) == 4).all()
    assert ((out.input["a"].sum(1) - 13).abs() <= 2).all() and ((out.input["b"].sum(1) - 13).abs() <= 2).all()


def test_scale_zero_modality_gets_no_tokens():
    batch = token_batch(64, caption=False, p_available=1.0, p_missing=0.0, p_invalid=0.0)
    out = masks(batch, input_scale={"a": 0.0}, target_scale={"b": 0.0, "c": 0.0})
    assert not out.input["a"].any() and not out.target["b"].any() and not out.target["c"].any()
    assert out.target["a"].any() and out.input["b"].any() and out.input["c"].any()
    assert (total(out.target) == 15).all()  # "a" alone takes every target


def test_unavailable_and_missing_tokens_are_never_chosen():
    batch = token_batch(64, seed=3)
    for m in names(batch):  # ids that look real under an unavailable flag must still be ignored
        batch[m][~batch[f"{m}_available"]] = 7
    out = masks(batch, input_tokens=20, target_tokens=20)
    for m in names(batch):
        gone = ~batch[f"{m}_available"][:, None] | (batch[m] == -1)
        assert not (out.input[m] & gone).any() and not (out.target[m] & gone).any()
        assert not (out.input[m] & out.target[m]).any()
    assert (~batch["a_available"]).any() and (batch["a"] == -1).any()


def test_invalid_tokens_are_targets_only_when_allowed():
    batch = token_batch(64, caption=False, p_available=1.0, p_invalid=0.5)
    invalid = {m: batch[f"{m}_valid"] < 0.5 for m in names(batch)}
    out = masks(batch, input_tokens=20, target_tokens=20)
    assert not any((out.target[m] & invalid[m] & (batch[m] != -1)).any() for m in names(batch))
    assert any((out.input[m] & invalid[m]).any() for m in names(batch))  # inputs may be (partly) invalid
    out = masks(batch, input_tokens=20, target_tokens=20, exclude_invalid_targets=False)
    assert any((out.target[m] & invalid[m]).any() for m in names(batch))
    out = masks(batch, input_tokens=20, target_tokens=20, min_valid=0.1)  # 0.2 valid is enough now
    assert any((out.target[m] & invalid[m]).any() for m in names(batch))


def test_caption_input_is_a_prefix_and_targets_continue_it():
    batch = token_batch(200, seed=1)
    out = masks(batch, input_tokens=12, target_tokens=15)
    length = (batch["caption"] != -1).sum(1)
    pos = torch.arange(CAPTION)
    k_in, k_tgt = out.input["caption"].sum(1), out.target["caption"].sum(1)
    assert torch.equal(out.input["caption"], pos < k_in[:, None])
    assert torch.equal(out.target["caption"], (pos >= k_in[:, None]) & (pos < (k_in + k_tgt)[:, None]))
    assert (k_in + k_tgt <= length).all()
    assert ((k_in == 0) & (k_tgt > 0)).any() and ((k_in > 0) & (k_tgt > 0)).any()  # from scratch and continued


def test_caption_targets_stop_at_a_token_that_is_not_valid():
    batch = {"caption": torch.arange(1, 9).repeat(32, 1), "caption_available": torch.ones(32, dtype=torch.bool),
             "caption_valid": torch.ones(32, 8)}
    batch["caption_valid"][:, 5] = 0.0
    out = masks(batch, alphas=(1.0,), input_tokens=3, target_tokens=8)
    assert (out.input["caption"].sum(1) == 3).all()
    assert torch.equal(out.target["caption"], torch.tensor([False] * 3 + [True] * 2 + [False] * 3).repeat(32, 1))


def test_a_seed_reproduces_the_masks_and_another_differs():
    batch = token_batch(32)
    one, again, other = masks(batch, seed=5), masks(batch, seed=5), masks(batch, seed=6)
    for m in names(batch):
        assert torch.equal(one.input[m], again.input[m]) and torch.equal(one.target[m], again.target[m])
    assert any(not torch.equal(one.input[m], other.input[m]) for m in names(batch))
    torch.manual_seed(11)  # without a generator: torch's global one
    first = sample_masks(batch, MaskingConfig(), sequences={"caption"})
    torch.manual_seed(11)
    assert torch.equal(first.target["a"], sample_masks(batch, MaskingConfig(), sequences={"caption"}).target["a"])


def split(alpha_weights, alphas=(0.01, 1000.0), size=2000):
    """Input and target token counts per sample and modality ``(size, 4)`` for four modalities with room for
    every input and target token (so that no cap bends the split)."""
    grids = {m: 100 for m in "abcd"}
    batch = token_batch(size, grids=grids, caption=False, p_available=1.0, p_missing=0.0, p_invalid=0.0)
    out = masks(batch, alphas=alphas, alpha_weights=alpha_weights, input_tokens=40, target_tokens=40)
    return (torch.stack([out.input[m].sum(1) for m in grids], 1),
            torch.stack([out.target[m].sum(1) for m in grids], 1))


def test_a_large_alpha_splits_evenly():
    for counts in split((0.0, 1.0)):
        assert ((counts - 10).abs() <= 4).all()  # share sd at alpha 1000: 0.27 tokens


def test_a_small_alpha_gives_nearly_everything_to_one_modality():
    for counts in split((1.0, 0.0)):
        concentrated = (counts.max(1).values >= 36).float().mean()
        assert concentrated > 0.85  # Dirichlet(0.01 x 4): 94 % of draws have a share >= 0.9


def test_alpha_one_is_uniform_on_the_simplex():
    """Dirichlet(1, 1, 1, 1): a modality's share is Beta(1, 3), P(share > ~0.5) = 0.49**3 ~ 0.12."""
    for counts in split(None, alphas=(1.0,)):
        assert 0.09 < (counts >= 21).float().mean() < 0.16
        assert ((counts.float().mean(0) - 10).abs() < 1).all()


def test_image_positions_are_uniform():
    batch = token_batch(4000, grids={"a": 16}, caption=False, p_available=1.0, p_missing=0.0, p_invalid=0.0)
    out = masks(batch, input_tokens=4, target_tokens=4)
    for chosen in (out.input["a"], out.target["a"]):
        assert ((chosen.sum(0) - 1000).abs() < 200).all()  # sd 27


def test_fast_enough_for_a_training_batch():
    """B=64, 7 modalities of 33 x 33 tokens (takes ~10 ms on 2 busy CPU cores; the bound only catches loops)."""
    batch = token_batch(64, grids={f"m{i}": 1089 for i in range(7)}, caption=False)
    config, g = MaskingConfig(input_tokens=256, target_tokens=256), torch.Generator().manual_seed(0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sample_masks(batch, config, generator=g)
        best = min(best, time.perf_counter() - start)
    assert best < 0.2


def test_config_round_trips_and_is_a_value():
    cfg = MaskingConfig(input_tokens=64, alphas=(0.5, 2.0), alpha_weights=(1.0, 3.0), input_scale={"a": 0.0})
    data = json.loads(json.dumps(cfg.to_dict()))
    assert MaskingConfig.from_dict(data) == cfg and hash(MaskingConfig.from_dict(data)) == hash(cfg)
    assert cfg.weights.tolist() == [0.25, 0.75] and MaskingConfig().weights.tolist() == [0.25] * 4
    assert dataclasses.replace(cfg, min_valid=1).min_valid == 1.0
    with pytest.raises(AttributeError):
        cfg.input_tokens = 3  # type: ignore[misc]


@pytest.mark.parametrize(("values", "message"), [
    ({"alphas": ()}, r"^masking\.alphas is empty"),
    ({"alphas": (1.0, 0.0)}, r"^masking\.alphas\.1: expected greater than 0, found 0\.0$"),
    ({"alphas": (-1.0,)}, r"^masking\.alphas\.0: expected greater than 0"),
    ({"alphas": (float("nan"),)}, r"^masking\.alphas\.0: expected greater than 0, found nan$"),
    ({"input_scale": {"a": float("inf")}}, r"^masking\.input_scale\.a: expected a finite number, found inf$"),
    ({"alpha_weights": (1.0, 1.0)}, r"^masking\.alpha_weights has 2 weights for 4 alphas"),
    ({"alpha_weights": (0.0,) * 4}, r"^masking\.alpha_weights \[0\.0, 0\.0, 0\.0, 0\.0\] sum to 0"),
    ({"alpha_weights": (1.0, -1.0, 1.0, 1.0)}, r"^masking\.alpha_weights\.1: expected greater than or equal to 0"),
    ({"input_scale": {"a": -0.5}}, r"^masking\.input_scale\.a: expected greater than or equal to 0"),
    ({"target_scale": {"": 1.0}}, r"^masking\.target_scale has an empty modality name"),
    ({"input_tokens": 0}, r"^masking\.input_tokens: expected greater than or equal to 1, found 0$"),
    ({"target_tokens": 2.5}, r"^masking\.target_tokens: expected a valid integer"),
    ({"min_valid": 1.5}, r"^masking\.min_valid: expected less than or equal to 1"),
    ({"exclude_invalid_targets": 1}, r"^masking\.exclude_invalid_targets: expected a valid boolean"),
    ({"alphass": (1.0,)}, r"^masking: unknown keys \['alphass'\]; known: \['alpha_weights', 'alphas', "),
])
def test_bad_configs_raise_config_error(values, message):
    with pytest.raises(ConfigError, match=message):
        MaskingConfig.from_dict(values)


def test_config_and_batch_that_do_not_fit_are_refused():
    batch = token_batch(4)
    with pytest.raises(ConfigError, match=r"^masking\.input_scale names modalities \['s2'\] that the token batch "
                                          r"does not have; its modalities: \['a', 'b', 'c', 'caption'\]$"):
        masks(batch, input_scale={"s2": 2.0})
    with pytest.raises(ConfigError, match=r"^sample_masks\(sequences=\.\.\.\) names modalities \['text'\]"):
        sample_masks(batch, MaskingConfig(), sequences={"text"})
    del batch["b_valid"]
    with pytest.raises(TokenBatchError, match=r"^token batch: 'b_valid' should be a tensor of shape \(4, 16\), "
                                              r"found nothing; or set masking\.exclude_invalid_targets: false$"):
        masks(batch)
    out = masks(batch, exclude_invalid_targets=False)  # no '<m>_valid' needed then
    assert (total(out.input) > 0).any() and (total(out.target) > 0).any()
    batch["a_available"] = batch["a_available"][:2]
    with pytest.raises(TokenBatchError, match=r"'a_available' should be a bool tensor of shape \(4,\)"):
        masks(batch, exclude_invalid_targets=False)
