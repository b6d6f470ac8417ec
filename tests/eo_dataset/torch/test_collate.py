"""Collating samples with different modality sets: zero-filled, flagged, never silent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from eo_dataset.torch import CubeDataset, collate


@pytest.fixture(scope="module")
def ds(demo_cube: Path) -> CubeDataset:
    return CubeDataset(demo_cube, ["s2l2a", "s1rtc", "landsat", "canopy"], crop=60, crop_mode="center")


def _mixed(ds: CubeDataset) -> list[int]:
    """Indices whose s1rtc availability differs (some have it, some do not)."""
    k = ds.modalities.index("s1rtc")
    yes = np.flatnonzero(ds.availability[:, k])[:2]
    no = np.flatnonzero(~ds.availability[:, k])[:2]
    return [int(yes[0]), int(no[0]), int(yes[1]), int(no[1])]


def test_missing_modalities_are_zero_filled_and_flagged(ds: CubeDataset) -> None:
    idx = _mixed(ds)
    samples = [ds[i] for i in idx]
    batch = collate(samples, ds.shapes)
    assert batch["s1rtc"].shape == (4, 2, 60, 60) and batch["s1rtc_valid"].shape == (4, 60, 60)
    assert batch["s1rtc_available"].tolist() == [True, False, True, False]
    for j, s in enumerate(samples):
        for m in ds.modalities:
            if bool(s[f"{m}_available"]):
                assert torch.equal(batch[m][j], s[m]) and torch.equal(batch[f"{m}_valid"][j], s[f"{m}_valid"])
            else:
                assert not batch[m][j].any() and not batch[f"{m}_valid"][j].any()
    assert batch["sample_id"] == [s["sample_id"] for s in samples]
    assert batch["bounds"].shape == (4, 4) and batch["time"].dtype == torch.float64


def test_batched_read_equals_collated_samples(ds: CubeDataset) -> None:
    idx = _mixed(ds) + [0, 31]
    a = ds.get_batch(idx)
    b = collate([ds[i] for i in idx], ds.shapes)
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == b[k].dtype and torch.allclose(v.double(), b[k].double(), equal_nan=True), k
        else:
            assert v == b[k], k


def test_modality_missing_from_the_whole_batch(ds: CubeDataset) -> None:
    k = ds.modalities.index("s1rtc")
    idx = [int(i) for i in np.flatnonzero(~ds.availability[:, k])[:3]]
    samples = [ds[i] for i in idx]
    filled = collate(samples, ds.shapes)
    assert filled["s1rtc"].shape == (3, 2, 60, 60) and not filled["s1rtc"].any()
    flags_only = collate(samples)  # no shapes: the flags say it, no tensor is invented
    assert "s1rtc" not in flags_only and flags_only["s1rtc_available"].tolist() == [False] * 3


def test_default_collate_refuses_instead_of_guessing(ds: CubeDataset) -> None:
    samples = [ds[i] for i in _mixed(ds)]
    with pytest.raises(KeyError):
        default_collate(samples)


def test_collate_errors(ds: CubeDataset) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    a, b = ds[0], ds[1]
    b = dict(b)
    b["extra"] = 1
    with pytest.raises(ValueError, match="different keys"):
        collate([a, b], ds.shapes)
    liar = dict(ds[_mixed(ds)[1]])
    liar["s1rtc_available"] = torch.tensor(True)
    with pytest.raises(ValueError, match="says s1rtc_available=True"):
        collate([ds[_mixed(ds)[0]], liar], ds.shapes)
