"""The experiment's ``results.md`` (tables) and ``robustness.png`` (bars), from ``results.json``'s content; both name
the command, the git revision and the date."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NAMES = {"miou": "mIoU", "f1": "F1", "mean_ap": "mAP", "rmse": "RMSE"}


def _pm(s: Mapping[str, Any], digits: int = 3) -> str:
    mean, std = s["mean"], s["std"]
    if not isinstance(mean, float | int) or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(s.get("seeds", [])) > 1 else f"{mean:.{digits}f}"


def stamp(r: Mapping[str, Any]) -> str:
    """The line naming the command, the git revision and the date."""
    return (f"Made by `{r['command'] or 'eo-models experiment ' + r['experiment']}` at git revision "
            f"`{r['git_revision']}` on {r['date']}.")


def markdown(r: Mapping[str, Any]) -> str:
    """The tables of ``results.md``."""
    seeds = len(r["seeds"])
    sp = r["split"]
    units = f" ({r['target_units']})" if r.get("target_units") else ""
    lines = [f"# fusion-vs-late on {r['cube']}", "", stamp(r), "",
             f"{r['samples']} samples; inputs {', '.join(r['inputs'])}; labels: `{r['label']}` (segmentation on a "
             f"{r['grid']} x {r['grid']} grid, composition), `{r['target']}` (mean per sample, RMSE{units}); split by "
             f"whole {sp['unit']}s (seed {sp['seed']}): {sp['samples']['train']} train, {sp['samples']['val']} val, "
             f"{sp['samples']['test']} test samples; {seeds} seed(s): mean ± std over seeds.", "",
             "## All modalities", "", "| method | mIoU | F1 | mAP | RMSE |", "|---|---|---|---|---|"]
    for method, per in r["scores"].items():
        if "all" in per:
            lines.append(f"| {method} | " + " | ".join(_pm(per["all"][m]) for m in NAMES) + " |")
    c = r["chance"]
    lines.append(f"| chance (majority class / prevalence / mean) | {c['miou']:.3f} | {c['f1']:.3f} | "
                 f"{c['mean_ap']:.3f} | {c['rmse']:.3f} |")
    lines += ["", "Unimodal models are tested on their own modality only (see the robustness table).", ""]
    if r["label_fractions"]:
        fr = list(next(iter(r["label_fractions"].values())))
        lines += ["## Label fractions (linear probes, all modalities)", "",
                  "| probe | metric | " + " | ".join(f"{float(f):.0%}" for f in fr) + " |",
                  "|---|---|" + "---|" * len(fr)]
        for method, per in r["label_fractions"].items():
            for m in ("miou", "mean_ap", "rmse"):
                lines.append(f"| {method} | {NAMES[m]} | " + " | ".join(_pm(per[f][m]) for f in fr) + " |")
        lines.append("")
    subsets = list(r["subsets"])
    lines += ["## Robustness: mIoU with each modality dropped and each alone", "",
              "Test samples of a subset: those with at least one of its modalities (the same for every method). In "
              "brackets: the relative change to the same model with all modalities on the same test samples.", "",
              "| method | " + " | ".join(subsets) + " |", "|---|" + "---|" * len(subsets)]
    for method, per in r["scores"].items():
        cells = []
        for s in subsets:
            if s not in per:
                cells.append("")
                continue
            v = per[s]["miou"]
            base = v.get("all_same_samples", float("nan"))
            rel = (v["mean"] - base) / base if base and not math.isnan(base) and s != "all" else None
            cells.append(_pm(v) + (f" ({rel:+.0%})" if rel is not None and not math.isnan(rel) else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Differences (paired bootstrap over test samples)", "",
              f"Seed-mean score of A minus B with its {r['config']['bootstrap']['level']:.0%} interval "
              f"({r['config']['bootstrap']['resamples']} resamples of the test samples, the same for both).", "",
              "| A | B | subset | metric | A − B | interval | A better, interval excludes 0 |",
              "|---|---|---|---|---|---|---|"]
    for d in r["differences"]:
        lines.append(f"| {d['a']} | {d['b']} | {d['subset']} | {NAMES[d['metric']]} | {d['difference']:+.3f} | "
                     f"[{d['low']:+.3f}, {d['high']:+.3f}] | {'yes' if d['a_better'] and d['significant'] else 'no'} |")
    lines += ["", "## Where dropping a modality helps", ""]
    if r["drop_helps"]:
        lines += ["| method | dropped | metric | all (same test samples) | without |", "|---|---|---|---|---|"]
        lines += [f"| {h['method']} | {h['dropped']} | {NAMES[h['metric']]} | {h['all']:.3f} | {h['without']:.3f} |"
                  for h in r["drop_helps"]]
    else:
        lines.append("Nowhere: every method scores best (mIoU, mAP, RMSE) with all modalities.")
    if r["per_class_iou"]:
        classes = r["classes"]
        lines += ["", "## IoU per class (all modalities, mean over seeds)", "",
                  "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for method, per in r["per_class_iou"].items():
            lines.append(f"| {method} | " + " | ".join("–" if v is None or math.isnan(v) else f"{v:.2f}"
                                                        for v in per.values()) + " |")
    t = r["timings_s"]
    lines += ["", "Wall time (s): " + ", ".join(f"{k.removesuffix('_s')} {v}" for k, v in t.items()), ""]
    return "\n".join(lines)


def write_markdown(r: Mapping[str, Any], path: Path) -> None:
    """Write :func:`markdown` to ``path``."""
    path.write_text(markdown(r))


def write_figure(r: Mapping[str, Any], path: Path) -> None:
    """Robustness bars: mIoU (mean ± std over seeds) of every method on every modality subset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    subsets = list(r["subsets"])
    methods = [m for m in r["scores"] if not m.startswith("unimodal") and any(s in r["scores"][m] for s in subsets)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(subsets) + 2), 3.6), dpi=110)
    width = 0.8 / max(1, len(methods) + 1)
    x = np.arange(len(subsets))
    for i, method in enumerate(methods):
        per = r["scores"][method]
        mean = [per[s]["miou"]["mean"] if s in per else np.nan for s in subsets]
        std = [per[s]["miou"]["std"] if s in per else 0 for s in subsets]
        ax.bar(x + i * width, mean, width, yerr=std, label=method, capsize=2)
    uni = [r["scores"].get(f"unimodal {s.removeprefix('only ')}", {}).get(s, {}).get("miou", {}).get("mean", np.nan)
           for s in subsets]
    if not np.all(np.isnan(uni)):
        ax.bar(x + len(methods) * width, uni, width, label="unimodal (own modality)", color="0.6")
    ax.axhline(r["chance"]["miou"], color="k", ls="--", lw=0.8, label="majority class")
    ax.set_xticks(x + width * len(methods) / 2, subsets, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test mIoU")
    ax.set_title(f"fusion-vs-late: {r['samples']} samples, {len(r['seeds'])} seed(s)", fontsize=9)
    ax.legend(fontsize=7, ncols=2)
    fig.text(0.01, 0.01, stamp(r).replace("`", ""), fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    plt.close(fig)
