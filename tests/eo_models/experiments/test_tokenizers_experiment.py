"""The stage-1 experiment (``eo-models experiment tokenizers``): a CI-sized run on the demo cube (2 seeds, one step,
a continuous and a categorical modality), its statistics, its non-learned references at the tokenizers' bits per
sample, resuming, and refusing a folder that is not its own."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from eo_dataset.errors import OutputError  # noqa: E402
from eo_models.cli.main import main, parser  # noqa: E402
from eo_models.evaluation.compare import VARIANTS  # noqa: E402
from eo_models.evaluation.evaluate import eval_batches, evaluate_reconstruction, load_tokenizer  # noqa: E402
from eo_models.evaluation.references import (  # noqa: E402
    MAX_VALUE_BITS,
    block_bicubic,
    jpeg2000,
    jpeg2000_available,
    references,
    token_bits,
)
from eo_models.experiments.tokenizers import mean_std, run_tokenizers_experiment  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = {"steps": 1, "limit": 4, "batch_size": 4, "crop": 32, "progress": False, "figure_samples": 1}


@pytest.fixture(scope="module")
def experiment(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None):
    out = tmp_path_factory.mktemp("experiment") / "tok"
    return out, run_tokenizers_experiment(demo_cube, out, seeds=2, modalities=["s2l2a", "lulc"], **TINY)


def test_outputs_name_command_revision_and_date(experiment) -> None:
    out, r = experiment
    assert r.json_path == out / "results.json" and r.table_path == out / "results.md"
    saved = json.loads(r.json_path.read_text())
    assert saved["command"].startswith("eo-models experiment tokenizers --cube ")
    assert saved["git_revision"] and saved["date"][:2] == "20" and saved["seeds"] == [0, 1]
    assert list(saved["modalities"]) == ["s2l2a", "lulc"]
    md = r.table_path.read_text()
    for text in (saved["command"], saved["git_revision"], saved["date"], "## s2l2a (continuous)",
                 "## lulc (categorical)", "PSNR (dB)", "mIoU", "bits/sample", "block average + bicubic",
                 "block majority + nearest", "FSQ + GAN", "VQ + diffusion", "JPEG 2000"):
        assert text in md, text
    assert " ± " in md  # two seeds: mean ± std
    assert [p.name for p in r.figures] == ["s2l2a.png", "lulc.png"]
    import matplotlib.image as mpimg

    for fig in r.figures:
        img = mpimg.imread(fig)
        # input + 4 variants + the references, as columns
        refs = len(saved["modalities"][fig.stem]["references"])
        assert img.shape[1] == pytest.approx((1.5 * (1 + 4 + refs) + 0.6) * 90, abs=1)
    for m in ("s2l2a", "lulc"):
        for s in (0, 1):
            rows = json.loads((out / m / f"seed-{s}" / "compare.json").read_text())
            assert [row["variant"] for row in rows] == list(VARIANTS)
            assert all(json.loads((Path(row["out"]) / "config.json").read_text())["train"]["seed"] == s
                       for row in rows)


def test_mean_and_std_over_seeds(experiment) -> None:
    _, r = experiment
    for m, mod in r.results["modalities"].items():
        for v, per in mod["variants"].items():
            assert len(per["seeds"]) == 2
            for key, summary in per["summary"].items():
                values = [s[key] for s in per["seeds"] if s[key] is not None and math.isfinite(s[key])]
                if len(values) == 2:
                    assert summary["mean"] == pytest.approx(statistics.fmean(values)), (m, v, key)
                    assert summary["std"] == pytest.approx(statistics.stdev(values)), (m, v, key)
    # different seeds train different tokenizers
    s2 = r.results["modalities"]["s2l2a"]["variants"]["fsq-gan"]["seeds"]
    assert s2[0]["final_loss"] != s2[1]["final_loss"]


def test_mean_std_formula() -> None:
    assert mean_std([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "std": pytest.approx(1.527525, rel=1e-5),
                                         "n": 3}
    assert mean_std([3.0, None, float("nan")]) == {"mean": 3.0, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_references_at_the_tokenizers_budget(experiment) -> None:
    _, r = experiment
    for mod in r.results["modalities"].values():
        first = mod["variants"]["fsq-gan"]["seeds"][0]
        budgets = [per["seeds"][0]["bits_per_sample"] for per in mod["variants"].values()]
        assert first["bits_per_sample"] == pytest.approx(token_bits(first["tokens_per_sample"],
                                                                    first["codebook_size"]))
        assert mod["budget_bits"] == pytest.approx(min(budgets))
        block = mod["references"][0]
        assert block["bits"] <= mod["budget_bits"]
        p = block["params"]
        if mod["kind"] == "continuous":  # the closest not above: one more bit per block mean would not fit
            bands = len(block["metrics"]["bands"])
            assert block["bits"] == bands * p["grid"] ** 2 * p["value_bits"]
            assert p["value_bits"] == MAX_VALUE_BITS or block["bits"] + bands * p["grid"] ** 2 > mod["budget_bits"]
            assert math.isfinite(block["metrics"]["psnr_mean"]) and 0 < block["metrics"]["ssim_mean"] <= 1
        else:  # the largest grid of majority classes that fits
            assert block["bits"] == math.ceil(p["grid"] ** 2 * math.log2(len(block["metrics"]["classes"])))
            assert math.ceil((p["grid"] + 1) ** 2 * math.log2(len(block["metrics"]["classes"]))) > mod["budget_bits"]
            assert 0 < block["metrics"]["accuracy"] <= 1 and 0 < block["metrics"]["miou"] <= 1
        assert block["metrics"]["samples"] == first["samples"]  # the very samples the tokenizers are scored on
        for ref in mod["references"][1:]:
            assert ref["bits"] <= mod["budget_bits"]
    assert "JPEG 2000" in r.results["modalities"]["lulc"]["skipped"]  # no lossy image codec for class ids


def _s2_frame(experiment):
    out, r = experiment
    return load_tokenizer(out / "s2l2a" / "seed-0" / "fsq-gan")


def test_block_bicubic_better_with_more_bits(experiment, demo_cube: Path) -> None:
    tok = _s2_frame(experiment)
    batches = list(eval_batches(tok, demo_cube, 4, 4, workers=0))
    psnr = []
    for budget in (200, 2000, 20000):
        ref = block_bicubic(tok.cfg.modality, budget, batches)
        assert ref.bits <= budget
        metrics = evaluate_reconstruction(tok, demo_cube, ref, batch_size=4, limit=4, workers=0)
        assert math.isfinite(metrics["psnr_mean"])
        psnr.append(metrics["psnr_mean"])
    assert psnr[0] < psnr[1] < psnr[2]


@pytest.mark.skipif(not jpeg2000_available(), reason="imagecodecs with JPEG 2000 is not installed")
def test_jpeg2000_fits_the_budget_and_improves_with_bits(experiment, demo_cube: Path) -> None:
    tok = _s2_frame(experiment)
    m = tok.cfg.modality
    batches = list(eval_batches(tok, demo_cube, 4, 4, workers=0))
    psnr = []
    for budget in (2000, 8000):
        ref = jpeg2000(m, budget, batches)
        assert ref is not None and ref.bits <= budget and ref.params["codec"] == "jpeg2000"
        psnr.append(evaluate_reconstruction(tok, demo_cube, ref, batch_size=4, limit=4, workers=0)["psnr_mean"])
    assert math.isfinite(psnr[0]) and psnr[0] < psnr[1]
    refs, skipped = references(m, 100, batches)  # 100 bits: below the smallest codestream of 12 bands
    assert [r.name for r in refs] == ["block average + bicubic"] and "bits" in skipped["JPEG 2000"]


def test_rerun_reuses_finished_seeds(experiment, demo_cube: Path) -> None:
    out, r = experiment
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("compare.json")}
    again = run_tokenizers_experiment(demo_cube, out, seeds=2, modalities=["s2l2a", "lulc"], **TINY)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("compare.json")} == stamp  # nothing compared again
    for m in ("s2l2a", "lulc"):
        assert again.results["modalities"][m]["variants"] == r.results["modalities"][m]["variants"]
        assert again.results["modalities"][m]["references"] == r.results["modalities"][m]["references"]


def test_refuses_a_folder_that_is_not_its_own(demo_cube: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a tokenizer experiment folder"):
        run_tokenizers_experiment(demo_cube, tmp_path, seeds=1, modalities=["lulc"], **TINY)
    assert main(["experiment", "tokenizers", "--cube", str(demo_cube), "--seeds", "1", "--out", str(tmp_path),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a tokenizer experiment folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert main(["experiment", "tokenizers", "--cube", str(demo_cube), "--modalities", "nosuch", "--out",
                 str(tmp_path / "new"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no modality 'nosuch'" in err and "'s2l2a'" in err
    assert not (tmp_path / "new").exists()


def test_command_line_documents_every_option() -> None:
    p = parser()
    sub = next(a for a in p._actions if a.choices and "experiment" in a.choices)
    group = next(a for a in sub.choices["experiment"]._actions if a.choices and "tokenizers" in a.choices)
    s = group.choices["tokenizers"]
    example = s.epilog.splitlines()[1].split()
    assert example[:3] == ["eo-models", "experiment", "tokenizers"]
    args = p.parse_args(example[1:])
    assert args.seeds == 3 and args.modalities == ["s2l2a", "s1rtc", "dem", "lulc"]
    for action in s._actions:
        if "-h" in action.option_strings or action.required or action.nargs == 0:
            continue
        assert "default" in action.help, action.option_strings
    compare = sub.choices["compare"]
    assert "--seed" in compare.format_help()
