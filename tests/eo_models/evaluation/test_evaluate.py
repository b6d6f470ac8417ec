"""Tokenizer evaluation and the VQ/FSQ x GAN/diffusion comparison: metric formulas on hand-checked tensors, the
metrics of tiny trained tokenizers on the demo cube, the ``eval-tokenizer`` command, and ``compare`` (table + PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")
pytest.importorskip("matplotlib")

from eo_models.cli.main import main  # noqa: E402
from eo_models.errors import CheckpointError  # noqa: E402
from eo_models.evaluation.compare import VARIANTS, compare_tokenizers  # noqa: E402
from eo_models.evaluation.evaluate import (  # noqa: E402
    CategoricalScores,
    ContinuousScores,
    MultilabelScores,
    codebook_stats,
    confusion_scores,
    evaluate_tokenizer,
    load_tokenizer,
)
from eo_models.tokenizers.heads import IGNORE  # noqa: E402
from eo_models.training.tokenizer import train_tokenizer  # noqa: E402

TINY = {"steps": 3, "batch_size": 4, "crop": 32, "progress": False}


# -- formulas on synthetic tensors ----------------------------------------------------------------------------------
def test_codebook_stats_uniform_and_collapsed() -> None:
    uniform = torch.tensor([5] * 10 + [0] * 6)
    s = codebook_stats(uniform)
    assert s["codes_used"] == 10 and s["codebook_usage"] == pytest.approx(10 / 16)
    assert s["perplexity"] == pytest.approx(10.0)  # exp(entropy) of a uniform histogram = number of codes
    one = codebook_stats(torch.tensor([0, 7, 0, 0]))
    assert one["perplexity"] == pytest.approx(1.0) and one["codebook_usage"] == 0.25
    assert math.isnan(codebook_stats(torch.zeros(4, dtype=torch.long))["perplexity"])


def test_confusion_scores_known_matrix() -> None:
    # rows: target, columns: prediction; class 2 never occurs
    cm = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    s = confusion_scores(cm)
    assert s["accuracy"] == pytest.approx(5 / 6)
    assert s["iou"][0] == pytest.approx(3 / 4)  # tp 3, union 4 + 3 - 3
    assert s["iou"][1] == pytest.approx(2 / 3)  # tp 2, union 2 + 3 - 2
    assert s["iou"][2] is None
    assert s["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_categorical_scores_ignore_invalid() -> None:
    target = torch.tensor([[[0, 0], [1, IGNORE]]])
    pred = torch.tensor([[[0, 1], [1, 0]]])  # the IGNORE pixel is wrong but does not count
    sc = CategoricalScores(num_classes=3)
    sc.update(pred, target)
    s = sc.compute()
    assert s["pixels"] == 3 and s["accuracy"] == pytest.approx(2 / 3)
    assert s["iou"] == [pytest.approx(1 / 2), pytest.approx(1 / 2), None]


def test_multilabel_scores() -> None:
    target = torch.tensor([[[[1, 1], [0, 0]], [[0, 0], [0, 0]]]])  # (B=1, L=2, 2, 2)
    pred = torch.tensor([[[[1, 0], [1, 0]], [[0, 0], [0, 1]]]])
    valid = torch.tensor([[[True, True], [True, False]]])  # the last pixel (a false positive of layer 1) is invalid
    sc = MultilabelScores(2)
    sc.update(pred, target, valid)
    s = sc.compute()
    assert s["f1"][0] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # tp 1, fp 1, fn 1
    assert s["accuracy"][0] == pytest.approx(1 / 3)
    assert s["f1"][1] is None and s["accuracy"][1] == 1.0  # nothing in target or prediction


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand((2, 3, 16, 16), generator=g) * 10
    target[:, :, 0, 0], target[:, :, 0, 1] = 0.0, 10.0  # the range of every band is exactly 10
    valid = torch.ones((2, 16, 16), dtype=torch.bool)
    valid[:, 8:, 8:] = False
    return target, valid


def test_continuous_scores_known_mse() -> None:
    target, valid = _images()
    pred = target + 0.5
    pred[~valid.unsqueeze(1).expand_as(pred)] = 1e6  # invalid pixels add no error
    sc = ContinuousScores([10.0] * 3, fill=[5.0] * 3, mae_factor=2.0)
    sc.update(pred[:1], target[:1], valid[:1])
    sc.update(pred[1:], target[1:], valid[1:])  # accumulated over batches
    s = sc.compute()
    assert s["psnr"] == [pytest.approx(10 * math.log10(10**2 / 0.25), rel=1e-5)] * 3
    assert s["mae"] == [pytest.approx(1.0)] * 3  # 0.5 x mae_factor
    assert all(0.9 < v < 1.0 for v in s["ssim"])  # a constant offset costs little structure


def test_continuous_scores_perfect_prediction() -> None:
    target, valid = _images()
    pred = target.clone()
    pred[~valid.unsqueeze(1).expand_as(pred)] = -123.0
    sc = ContinuousScores([10.0] * 3)
    sc.update(pred, target, valid)
    s = sc.compute()
    assert s["mae"] == [0.0] * 3
    assert s["ssim"] == [pytest.approx(1.0)] * 3
    assert s["psnr"] == [None] * 3  # infinite: not a JSON number


# -- tiny trained tokenizers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizers(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tokenizers")
    runs = {"s2l2a": ("fsq", "gan"), "lulc": ("vq", "gan"), "osm": ("fsq", "gan"), "s1rtc": ("fsq", "diffusion")}
    for m, (q, d) in runs.items():
        train_tokenizer(demo_cube, m, out / m, quantizer=q, decoder=d, **TINY)
    return {m: out / m for m in runs}


def _common(r: dict, limit: int) -> None:
    json.dumps(r, allow_nan=False)  # strict JSON
    assert r["samples"] == limit and r["crop_px"] == 32 and r["tokens_per_sample"] == 16
    assert 0 < r["codebook_usage"] <= 1 and r["codes_used"] >= 1
    assert 1 <= r["perplexity"] <= r["codes_used"] + 1e-6
    assert r["decode_ms_per_sample"] > 0 and r["tokenize_ms_per_sample"] > 0
    assert 0 < r["valid_fraction"] <= 1


def test_evaluate_continuous(tiny_tokenizers: dict[str, Path], demo_cube: Path) -> None:
    r = evaluate_tokenizer(tiny_tokenizers["s2l2a"], demo_cube, batch_size=4, limit=6)
    _common(r, 6)
    assert (r["modality"], r["kind"], r["quantizer"], r["decoder"]) == ("s2l2a", "continuous", "fsq", "gan")
    assert r["bands"][:4] == ["B01", "B02", "B03", "B04"] and set(r["psnr"]) == set(r["bands"])
    assert all(math.isfinite(v) for v in r["psnr"].values())
    assert all(-1 <= v <= 1 for v in r["ssim"].values())
    assert all(v >= 0 for v in r["mae"].values())
    assert all(v > 0 for v in r["data_range"].values())
    # MAE in physical units (reflectance = DN x 1e-4): far below 1, whereas DN errors are in the hundreds
    assert 0 < r["mae_mean"] < 1 and r["mae_units"].startswith("reflectance")
    assert r["psnr_mean"] == pytest.approx(sum(r["psnr"].values()) / len(r["psnr"]))
    assert r["decode_steps"] is None


def test_evaluate_db_and_diffusion(tiny_tokenizers: dict[str, Path], demo_cube: Path) -> None:
    r = evaluate_tokenizer(tiny_tokenizers["s1rtc"], demo_cube, batch_size=4, limit=4, decode_steps=2)
    _common(r, 4)
    assert r["mae_units"] == "dB" and r["decode_steps"] == 2 and r["decoder"] == "diffusion"
    assert set(r["psnr"]) == {"vv", "vh"} and all(-1 <= v <= 1 for v in r["ssim"].values())


def test_evaluate_categorical(tiny_tokenizers: dict[str, Path], demo_cube: Path) -> None:
    r = evaluate_tokenizer(str(tiny_tokenizers["lulc"]), demo_cube, batch_size=4, limit=5)
    _common(r, 5)
    assert r["kind"] == "categorical" and r["quantizer"] == "vq"
    assert 0 <= r["accuracy"] <= 1 and 0 <= r["miou"] <= 1
    assert "trees" in r["iou"] and all(v is None or 0 <= v <= 1 for v in r["iou"].values())
    assert "psnr" not in r


def test_evaluate_multilabel(tiny_tokenizers: dict[str, Path], demo_cube: Path) -> None:
    r = evaluate_tokenizer(tiny_tokenizers["osm"], demo_cube, batch_size=4, limit=4)
    _common(r, 4)
    assert r["kind"] == "multilabel" and "buildings" in r["f1"]
    assert all(0 <= v <= 1 for v in r["accuracy"].values())
    assert all(v is None or 0 <= v <= 1 for v in r["f1"].values())


def test_evaluate_in_eval_mode_and_deterministic(tiny_tokenizers: dict[str, Path], demo_cube: Path) -> None:
    tok = load_tokenizer(tiny_tokenizers["lulc"])  # VQ: a training-mode forward would move the EMA codebook
    tok.train()
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    a = evaluate_tokenizer(tok, demo_cube, batch_size=4, limit=4)
    assert tok.training  # the caller's mode is restored
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    b = evaluate_tokenizer(tiny_tokenizers["lulc"], demo_cube, batch_size=2, limit=4)
    assert (a["accuracy"], a["iou"], a["perplexity"]) == (b["accuracy"], b["iou"], b["perplexity"])


def test_eval_tokenizer_command(tiny_tokenizers: dict[str, Path], demo_cube: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrics.json"
    assert main(["eval-tokenizer", "--cube", str(demo_cube), "--tokenizer", str(tiny_tokenizers["s2l2a"]),
                 "--limit", "3", "--batch-size", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    printed = json.loads(text[text.index("{"):])
    saved = json.loads(out.read_text())
    assert saved["samples"] == 3 and saved["psnr"] == printed["psnr"]
    card = (tiny_tokenizers["s2l2a"] / "README.md").read_text()  # its own model card: rewritten with the metrics
    assert "## Metrics" in card and '"evaluated_on"' in card and card.startswith("---\n")
    # the metrics file it wrote is replaced on a rerun; a file of anything else is not
    assert main(["eval-tokenizer", "--cube", str(demo_cube), "--tokenizer", str(tiny_tokenizers["s2l2a"]),
                 "--limit", "2", "--batch-size", "2", "--out", str(out), "--no-card"]) == 0
    assert json.loads(out.read_text())["samples"] == 2
    capsys.readouterr()
    notes = tmp_path / "notes.json"
    notes.write_text('{"todo": 1}')
    assert main(["eval-tokenizer", "--cube", str(demo_cube), "--tokenizer", str(tiny_tokenizers["s2l2a"]),
                 "--out", str(notes)]) == 2
    assert "not a metrics file written by eval-tokenizer" in capsys.readouterr().err
    assert notes.read_text() == '{"todo": 1}'


def test_evaluate_from_the_hub_cache_offline(tiny_tokenizers: dict[str, Path], demo_cube: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--s2l2a-tiny"
    load_tokenizer(tiny_tokenizers["s2l2a"]).save_pretrained(repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    by_id = evaluate_tokenizer("org/s2l2a-tiny", demo_cube, limit=2)
    by_folder = evaluate_tokenizer(tiny_tokenizers["s2l2a"], demo_cube, limit=2)
    assert by_id["psnr"] == by_folder["psnr"]
    with pytest.raises(CheckpointError, match="org/nothing"):
        evaluate_tokenizer("org/nothing", demo_cube)
    with pytest.raises(CheckpointError, match="cannot load tokenizer"):
        evaluate_tokenizer(tmp_path / "no-such-folder", demo_cube)


# -- compare ----------------------------------------------------------------------------------------------------------
def test_compare_writes_table_and_figure(demo_cube: Path, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = tmp_path / "cmp"
    r = compare_tokenizers(demo_cube, "s2l2a", out, steps=2, progress=False, limit=6, batch_size=4, crop=32)
    assert r.table_path == out / "compare.md" and r.figure_path == out / "compare.png"
    md = r.table_path.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert len(rows) == 4
    assert [line.split(" | ")[0].removeprefix("| ") for line in rows] == ["FSQ + GAN", "FSQ + diffusion", "VQ + GAN",
                                                                        "VQ + diffusion"]
    for text in ("PSNR (dB)", "train samples/s", "train CPU ms/sample", "--steps 2", "CPU cores", "crop=32"):
        assert text in md
    assert [row["variant"] for row in r.rows] == list(VARIANTS)
    for row in r.rows:
        assert row["steps"] == 2 and row["train_samples_per_s"] > 0 and math.isfinite(row["final_loss"])
        assert row["train_cpu_ms_per_sample"] > 0
        assert row["metrics"]["samples"] == 6 and math.isfinite(row["metrics"]["psnr_mean"])
        assert json.loads((Path(row["out"]) / "eval.json").read_text())["samples"] == 6
    img = mpimg.imread(r.figure_path)  # 2 samples x (input + 4 variants), 2 rows each, at 90 dpi
    assert img.shape[0] == pytest.approx((1.6 * 4 + 0.3) * 90, abs=1)
    assert img.shape[1] == pytest.approx((1.5 * 5 + 0.6) * 90, abs=1)
    assert r.figure_path.stat().st_size < 300_000

    # a rerun loads the finished variants instead of training them, and still reports their throughput
    again = compare_tokenizers(demo_cube, "s2l2a", out, steps=2, progress=False, limit=2, batch_size=4, crop=32,
                               figure_samples=1)
    for old, new in zip(r.rows, again.rows, strict=True):
        assert new["steps"] == 2
        assert new["train_samples_per_s"] == pytest.approx(old["train_samples_per_s"])
        assert new["train_cpu_ms_per_sample"] == pytest.approx(old["train_cpu_ms_per_sample"])
        assert new["final_loss"] == pytest.approx(old["final_loss"], rel=1e-4)
    assert mpimg.imread(again.figure_path).shape[0] == pytest.approx((1.6 * 2 + 0.3) * 90, abs=1)
