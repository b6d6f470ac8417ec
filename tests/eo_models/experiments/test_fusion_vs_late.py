"""``eo-models experiment fusion-vs-late`` end to end on the 32-sample demo cube (one seed, a few steps): every
method is trained on the Lightning core, evaluated on every modality subset, beats chance on segmentation (the mIoU
of predicting the training split's majority class everywhere, on the same test samples), and a rerun reuses every
finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

from eo_models.cli.main import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKENIZER = """\
name: ci
quantizer: {type: fsq, levels: [8, 5, 5, 5], codebook_size: 64, codebook_dim: 4}
encoder: {type: vit, patch: 16, dim: 16, depth: 1, heads: 2, latent_dim: 8}
decoder: {type: gan, dim: 8, disc_start: 1000, disc_dim: 8}
train: {crop: 48, batch_size: 4, steps: 10, log_every: 5, checkpoint_every: 10}
"""
FUSION = """\
name: ci
model: {dim: 32, encoder_depth: 1, decoder_depth: 1, heads: 2}
masking: {input_tokens: 64, target_tokens: 64}
train: {batch_size: 8, steps: 150, lr: 0.002, warmup: 10, log_every: 50, checkpoint_every: 150, num_workers: 0}
"""
EXPERIMENT = """\
name: ci
tasks: {{label: lulc, target: canopy, inputs: [s2l2a, s1rtc], grid: 22}}
split: {{unit: quadrant}}
tokenizer: {{config: {tok}, crop: 48}}
fusion: {{config: {fus}}}
baseline: {{config: tiny, steps: 40}}
probe: {{steps: 60, warmup: 5, lrs: [0.01, 0.1], fractions: [1.0, 0.2]}}
bootstrap: {{resamples: 50}}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("experiment-config")
    (root / "tok.yaml").write_text(TOKENIZER)
    (root / "fus.yaml").write_text(FUSION)
    (root / "exp.yaml").write_text(EXPERIMENT.format(tok=root / "tok.yaml", fus=root / "fus.yaml"))
    return root / "exp.yaml"


def test_fusion_vs_late_end_to_end(demo_cube: Path, config: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fusion"
    argv = ["experiment", "fusion-vs-late", "--cube", str(demo_cube), "--config", str(config), "--seeds", "1",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "results.md" in printed and "chance" in printed
    r = json.loads((out / "results.json").read_text())
    assert r["git_revision"] and r["date"] and r["command"].startswith("eo-models experiment fusion-vs-late")
    assert r["inputs"] == ["s2l2a", "s1rtc"] and "lulc" not in r["inputs"] and "canopy" not in r["inputs"]
    groups = r["split"]["groups"]  # spatially separated: no quadrant in two splits
    assert not (set(groups["train"]) & set(groups["test"])) and not (set(groups["val"]) & set(groups["test"]))
    scores = r["scores"]
    majority, uniform = r["chance"]["miou_by_subset"], r["chance"]["miou_uniform_by_subset"]
    expected = {"late", "unet", "unimodal s2l2a", "unimodal s1rtc", "pixels linear", "fusion linear",
                "fusion knn5", "fusion knn20"}
    assert set(scores) == expected
    assert set(r["subsets"]) == {"all", "only s2l2a", "only s1rtc"}  # with two inputs, drop-one is only-one
    for method in ("late", "unet", "pixels linear", "fusion linear"):
        assert set(scores[method]) == set(r["subsets"])  # every subset evaluated
    beaten = {}
    for method, per in scores.items():
        if method.startswith("fusion knn"):  # kNN: composition and regression only
            assert per["all"]["miou"]["mean"] != per["all"]["miou"]["mean"]  # nan
            assert 0 <= per["all"]["mean_ap"]["mean"] <= 1
            continue
        subset = "all" if "all" in per else next(iter(per))  # a unimodal model: its own modality
        beaten[method] = (per[subset]["miou"]["mean"], uniform[subset], majority[subset])
    # chance: a class drawn uniformly at random in every cell; every method beats it
    assert all(m > u for m, u, _ in beaten.values()), beaten
    # the methods trained on the labels, and the probe on raw pixels, also beat the training split's majority class
    # everywhere (the frozen fusion encoder after 150 steps on 32 samples does not, at this size: see the docs)
    assert all(m > c for method, (m, _, c) in beaten.items() if method != "fusion linear"), beaten
    assert set(r["label_fractions"]["fusion linear"]) == {"1", "0.2"}
    assert r["differences"] and all(d["low"] <= d["difference"] <= d["high"] for d in r["differences"])
    md = (out / "results.md").read_text()
    assert r["git_revision"] in md and "## Robustness" in md and "fusion linear" in md
    assert (out / "robustness.png").stat().st_size > 1000
    assert (out / "generated.png").stat().st_size > 1000  # s2l2a generated from s1rtc beside its true tokens
    assert r["generated_figure"]["target"] == "s2l2a" and r["generated_figure"]["samples"]

    # the baselines' cards say what they were trained on: the cube, its recipe hash, the channel and class names
    import xarray as xr

    late = json.loads(next((out / "runs").glob("late-s0-*/config.json")).read_text())["trained_on"]
    assert late["recipe_hash"] == xr.open_zarr(demo_cube).attrs["recipe_hash"] and late["cube"] == str(demo_cube)
    assert set(late["channel_names"]) == {"s2l2a", "s1rtc"} and late["class_names"] and late["label"] == "lulc"
    card = next((out / "runs").glob("late-s0-*/README.md")).read_text()
    assert late["recipe_hash"] in card and late["channel_names"]["s1rtc"][0] in card

    # a rerun trains nothing: every run folder is reused as it is
    weights = sorted((out / "runs").glob("*/model.safetensors"))
    assert len(weights) == 5  # late, unet, two unimodal, fusion
    stamps = [w.stat().st_mtime_ns for w in weights]
    assert main(argv) == 0
    assert [w.stat().st_mtime_ns for w in weights] == stamps


def test_too_few_cells_for_a_cell_split_is_one_line(demo_cube: Path, config: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["experiment", "fusion-vs-late", "--cube", str(demo_cube), "--config", str(config), "--seeds", "1",
                 "--split-unit", "cell", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "need >= 3" in err[0] and "quadrant" in err[0]


def test_refuses_a_folder_that_is_not_ours(demo_cube: Path, config: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code = main(["experiment", "fusion-vs-late", "--cube", str(demo_cube), "--config", str(config), "--seeds", "1",
                 "--out", str(tmp_path / "mine"), "--quiet"])
    assert code == 2 and "left untouched" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
