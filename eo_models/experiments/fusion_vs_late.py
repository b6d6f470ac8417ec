"""``eo-models experiment fusion-vs-late``: the fusion model (masked multimodal token reconstruction, frozen, probed)
against MLP late fusion, unimodal models, a small supervised U-Net and a linear probe on raw pixels, on the same
tasks, splits and test samples (see docs/experiments/fusion.md for the protocol).

Everything trained lands in ``out/runs/`` under a name that carries a hash of its config, so a rerun reuses every
finished run (and resumes an unfinished one from its checkpoint); evaluation is redone each time (it is cheap).
``out`` then holds ``results.json``, ``results.md``, ``robustness.png`` and ``generated.png`` (the first input modality
generated from the others beside the truth), each naming the command, the git revision and the date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eo_dataset.outputs import check_output
from eo_models.baselines.config import BaselineConfig, load_baseline_config
from eo_models.baselines.model import BaselineModel
from eo_models.baselines.train import batch_arrays, train_baseline
from eo_models.errors import ConfigError
from eo_models.experiments.config import ExperimentConfig, load_experiment_config
from eo_models.experiments.evaluate import HIGHER_IS_BETTER, METRICS, Evaluation, difference, subsets, summary
from eo_models.experiments.features import Features, fusion_features, pixel_features
from eo_models.experiments.generated import generated_figure
from eo_models.experiments.metrics import majority_miou, uniform_miou
from eo_models.experiments.probes import ProbeSettings, fit_probe, knn_predict
from eo_models.experiments.report import stamp, write_figure, write_markdown
from eo_models.experiments.splits import Split, label_fraction, split_samples
from eo_models.experiments.tasks import TaskData, load_tasks
from eo_models.fusion.model import FusionModel, load_fusion
from eo_models.fusion.train import train_fusion
from eo_models.tokens.dataset import TokenDataset
from eo_models.tokens.store import tokenize_cube
from eo_models.training.tokenizer import train_tokenizer

MARKER = "experiment.json"  #: marks a folder written by this experiment
KIND = "fusion-vs-late"


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def git_revision() -> str:
    """The git revision of the checkout this package runs from (``unknown`` outside a git checkout)."""
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Context:
    """What every stage of the experiment shares."""

    cfg: ExperimentConfig
    data: TaskData
    split: Split
    runs: Path
    seeds: list[int]
    progress: bool
    say: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)
    tokenizers: dict[str, Path] = field(default_factory=dict)


#: How the baselines' inputs are made from the cube (their model cards say it).
NORMALISATION = ("each modality area-averaged onto the task grid over its valid pixels (dB for SAR), continuous bands "
                 "standardised over the available samples, multilabel layers as covered fractions; zero and flagged "
                 "where a modality is missing")


# -- training what is missing ----------------------------------------------------------------------------------------
def _baseline_cfg(ctx: Context, kind: str, modalities: Sequence[str], seed: int) -> BaselineConfig:
    d, tr = ctx.data, ctx.split.train
    h = d.height[tr][np.isfinite(d.height[tr])]
    train = {"steps": ctx.cfg.baseline.steps} if ctx.cfg.baseline.steps else {}
    extra = {"modality_dropout": 0.0} if len(modalities) == 1 else {}
    trained_on = {"cube": str(d.extra.get("cube", "")), "recipe_hash": d.extra.get("recipe_hash"),
                  "channel_names": {m: tuple(d.channels[m]) for m in modalities}, "normalisation": NORMALISATION,
                  "class_names": tuple(d.seg_classes), "grid": d.grid, "label": d.label, "target": d.target,
                  "units": d.units}
    return load_baseline_config(ctx.cfg.baseline.config, kind=kind, modalities=tuple(modalities),
                                channels=tuple(d.inputs[m].shape[1] for m in modalities), classes=len(d.seg_classes),
                                height_mean=float(h.mean()) if len(h) else 0.0,
                                height_std=float(h.std()) if len(h) and h.std() > 0 else 1.0, seed=seed,
                                train=train, trained_on=trained_on, **extra)


def train_baselines(ctx: Context) -> dict[tuple[str, int], BaselineModel]:
    """Late fusion, U-Net and one unimodal model per input modality, per seed (reused when finished)."""
    d = ctx.data
    arrays = batch_arrays(d.inputs, d.available, d.seg, d.composition, d.has_labels, d.height)
    jobs = [("late", "late", d.modalities), ("unet", "unet", d.modalities)]
    if len(d.modalities) > 1:
        jobs += [(f"unimodal {m}", "late", [m]) for m in d.modalities]
    models = {}
    t0 = time.perf_counter()
    for seed in ctx.seeds:
        for method, kind, mods in jobs:
            cfg = _baseline_cfg(ctx, kind, mods, seed)
            folder = ctx.runs / f"{method.replace(' ', '-')}-s{seed}-{_hash(cfg.what_is_trained())}"
            ctx.say(f"baseline {method} (seed {seed}): {folder.name}")
            models[(method, seed)] = train_baseline(folder, cfg, arrays, ctx.split.train, progress=ctx.progress)
    ctx.timings["baselines_s"] = round(time.perf_counter() - t0, 1)
    return models


def train_fusions(ctx: Context, cube: str | os.PathLike[str]) -> tuple[Path, dict[int, FusionModel]]:
    """One tokenizer per input modality (trained once), the token store, one fusion model per seed."""
    t0 = time.perf_counter()
    tok = ctx.cfg.tokenizer
    folders = []
    for m in ctx.data.modalities:
        folder = ctx.runs / "tokenizers" / f"{m}-{_hash([tok.config, tok.steps, tok.crop, _config_text(tok.config)])}"
        ctx.say(f"tokenizer {m}: {folder.name}")
        if not _done(folder):
            crop = {"crop": tok.crop} if tok.crop else {}
            train_tokenizer(cube, m, folder, config=tok.config, steps=tok.steps, progress=ctx.progress, **crop)
            _mark_done(folder)
        folders.append(folder)
    ctx.tokenizers = dict(zip(ctx.data.modalities, folders, strict=True))
    store = ctx.runs / f"tokens-{_hash([str(f) for f in folders])}.zarr"
    ctx.say(f"tokens: {store.name}")
    tokenize_cube(cube, folders, store, progress=ctx.progress)
    ctx.timings["tokenizers_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    fus = ctx.cfg.fusion
    models = {}
    for seed in ctx.seeds:
        folder = ctx.runs / f"fusion-s{seed}-{_hash([fus.config, fus.steps, _config_text(fus.config), store.name])}"
        ctx.say(f"fusion model (seed {seed}): {folder.name}")
        if not _done(folder):
            train_fusion(folder, tokens=store, config=fus.config, steps=fus.steps, progress=ctx.progress, seed=seed)
            _mark_done(folder)
        models[seed] = load_fusion(folder).eval()
    ctx.timings["fusion_s"] = round(time.perf_counter() - t0, 1)
    return store, models


DONE = "experiment-run-done"  #: written into a run folder once its training finished: a rerun only loads it


def _done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def _mark_done(folder: Path) -> None:
    (folder / DONE).write_text(dt.datetime.now(dt.UTC).isoformat() + "\n")


def _config_text(config: str) -> str:
    """A config file's text (so a changed file gives a new run), or the bundled name."""
    path = Path(config)
    return path.read_text() if path.is_file() else config


# -- evaluation ------------------------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Test rows and their truths."""

    idx: np.ndarray
    seg: np.ndarray
    comp: np.ndarray
    labelled: np.ndarray
    height: np.ndarray


def _rows(d: TaskData, idx: np.ndarray) -> Rows:
    return Rows(idx, d.seg[idx], d.composition[idx], d.has_labels[idx], d.height[idx])


def _evaluation(seg: np.ndarray | None, comp: np.ndarray, height: np.ndarray, r: Rows, classes: int) -> Evaluation:
    return Evaluation.of(seg, r.seg, comp, r.comp, r.labelled, height, r.height, classes)


@torch.no_grad()
def _baseline_eval(model: BaselineModel, d: TaskData, r: Rows, subset: Sequence[str]) -> Evaluation:
    inputs = {m: torch.from_numpy(d.inputs[m][r.idx]) for m in model.cfg.modalities}
    avail = {m: torch.from_numpy(d.available[m][r.idx] & (m in subset)) for m in model.cfg.modalities}
    out = model.eval()(inputs, avail)
    return _evaluation(out.seg.argmax(1).numpy(), torch.sigmoid(out.composition).numpy(), out.height.numpy(), r,
                       len(d.seg_classes))


def _subset_features(f: Features, idx: np.ndarray) -> Features:
    return Features(f.pooled[idx], f.grid[idx], f.has[idx])


def evaluate(ctx: Context, baselines: Mapping[tuple[str, int], BaselineModel], store: Path | None,
             fusions: Mapping[int, FusionModel]) -> dict[str, Any]:
    """Every method on every subset of the input modalities, per seed; the probes at every label fraction."""
    t0 = time.perf_counter()
    d, sp, cfg = ctx.data, ctx.split, ctx.cfg
    k = len(d.seg_classes)
    subs = subsets(d.modalities)
    test = sp.test[d.has_labels[sp.test] | np.isfinite(d.height[sp.test])]
    if not len(test):
        raise ConfigError("no test sample has a label or a target; use a cube (or split) whose test cells have them")
    rows = {name: _rows(d, test[np.any([d.available[m][test] for m in mods], axis=0)]) for name, mods in subs.items()}
    rows = {name: r for name, r in rows.items() if len(r.idx)}
    evals: dict[str, dict[str, list[Evaluation]]] = {}
    fractions: dict[str, dict[str, list[dict[str, float]]]] = {}

    def add(method: str, subset: str, e: Evaluation) -> None:
        evals.setdefault(method, {}).setdefault(subset, []).append(e)

    tr, va = sp.train, sp.val
    comp_nan = np.where(d.has_labels[:, None], d.composition, np.nan).astype(np.float32)
    probe_settings = ProbeSettings(lrs=cfg.probe.lrs, steps=cfg.probe.steps, warmup=cfg.probe.warmup)
    tokens = TokenDataset(store) if store is not None else None
    for seed in ctx.seeds:
        for (method, s), model in baselines.items():
            if s != seed:
                continue
            for name, r in rows.items():
                if method.startswith("unimodal") and tuple(subs[name]) != tuple(model.cfg.modalities):
                    continue  # a unimodal model is tested on its own modality
                add(method, name, _baseline_eval(model, d, r, subs[name]))
        extractors: dict[str, Callable[..., Features]] = {  # (modalities, rows=None): features of those rows
            "pixels linear": lambda mods, rows=None: pixel_features(d.inputs, d.available, mods, d.modalities,
                                                                    rows=rows)}
        if seed in fusions and tokens is not None:
            extractors["fusion linear"] = lambda mods, rows=None, model=fusions[seed]: fusion_features(
                model, tokens, mods, d.grid, rows=rows)
        for method, extract in extractors.items():
            full = extract(d.modalities)
            ctx.say(f"probes on {method.split()[0]} features (seed {seed})")
            probes = {}
            for frac in cfg.probe.fractions:
                sub = label_fraction(tr, frac, seed)
                p = fit_probe(_subset_features(full, sub), _subset_features(full, va),
                              seg=(d.seg[sub], d.seg[va]), composition=(comp_nan[sub], comp_nan[va]),
                              height=(d.height[sub], d.height[va]), classes=k,
                              settings=ProbeSettings(**{**probe_settings.__dict__, "seed": seed}))
                probes[frac] = p
                r = rows["all"]
                e = _evaluation(*p.predict(_subset_features(full, r.idx)), r, k)
                fractions.setdefault(method, {}).setdefault(f"{frac:g}", []).append(e.score())
            best = probes[max(cfg.probe.fractions)]
            for name, r in rows.items():
                f = _subset_features(full, r.idx) if name == "all" else extract(subs[name], r.idx)  # test rows only
                add(method, name, _evaluation(*best.predict(f), r, k))
            if method == "fusion linear":
                r = rows["all"]
                lab = tr[d.has_labels[tr]]
                hl = tr[np.isfinite(d.height[tr])]
                for kk in cfg.probe.knn:
                    comp = knn_predict(full.pooled[lab], d.composition[lab], full.pooled[r.idx], kk,
                                       cfg.probe.temperature)
                    h = knn_predict(full.pooled[hl], d.height[hl], full.pooled[r.idx], kk, cfg.probe.temperature)
                    add(f"fusion knn{kk}", "all", _evaluation(None, comp, h, r, k))
    # chance: the training split's majority class, label prevalence and mean target
    r = rows["all"]
    prevalence = d.composition[tr][d.has_labels[tr]].mean(0) if d.has_labels[tr].any() else np.zeros(k)
    major = int(np.bincount(d.seg[tr][d.seg[tr] >= 0].ravel(), minlength=k).argmax()) if (d.seg[tr] >= 0).any() else 0
    hmean = float(np.nanmean(d.height[tr])) if np.isfinite(d.height[tr]).any() else 0.0
    chance = _evaluation(np.full_like(r.seg, major), np.tile(prevalence, (len(r.idx), 1)),
                         np.full(len(r.idx), hmean), r, k).score()
    chance["miou_by_subset"] = {name: majority_miou(x.seg, d.seg[tr], k) for name, x in rows.items()}
    chance["miou_uniform_by_subset"] = {name: uniform_miou(x.seg, k) for name, x in rows.items()}
    ctx.timings["evaluation_s"] = round(time.perf_counter() - t0, 1)
    return {"evals": evals, "fractions": fractions, "chance": chance, "rows": {n: len(r.idx) for n, r in rows.items()},
            "positions": {n: np.searchsorted(rows["all"].idx, r.idx) for n, r in rows.items()},
            "subsets": {n: list(m) for n, m in subs.items()}}


def _differences(ctx: Context, evals: Mapping[str, Mapping[str, list[Evaluation]]]) -> list[dict[str, Any]]:
    """Paired bootstrap intervals of the differences the conclusions rest on."""
    pairs = [("fusion linear", "late", "all"), ("fusion linear", "unet", "all"), ("late", "unet", "all"),
             ("fusion linear", "pixels linear", "all")]
    pairs += [(a, f"unimodal {m}", f"only {m}") for m in ctx.data.modalities for a in ("fusion linear", "late")]
    out = []
    b = ctx.cfg.bootstrap
    for a, c, subset in pairs:
        if subset not in evals.get(a, {}) or subset not in evals.get(c, {}):
            continue
        for metric in ("miou", "rmse"):
            diff, lo, hi = difference(evals[a][subset], evals[c][subset], metric, resamples=b.resamples,
                                      level=b.level)
            if not np.isfinite(diff):
                continue
            better = (diff > 0) == HIGHER_IS_BETTER[metric]
            out.append({"a": a, "b": c, "subset": subset, "metric": metric, "difference": diff, "low": lo,
                        "high": hi, "significant": bool(lo > 0 or hi < 0), "a_better": bool(better)})
    return out


def _drop_helps(scores: Mapping[str, Mapping[str, Mapping[str, Any]]], modalities: Sequence[str]
                ) -> list[dict[str, Any]]:
    out = []
    for method, per in scores.items():
        for m in modalities:
            rest = [x for x in modalities if x != m]
            key = f"without {m}" if len(rest) > 1 else f"only {rest[0]}" if rest else ""
            if key not in per:
                continue
            for metric in ("miou", "mean_ap", "rmse"):
                a, w = per[key][metric].get("all_same_samples", np.nan), per[key][metric]["mean"]
                if np.isfinite(a) and np.isfinite(w) and ((w > a) if HIGHER_IS_BETTER[metric] else (w < a)):
                    out.append({"method": method, "dropped": m, "metric": metric, "all": a, "without": w})
    return out


# -- the command -----------------------------------------------------------------------------------------------------
def run_fusion_vs_late(cube: str | os.PathLike[str], out: str | os.PathLike[str], *,
                       config: str | os.PathLike[str] = "tiny", seeds: int = 3, split_unit: str | None = None,
                       command: str = "", progress: bool = False, say: Callable[[str], None] | None = None
                       ) -> dict[str, Any]:
    """Train what is missing, evaluate every method, and write ``results.json``, ``results.md`` and
    ``robustness.png`` into ``out``; returns the results.

    Args:
        cube: An eo-dataset cube holding the label modalities of the config's tasks.
        out: The experiment folder (new, empty, or this experiment's: finished runs are reused).
        config: An experiment config (bundled name or YAML path).
        seeds: Training seeds (0 .. seeds-1); the split is the same for every seed.
        split_unit: ``cell`` or ``quadrant`` (default: the config's).
        command: The command line, written into the outputs.
        progress: Show progress bars of the training runs.
        say: Called with a line at each stage (default: nothing).

    Raises:
        ConfigError: a bad config, a cube without the label modalities, too few cells for the split.
        OutputError: ``out`` is not a folder of this experiment.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: expected at least 1 (3 or more for mean +- std)")
    started = time.perf_counter()
    cfg = load_experiment_config(config, **({"split": {"unit": split_unit}} if split_unit else {}))
    out = Path(out)
    check_output(out, marker=MARKER, what=f"experiment folder of eo-models experiment {KIND}")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"experiment": KIND, "cube": os.fspath(cube)}, indent=1) + "\n")
    say = say or (lambda line: None)
    t = cfg.tasks
    t0 = time.perf_counter()
    data = load_tasks(cube, label=t.label, target=t.target, inputs=t.inputs, grid=t.grid, presence=t.presence)
    load_s = time.perf_counter() - t0
    split = split_samples(data.sample_ids, fractions=cfg.split.fractions, seed=cfg.split.seed, unit=cfg.split.unit)
    say(f"{len(data)} samples, inputs {data.modalities}; split by {split.unit}: {len(split.train)} train, "
        f"{len(split.val)} val, {len(split.test)} test samples")
    ctx = Context(cfg, data, split, out / "runs", list(range(seeds)), progress, say, {"load_s": round(load_s, 1)})
    baselines = train_baselines(ctx)
    store, fusions = train_fusions(ctx, cube)
    ev = evaluate(ctx, baselines, store, fusions)
    evals = ev["evals"]
    scores = {method: {subset: summary([e.score() for e in es]) for subset, es in per.items()}
              for method, per in evals.items()}
    for method, per in scores.items():  # all modalities on a subset's own test samples: its reference
        for subset, summ in per.items():
            if "all" in evals[method]:
                ref = summary([e.score(ev["positions"][subset]) for e in evals[method]["all"]])
                for metric in METRICS:
                    summ[metric]["all_same_samples"] = ref[metric]["mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class in no seed's truth or prediction: nan, as meant
        per_class = {method: dict(zip(data.seg_classes, np.nanmean([e.per_class_iou() for e in per["all"]],
                                                                   0).tolist(), strict=True))
                     for method, per in evals.items() if "all" in per and per["all"][0].conf is not None}
    fractions = {method: {f: summary(v) for f, v in per.items()} for method, per in ev["fractions"].items()}
    diffs = _differences(ctx, evals)
    results = {
        "experiment": KIND, "command": command, "git_revision": git_revision(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cube": os.fspath(cube),
        "samples": len(data), "inputs": data.modalities, "label": data.label, "target": data.target,
        "target_units": data.units, "classes": data.seg_classes, "grid": data.grid, "seeds": ctx.seeds,
        "config": cfg.to_dict(),
        "split": {"unit": split.unit, "seed": split.seed, "groups": split.groups,
                  "samples": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}},
        "test_rows": ev["rows"], "subsets": ev["subsets"], "chance": ev["chance"], "scores": scores,
        "per_class_iou": per_class, "label_fractions": fractions, "differences": diffs,
        "drop_helps": _drop_helps(scores, data.modalities), "metrics": list(METRICS),
        "timings_s": {**ctx.timings, "total_s": round(time.perf_counter() - started, 1)},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_markdown(results, out / "results.md")
    write_figure(results, out / "robustness.png")
    if fusions and len(data.modalities) > 1:
        target, sources = data.modalities[0], data.modalities[1:]
        drawn = generated_figure(fusions[ctx.seeds[0]], store, ctx.tokenizers[target], target, sources, split.test,
                                 out / "generated.png", stamp(results).replace("`", ""))
        results["generated_figure"] = {"target": target, "sources": list(sources),
                                       "samples": [str(data.sample_ids[i]) for i in drawn]}
        (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return results
