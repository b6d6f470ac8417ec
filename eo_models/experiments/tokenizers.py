"""The stage-1 experiment (``eo-models experiment tokenizers``): the VQ/FSQ x GAN/diffusion comparison
(:func:`eo_models.evaluation.compare.compare_tokenizers`) over several seeds and every image modality of a cube,
beside two non-learned references at the same bits per sample (:mod:`eo_models.evaluation.references`).

``out`` receives:

- ``<modality>/seed-<s>/``: one comparison folder per modality and seed (the four tokenizers, ``compare.md``,
  ``compare.json``, ``compare.png``); a finished one (its ``compare.json`` written) is reused, an unfinished one
  resumes from its checkpoints;
- ``<modality>/references.json``: the references' settings and metrics (reused while the budget and the evaluated
  samples are the same);
- ``results.json``: every number, per seed and as mean ± std over seeds, with the command, the git revision and the
  date; ``results.md``: the tables; ``<modality>.png``: input, each variant's (seed 0) and each reference's
  reconstruction and error maps.

Which modalities: those of the cube's schema whose kind is an image kind (continuous, categorical, multilabel), or
the ones asked for. The folder's marker is ``experiment.json`` (the settings, written first): ``out`` must be new,
empty or carry it (:func:`eo_dataset.outputs.check_output`); nothing is ever deleted.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eo_dataset.outputs import check_output
from eo_models.cube import check_cube, cube_meta, open_cube
from eo_models.errors import ConfigError
from eo_models.evaluation.compare import VARIANTS, compare_tokenizers, comparison_figure, label, machine
from eo_models.evaluation.evaluate import eval_batches, evaluate_reconstruction, load_tokenizer
from eo_models.evaluation.references import Reference, references, token_bits
from eo_models.experiments.fusion_vs_late import git_revision

MARKER = "experiment.json"  #: marks a folder written by this experiment
KIND = "tokenizers"
WHAT = "tokenizer experiment folder written by eo-models experiment tokenizers"
IMAGE_KINDS = ("continuous", "categorical", "multilabel")

#: The per-kind quality metrics (key in the metrics dict, column title), then the ones every row has.
QUALITY = {"continuous": [("psnr_mean", "PSNR (dB)"), ("ssim_mean", "SSIM"), ("mae_mean", "MAE")],
           "categorical": [("accuracy", "accuracy"), ("miou", "mIoU")],
           "multilabel": [("f1_mean", "F1"), ("accuracy_mean", "accuracy")]}
COMMON = [("bits_per_sample", "bits/sample"), ("codebook_usage", "codebook usage"), ("perplexity", "perplexity"),
          ("train_samples_per_s", "train samples/s"), ("train_cpu_ms_per_sample", "train CPU ms/sample"),
          ("decode_ms_per_sample", "decode ms/sample")]


@dataclass(frozen=True)
class TokenizersResult:
    """What :func:`run_tokenizers_experiment` wrote: ``results`` (the content of ``results.json``) and paths."""

    results: dict[str, Any]
    json_path: Path
    table_path: Path
    figures: tuple[Path, ...]


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` over the finite ``values``: the sample standard deviation (``ddof=1``), ``None``
    with fewer than two values; the mean ``None`` with none."""
    good = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(good) if good else None,
            "std": statistics.stdev(good) if len(good) > 1 else None, "n": len(good)}


def image_modalities(cube: str | os.PathLike[str], asked: Sequence[str] | None = None) -> list[str]:
    """The modalities of ``cube`` the experiment runs on: ``asked`` (checked), else every image modality."""
    with open_cube(cube) as ds:
        meta = cube_meta(ds, cube)
        kinds = {name: meta.modality(name).kind for name in meta.modalities}
    images = [m for m, k in kinds.items() if k in IMAGE_KINDS]
    if not asked:
        if not images:
            raise ConfigError(f"{cube} has no image modality (kinds {sorted(set(kinds.values()))}); the tokenizer "
                              "experiment needs continuous, categorical or multilabel ones")
        return images
    for m in asked:
        if m not in kinds:
            raise ConfigError(f"{cube} has no modality {m!r}; it has {sorted(kinds)}")
        if kinds[m] not in IMAGE_KINDS:
            raise ConfigError(f"modality {m} of {cube} is {kinds[m]}, not an image modality; choose among {images}")
    return list(dict.fromkeys(asked))


def _row(row: dict[str, Any]) -> dict[str, Any]:
    """One variant of one seed, flat: the numbers the tables report."""
    e = row["metrics"]
    flat = {"steps": row["steps"], "train_samples_per_s": row["train_samples_per_s"],
            "train_cpu_ms_per_sample": row.get("train_cpu_ms_per_sample"), "final_loss": row["final_loss"],
            "codebook_size": e["codebook_size"], "tokens_per_sample": e["tokens_per_sample"],
            "bits_per_sample": token_bits(e["tokens_per_sample"], e["codebook_size"])}
    for key in ("codebook_usage", "codes_used", "perplexity", "decode_ms_per_sample", "tokenize_ms_per_sample",
                "samples", "crop_px"):
        flat[key] = e.get(key)
    for key, _ in QUALITY[e["kind"]]:
        flat[key] = e.get(key)
    return flat


def _seed_rows(cube: str | os.PathLike[str], modality: str, folder: Path, seed: int, *, config: str, steps: int | None,
               device: str, progress: bool, limit: int | None, workers: int | None,
               overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison rows of one modality and seed: from its ``compare.json`` when finished with these steps,
    else by running (or resuming) the comparison."""
    done = folder / "compare.json"
    if done.exists():
        rows = json.loads(done.read_text())
        if (len(rows) == len(VARIANTS) and (steps is None or all(r["steps"] == steps for r in rows))
                and (limit is None or all(r["metrics"]["samples"] <= limit for r in rows))):
            return rows
    return list(compare_tokenizers(cube, modality, folder, config=config, steps=steps, device=device,
                                   progress=progress, limit=limit, workers=workers, seed=seed,
                                   **overrides).rows)


def _references(cube: str | os.PathLike[str], modality: str, frame: Path, budget: float, limit: int | None,
                batch_size: int) -> tuple[list[Reference], list[dict[str, Any]], dict[str, str]]:
    """The references of ``modality`` at ``budget`` bits, chosen and scored on the samples ``frame`` (a tokenizer
    folder) is evaluated on; their rows are cached in ``references.json`` beside the seeds."""
    tok = load_tokenizer(frame)
    m = tok.cfg.modality
    cache = frame.parent.parent / "references.json"
    key = {"budget": budget, "limit": limit, "crop": tok.cfg.train.crop}
    refs = None
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            refs = [Reference(r["name"], m, budget, r["bits"], r["params"]) for r in saved["rows"]]
            return refs, saved["rows"], saved["skipped"]
    refs, skipped = references(m, budget, eval_batches(tok, cube, batch_size, limit, workers=0))
    rows = []
    for ref in refs:
        metrics = evaluate_reconstruction(tok, cube, ref, batch_size=batch_size, limit=limit, workers=0)
        rows.append({"name": ref.name, "bits": ref.bits, "params": ref.params, "metrics": metrics})
    cache.write_text(json.dumps({"key": key, "rows": rows, "skipped": skipped}, indent=2) + "\n")
    return refs, rows, skipped


def _fmt(s: dict[str, Any]) -> str:
    mean, std = s["mean"], s["std"]
    if mean is None:
        return "n/a"
    text = f"{mean:.0f}" if abs(mean) >= 100 else f"{mean:.3g}"
    if std is None:
        return text
    return text + " ± " + (f"{std:.0f}" if abs(std) >= 100 else f"{std:.2g}")


def stamp(results: dict[str, Any]) -> str:
    """The line of ``results.md`` naming the command, the git revision and the date."""
    r = results
    return f"Made by `{r['command']}` at git revision `{r['git_revision']}` on {r['date']}."


def markdown(results: dict[str, Any]) -> str:
    """``results.md``: one table per modality (variants as mean ± std over seeds, then the references)."""
    r = results
    lines = [f"# Tokenizer experiment on {r['cube']}", "", stamp(r), "",
             f"{r['cube_samples']} samples in the cube; seeds {r['seeds']}; config {r['config']}, "
             f"{r['steps'] if r['steps'] is not None else 'the config' + chr(39) + 's'} training steps per variant; "
             f"machine: {r['machine']}.",
             "Learned variants: mean ± std (sample standard deviation) over seeds. References: deterministic, at "
             "most the learned tokenizers' bits per sample (the smallest of the four variants').", ""]
    for name, mod in r["modalities"].items():
        kind = mod["kind"]
        cols = QUALITY[kind] + COMMON
        lines += [f"## {name} ({kind})", "",
                  f"{mod['samples']} evaluation samples, centre crops of {mod['crop_px']} px; budget "
                  f"{mod['budget_bits']:.1f} bits per sample ({mod['tokens_per_sample']} tokens).", "",
                  "| method | " + " | ".join(title for _, title in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for variant, v in mod["variants"].items():
            lines.append(f"| {label(variant)} | " + " | ".join(_fmt(v["summary"][k]) for k, _ in cols) + " |")
        for ref in mod["references"]:
            vals = {**ref["metrics"], "bits_per_sample": ref["bits"]}
            cells = [_fmt(mean_std([vals.get(k)])) if k in vals else "–" for k, _ in cols]
            lines.append(f"| {ref['name']} ({_params(ref['params'])}) | " + " | ".join(cells) + " |")
        for ref in mod.get("skipped", {}):
            lines.append(f"| {ref} (n/a, see below) | " + " | ".join("–" for _ in cols) + " |")
        lines.append("")
        lines += [f"- {ref}: {why}" for ref, why in mod.get("skipped", {}).items()]
        lines += [""] if mod.get("skipped") else []
    lines += ["PSNR and SSIM: mean over bands in the head's units over valid pixels; MAE in physical units; "
              "bits/sample: tokens x log2(codebook size) for the tokenizers, the coded bits for the references; "
              "perplexity: exp of the entropy of the token histogram; train: wall-clock throughput and CPU time "
              "per training sample; decode: per sample (references: the whole encode + decode)."]
    return "\n".join(lines) + "\n"


def _params(p: dict[str, Any]) -> str:
    g = p["grid"]
    bits = f", {p['value_bits']} bits/value" if p.get("value_bits") and p["codec"] == "block_bicubic" else ""
    return f"{g} x {g} grid{bits}"


def run_tokenizers_experiment(cube: str | os.PathLike[str], out: str | os.PathLike[str], *, seeds: int = 3,
                              modalities: Sequence[str] | None = None, config: str = "tiny", steps: int | None = None,
                              device: str = "cpu", progress: bool = True, limit: int | None = None,
                              workers: int | None = None, figure_samples: int = 2, command: str | None = None,
                              **train_overrides: Any) -> TokenizersResult:
    """Run (or resume) the stage-1 experiment; see the module docstring for what lands in ``out``.

    Args:
        cube: An eo-dataset cube.
        out: Output folder.
        seeds: Seeds 0 .. seeds-1 (training seed of every variant).
        modalities: Which modalities (default: every image modality of the cube).
        config: Tokenizer config (file or bundled name), the same for every variant.
        steps: Optimiser steps per variant (default: the config's).
        device: torch device.
        progress: Show progress bars.
        limit: Evaluate at most this many samples per modality.
        workers: Data loader worker processes.
        figure_samples: Samples per figure (1 or 2).
        command: The command line to record (default: one rebuilt from the arguments).
        train_overrides: Other ``train`` values of every variant (``batch_size=4``, ``crop=32`` ...).

    Raises:
        OutputError: ``out`` is not new, empty or a folder of this experiment.
        NotACubeError: ``cube`` is not a cube.
        ConfigError: a bad modality, config, or a budget no reference fits.
    """
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, found {seeds}")
    check_output(out, what=WHAT, marker=MARKER)
    check_cube(cube)
    names = image_modalities(cube, modalities)
    with open_cube(cube) as ds:
        cube_samples = int(ds.sizes["sample"])
    if command is None:
        command = (f"eo-models experiment tokenizers --cube {cube} --seeds {seeds} --config {config} --out {out}"
                   + (f" --modalities {' '.join(names)}" if modalities else "")
                   + (f" --steps {steps}" if steps is not None else "")
                   + (f" --limit {limit}" if limit is not None else "")
                   + ("; train overrides: " + ", ".join(f"{k}={v}" for k, v in train_overrides.items())
                      if train_overrides else ""))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"experiment": KIND, "cube": str(cube), "seeds": list(range(seeds)), "modalities": names,
                "config": str(config), "steps": steps, "limit": limit, "train_overrides": train_overrides}
    (out / MARKER).write_text(json.dumps(settings, indent=2, default=str) + "\n")
    batch_size = int(train_overrides.get("batch_size", 8))

    results: dict[str, Any] = {
        "experiment": KIND, "command": command, "git_revision": git_revision(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cube": str(cube), "cube_samples": cube_samples,
        "seeds": list(range(seeds)), "config": str(config), "steps": steps, "device": device, "machine": machine(),
        "train_overrides": {k: str(v) for k, v in train_overrides.items()}, "modalities": {}}
    figures = []
    for m in names:
        per_seed = {}
        for s in range(seeds):
            rows = _seed_rows(cube, m, out / m / f"seed-{s}", s, config=config, steps=steps, device=device,
                              progress=progress, limit=limit, workers=workers, overrides=train_overrides)
            per_seed[s] = {r["variant"]: r for r in rows}
        first = per_seed[0]
        kind = first[VARIANTS[0]]["metrics"]["kind"]
        variants = {}
        for v in VARIANTS:
            flat = [_row(per_seed[s][v]) for s in range(seeds)]
            variants[v] = {"seeds": flat, "summary": {k: mean_std([f.get(k) for f in flat])
                                                      for k in flat[0] if not isinstance(flat[0][k], str)}}
        budget = min(token_bits(r["metrics"]["tokens_per_sample"], r["metrics"]["codebook_size"])
                     for r in first.values())
        frame = Path(first[VARIANTS[0]]["out"])
        refs, ref_rows, skipped = _references(cube, m, frame, budget, limit, batch_size)
        e0 = first[VARIANTS[0]]["metrics"]
        results["modalities"][m] = {"kind": kind, "samples": e0["samples"], "crop_px": e0["crop_px"],
                                    "tokens_per_sample": e0["tokens_per_sample"], "budget_bits": budget,
                                    "variants": variants, "references": ref_rows, "skipped": skipped}
        toks = {v: load_tokenizer(first[v]["out"]) for v in VARIANTS}
        fig = comparison_figure(toks, cube, out / f"{m}.png", samples=figure_samples, device=device,
                                references={r.name: r for r in refs},
                                title=f"{m}: input, seed-0 tokenizers, references at <= {budget:.0f} bits/sample "
                                      f"(top), errors (bottom)\ngit {results['git_revision']}, {results['date']}; "
                                      "the command: results.md")
        figures.append(fig)
        _write(results, out)  # after every modality: a long run shows what it has measured so far
    json_path, table_path = _write(results, out)
    return TokenizersResult(results, json_path, table_path, tuple(figures))


def _write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    json_path, table_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(results, indent=2, default=str, allow_nan=False) + "\n")
    table_path.write_text(markdown(results))
    return json_path, table_path
