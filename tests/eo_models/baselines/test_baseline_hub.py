"""A trained baseline is a Hub kind like every other artifact: training writes its card (inputs and their channel
names, normalisation, tasks and class table, the training cube's recipe hash, training losses, licence), the folder is
recognised as a ``baseline``, ``eo-models push --dry-run`` stages exactly its files, and ``from_pretrained`` of the
staged folder computes what the trained model computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from eo_models.baselines.config import BaselineConfig, load_baseline_config  # noqa: E402
from eo_models.baselines.model import BaselineModel  # noqa: E402
from eo_models.baselines.train import batch_arrays, finished, train_baseline  # noqa: E402
from eo_models.cli.main import main  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402
from eo_models.hub.artifacts import KINDS, kind_of_folder  # noqa: E402
from eo_models.hub.card import check_card  # noqa: E402
from eo_models.hub.push import check_staged  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAINED_ON = {"cube": "demo.zarr", "recipe_hash": "0123456789abcdef",
              "channel_names": {"opt": ["B02", "B03", "B04"], "sar": ["vv", "vh"]},
              "normalisation": "area-averaged onto the task grid, standardised per band",
              "class_names": ["water", "forest"], "grid": 6, "label": "lulc", "target": "canopy", "units": "m"}


def _data(n: int = 16, g: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    opt = rng.normal(size=(n, 3, g, g)).astype(np.float32)
    seg = (opt[:, 0] > 0).astype(np.int64)
    return batch_arrays({"opt": opt, "sar": rng.normal(size=(n, 2, g, g)).astype(np.float32)},
                        {"opt": np.ones(n, bool), "sar": rng.random(n) > 0.3}, seg,
                        np.stack([seg.mean((1, 2)) > 0.5] * 2, 1).astype(np.float32), np.ones(n, bool),
                        opt[:, 1].mean((1, 2)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaselineModel, dict[str, np.ndarray]]:
    cfg = load_baseline_config("tiny", modalities=("opt", "sar"), channels=(3, 2), classes=2, dim=4, head_dim=4,
                               trained_on=TRAINED_ON, train={"steps": 6, "batch_size": 8, "log_every": 3,
                                                             "checkpoint_every": 6})
    arrays = _data()
    out = tmp_path_factory.mktemp("baseline") / "late"
    model = train_baseline(out, cfg, arrays, np.arange(len(arrays["seg"])))
    return out, model, arrays


def test_a_trained_baseline_folder_is_the_baseline_kind(trained) -> None:
    out, model, _ = trained
    kind, cfg = kind_of_folder(out)
    assert kind is KINDS["baseline"] and cfg == model.cfg
    described = kind.describe(cfg)
    assert described.modalities == ("opt", "sar") and described.recipe_hash == "0123456789abcdef"
    assert described.bands == {"opt": ("B02", "B03", "B04"), "sar": ("vv", "vh")}
    for other in ("tokenizer", "caption-tokenizer", "fusion", "backbone"):  # no other kind takes its config
        with pytest.raises(ValueError):
            KINDS[other].read_config(json.loads((out / "config.json").read_text()))


def test_training_writes_the_card_a_user_needs(trained) -> None:
    out, _, _ = trained
    card = check_card(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "eo-models" and data["license"] == "apache-2.0"
    assert data["recipe_hash"] == "0123456789abcdef" and {"baseline", "opt", "sar"} <= set(data["tags"])
    assert data["metrics"] == sorted(["train_steps", "train_loss", "train_seg_loss", "train_composition_loss",
                                      "train_height_loss"])
    text = card.text
    assert text.startswith("# 4M4EO baseline: MLP late fusion (opt+sar)")
    assert "| opt | 3 | B02, B03, B04 |" in text and "| sar | 2 | vv, vh |" in text
    assert "normalisation: area-averaged onto the task grid, standardised per band" in text
    assert "| 0 | water |" in text and "| 1 | forest |" in text and "6 x 6 cells (label modality lulc)" in text
    assert "canopy in m" in text and "cube recipe hash: 0123456789abcdef" in text and "cube: demo.zarr" in text
    rows = (out / "train" / "metrics.csv").read_text().splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    assert f'"train_steps": {int(last["step"])}' in text and f'"train_loss": {round(float(last["loss"]), 6)}' in text
    assert "## Use" in text and "BaselineModel.from_pretrained" in text


def test_push_dry_run_stages_exactly_its_files_and_it_loads_back(trained, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, model, arrays = trained
    dry = tmp_path / "upload"
    assert main(["push", str(out), "--repo", "org/late", "--dry-run", "--out", str(dry)]) == 0
    said = capsys.readouterr().out
    assert sorted(p.name for p in dry.rglob("*")) == ["README.md", "config.json", "model.safetensors"]
    assert "(baseline, 3 files" in said and "left out of the upload: train/" in said
    staged = check_staged(dry, KINDS["baseline"])
    entry = staged.registry_entry("org/late")
    assert entry["kind"] == "baseline" and entry["recipe_hash"] == "0123456789abcdef"
    assert entry["bands"] == {"opt": ["B02", "B03", "B04"], "sar": ["vv", "vh"]}

    loaded = BaselineModel.from_pretrained(dry).eval()
    x = {m: torch.from_numpy(arrays[m]) for m in ("opt", "sar")}
    av = {m: torch.from_numpy(arrays[f"{m}_available"]) for m in ("opt", "sar")}
    with torch.no_grad():
        a, b = model.eval()(x, av), loaded(x, av)
    for field in ("seg", "composition", "height", "embedding"):
        assert torch.equal(getattr(a, field), getattr(b, field))


def test_trained_on_is_checked_and_older_configs_stay_the_same() -> None:
    base = {"modalities": ("opt",), "channels": (3,), "classes": 2}
    with pytest.raises(ConfigError, match=r"channel_names\['opt'\] names 2 channels, the input has 3"):
        BaselineConfig.from_dict({**base, "trained_on": {"channel_names": {"opt": ["a", "b"]}}})
    with pytest.raises(ConfigError, match="not an input modality"):
        BaselineConfig.from_dict({**base, "trained_on": {"channel_names": {"sar": ["a", "b", "c"]}}})
    with pytest.raises(ConfigError, match="names 3 classes, classes is 2"):
        BaselineConfig.from_dict({**base, "trained_on": {"class_names": ["a", "b", "c"]}})
    plain = BaselineConfig.from_dict(base)
    assert "trained_on" not in plain.to_dict()  # configs (and run hashes) without it are unchanged


def test_a_finished_folder_without_trained_on_is_still_finished(tmp_path: Path) -> None:
    cfg = load_baseline_config("tiny", modalities=("opt",), channels=(3,), classes=2, dim=4, head_dim=4)
    BaselineModel(cfg).save_pretrained(tmp_path / "old")
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    assert "trained_on" not in saved and finished(tmp_path / "old", cfg)
