"""The 2 x 2 comparison of tokenizer variants (``eo-models compare``): VQ / FSQ quantizers x GAN / diffusion decoders
trained on one modality with the same config and budget, evaluated the same way.

``out`` receives one tokenizer folder per variant (``fsq-gan/``, ``fsq-diffusion/``, ``vq-gan/``,
``vq-diffusion/``, each with its ``eval.json`` and ``train/throughput.json``), ``compare.md`` (the table),
``compare.json`` (its rows) and ``compare.png`` (input, the four reconstructions and their error maps for two
evaluation samples). A rerun resumes: finished variants are loaded from their checkpoints, not trained again, and
keep the throughput measured when they were trained.

The folder's marker (:data:`MARKER`) is the first variant's training log, ``fsq-gan/train/metrics.csv``, written as
soon as the comparison starts training: ``out`` must be new, empty, or carry it (a comparison to resume); any other
folder is refused and left untouched (:func:`eo_dataset.outputs.check_output`). A comparison never deletes files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eo_dataset.outputs import check_output
from eo_models.cube import check_cube, cube_meta, open_cube
from eo_models.evaluation.evaluate import eval_batches, evaluate_tokenizer, load_tokenizer, target_units
from eo_models.tokenizers.tokenizer import Tokenizer

QUANTIZERS = ("fsq", "vq")
DECODERS = ("gan", "diffusion")
VARIANTS = tuple(f"{q}-{d}" for q in QUANTIZERS for d in DECODERS)
MARKER = f"{VARIANTS[0]}/train/metrics.csv"  #: marks a comparison folder (the first variant's training log)
WHAT = "comparison folder written by eo-models compare"


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare_tokenizers` measured and wrote.

    ``rows``: one dict per variant (``variant``, ``quantizer``, ``decoder``, ``out``, ``steps``,
    ``train_samples_per_s``, ``train_cpu_ms_per_sample``, ``final_loss``, ``final_rec``, ``metrics``:
    :func:`evaluate_tokenizer`'s dict);
    ``table``: the markdown of ``compare.md`` without its title.
    """

    rows: tuple[dict[str, Any], ...]
    table: str
    table_path: Path
    figure_path: Path


def compare_tokenizers(cube: str | os.PathLike[str], modality: str, out: str | os.PathLike[str], *,
                       config: str | os.PathLike[str] = "tiny", steps: int | None = None, device: str = "cpu",
                       progress: bool = True, limit: int | None = None, figure_samples: int = 2,
                       workers: int | None = None, seed: int | None = None, **train_overrides: Any) -> CompareResult:
    """Train the four variants on ``modality`` of ``cube``, evaluate them, write the table and the figure.

    Args:
        cube: An eo-dataset cube (training and evaluation samples: this is a like-for-like comparison of variants,
            not a held-out benchmark).
        modality: Which of its modalities.
        out: Output folder (see the module docstring).
        config: A config file or a bundled one (``tiny``, ``base``); every variant uses it, only the quantizer and
            decoder types differ.
        steps: Optimiser steps per variant (default: the config's).
        device: torch device.
        progress: Show progress bars.
        limit: Evaluate at most this many samples.
        figure_samples: Samples shown in the figure (1 or 2).
        workers: Data loader worker processes (:func:`eo_models.training.tokenizer.loader_workers`).
        seed: The training seed of every variant (initial weights, sample order, crops; default: the config's
            ``train.seed``). A folder trained with another seed is not resumed: give each seed its own ``out``.
        train_overrides: Other ``train`` values for every variant (``batch_size=4``, ``crop=32`` ...).

    Raises:
        OutputError: ``out`` exists and is not a comparison folder, or cannot be written.
        NotACubeError: ``cube`` is not an eo-dataset cube.
        ConfigError: a bad config or a cube that cannot train this modality.
    """
    from eo_models.training.tokenizer import train_tokenizer

    check_output(out, what=WHAT, marker=MARKER)
    check_cube(cube)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if seed is not None:
        train_overrides = {"seed": seed, **train_overrides}
    rows, toks = [], {}
    for variant in VARIANTS:
        q, d = variant.split("-")
        cpu0 = time.process_time()
        r = train_tokenizer(cube, modality, out / variant, config=config, quantizer=q, decoder=d, steps=steps,
                            device=device, progress=progress, workers=workers, **train_overrides)
        cpu = time.process_time() - cpu0
        speed_file = r.out / "train" / "throughput.json"
        if r.trained:  # trained in this call
            speed = {"samples": r.samples, "seconds": r.seconds, "samples_per_s": r.samples_per_s,
                     "cpu_ms_per_sample": 1000 * cpu / r.samples, "loss": r.last.get("loss"),
                     "rec": r.last.get("rec")}
            speed_file.write_text(json.dumps(speed, indent=2) + "\n")
        elif speed_file.exists():  # already finished: this call only loaded the checkpoint
            speed = json.loads(speed_file.read_text())
        else:
            speed = _last_logged(r.out / "train" / "metrics.csv")
        tok = load_tokenizer(r.out)
        metrics = evaluate_tokenizer(tok, cube, device=device, limit=limit, workers=workers)
        (r.out / "eval.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        toks[variant] = tok
        rows.append({"variant": variant, "quantizer": q, "decoder": d, "out": str(r.out), "steps": r.steps,
                     "train_samples_per_s": speed.get("samples_per_s"),
                     "train_cpu_ms_per_sample": speed.get("cpu_ms_per_sample"), "final_loss": speed.get("loss"),
                     "final_rec": speed.get("rec"), "metrics": metrics})

    command = f"eo-models compare --cube {cube} --modality {modality} --config {config} --out {out}"
    command += f" --steps {steps}" if steps is not None else ""
    command += f" --device {device}" if device != "cpu" else ""
    command += f" --seed {seed}" if seed is not None else ""
    others = {k: v for k, v in train_overrides.items() if k != "seed" or seed is None}
    if others:
        command += "; train overrides: " + ", ".join(f"{k}={v}" for k, v in others.items())
    table = markdown_table(rows, command=command, device=device, cube=cube)
    table_path = out / "compare.md"
    table_path.write_text(f"# Tokenizer comparison: {modality}\n\n{table}\n")
    (out / "compare.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    figure_path = out / "compare.png"
    comparison_figure(toks, cube, figure_path, samples=figure_samples, device=device)
    return CompareResult(tuple(rows), table, table_path, figure_path)


def label(variant: str) -> str:
    """``fsq-gan`` -> ``FSQ + GAN``."""
    q, d = variant.split("-")
    return f"{q.upper()} + {'GAN' if d == 'gan' else d}"


def _last_logged(path: Path) -> dict[str, float]:
    """The last row of a training ``metrics.csv`` as floats (empty when there is none)."""
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else {}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def machine() -> str:
    """A one-line description of this machine for the table."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpus} CPU cores available ({platform.machine()}, {os.cpu_count()} on the host), torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads")


def markdown_table(rows: list[dict[str, Any]], *, command: str = "", device: str = "cpu",
                   cube: str | os.PathLike[str] = "") -> str:
    """The comparison table (markdown) of :func:`compare_tokenizers`' rows, with what produced it."""
    m = rows[0]["metrics"]
    kind = m["kind"]
    head = ["variant", "codes", "train samples/s", "train CPU ms/sample", "final loss (rec)"]
    if kind == "continuous":
        head += ["PSNR (dB)", "SSIM", "MAE"]
    elif kind == "categorical":
        head += ["accuracy", "mIoU"]
    else:
        head += ["F1", "accuracy"]
    head += ["codebook usage", "perplexity", "decode ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        e = row["metrics"]
        cells = [label(row["variant"]), str(e["codebook_size"]),
                 _fmt(row["train_samples_per_s"]), _fmt(row.get("train_cpu_ms_per_sample")),
                 f"{_fmt(row['final_loss'])} ({_fmt(row['final_rec'])})"]
        if kind == "continuous":
            cells += [_fmt(e["psnr_mean"]), _fmt(e["ssim_mean"]), _fmt(e["mae_mean"])]
        elif kind == "categorical":
            cells += [_fmt(e["accuracy"]), _fmt(e["miou"])]
        else:
            cells += [_fmt(e["f1_mean"]), _fmt(e["accuracy_mean"])]
        cells += [f"{_fmt(e['codebook_usage'])} ({e['codes_used']})", _fmt(e["perplexity"]),
                  _fmt(e["decode_ms_per_sample"])]
        lines.append("| " + " | ".join(cells) + " |")
    steps = sorted({r["steps"] for r in rows})
    notes = ["", f"- modality {m['modality']} ({kind}); {m['samples']} evaluation samples, centre crops of "
             f"{m['crop_px']} px, {m['tokens_per_sample']} tokens per sample; cube {cube}",
             f"- {'/'.join(map(str, steps))} training steps per variant; {command}",
             f"- machine: {machine()}; device {device}",
             "- train samples/s: training throughput (wall clock, data loading included) of the run that trained the "
             "variant; train CPU ms/sample: CPU time of this process (all its threads) per training sample, setup "
             "and saving included; final loss: total generator loss of the last "
             "step (rec: its reconstruction or denoising part)"]
    if kind == "continuous":
        notes.append(f"- PSNR and SSIM: mean over bands, in the head's units over valid pixels; MAE: mean over bands "
                     f"in physical units: {m['mae_units']}")
    if any(r["decoder"] == "diffusion" for r in rows):
        steps_ = {r["metrics"]["decode_steps"] for r in rows if r["decoder"] == "diffusion"}
        notes.append(f"- diffusion decoders sample with {'/'.join(map(str, sorted(steps_)))} DDIM steps")
    notes.append("- codebook usage: share of codes used on the evaluation samples (codes used); perplexity: exp of "
                 "the entropy of the token histogram")
    return "\n".join(lines + notes)


# -- figure ------------------------------------------------------------------------------------------------------
_PIXELS = {"interpolation": "nearest"}  # show pixels as they are (and keep the PNG small)


def _display(tok: Tokenizer, values: np.ndarray, valid: np.ndarray, stretch: tuple[float, float] | None,
             layer: int, rgb: list[int] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """One sample ``(C, H, W)`` in the head's units as an image and ``imshow`` keywords (``rgb``: the indices of the
    bands drawn as red, green, blue, from the modality's display spec; None: band 0)."""
    m = tok.cfg.modality
    if m.kind == "categorical":
        img = np.ma.masked_array(np.searchsorted(np.asarray(m.classes), values[0]), ~valid)
        return img, {"cmap": _class_cmap(len(m.classes)), "vmin": 0, "vmax": len(m.classes) - 1, **_PIXELS}
    if m.kind == "multilabel":
        return np.ma.masked_array(values[layer], ~valid), {"cmap": "gray", "vmin": 0, "vmax": 1, **_PIXELS}
    lo, hi = stretch or (0.0, 1.0)
    if rgb is not None:
        img = np.clip((values[rgb].transpose(1, 2, 0) - lo) / max(hi - lo, 1e-12), 0, 1)
        img[~valid] = 0.5
        return img, dict(_PIXELS)
    return np.ma.masked_array(values[0], ~valid), {"cmap": "viridis", "vmin": lo, "vmax": hi, **_PIXELS}


def _class_cmap(k: int) -> Any:
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    colors = colormaps["tab10" if k <= 10 else "tab20"].colors
    return ListedColormap([colors[i % len(colors)] for i in range(k)])


def comparison_figure(toks: dict[str, Tokenizer], cube: str | os.PathLike[str], path: str | os.PathLike[str], *,
                      samples: int = 2, device: str = "cpu",
                      references: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None,
                      title: str = "") -> Path:
    """A PNG per sample: the input, each variant's reconstruction, the valid mask and each variant's error map.

    ``references``: more reconstructions shown after the variants, titled by their key: callables that take the
    stored values ``(B, C, H, W)`` and the valid mask ``(B, H, W)`` and return what ``Tokenizer.reconstruct`` does
    (e.g. :class:`eo_models.evaluation.references.Reference`). ``title``: the figure's title (default: one naming
    the modality).

    Continuous modalities show the RGB composite of their display spec (the collection YAML's ``display.rgb``,
    stored in the cube; else band 0), with
    one stretch (2-98 % of the input) for input and reconstructions; the error is ``|prediction - target|``
    averaged over all bands in physical units, with one colour scale per sample. Land cover shows class maps and
    misclassified pixels; OSM the layer with the most features and its wrong pixels.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg
    from matplotlib.patches import Patch

    first = next(iter(toks.values()))
    m = first.cfg.modality
    with open_cube(cube, schema=False) as ds:
        display = cube_meta(ds, cube).modality(m.name).display
    rgb_bands = display.rgb if display is not None and display.rgb and set(display.rgb) <= set(m.bands) else None
    rgb_index = [m.bands.index(b) for b in rgb_bands] if rgb_bands else None
    x, valid = next(eval_batches(first, cube, max(1, samples), samples, workers=0))  # a batch or two: no workers
    dev = torch.device(device)
    target = target_units(first, x).numpy() if m.kind == "continuous" else x.numpy()
    if m.kind == "multilabel":
        target = (target > 0).astype(np.uint8)
    preds = {}
    for name, tok in toks.items():
        tok.to(dev).eval()
        with torch.no_grad():
            preds[label(name)] = tok.reconstruct(x.to(dev), valid.to(dev)).cpu().float().numpy()
    for name, reconstruct in (references or {}).items():
        preds[name] = reconstruct(x, valid).cpu().float().numpy()
    vmask = valid.numpy().astype(bool)
    factor = 1.0 if m.transform == "db" else abs(m.scale)

    n = len(x)
    cols = 1 + len(preds)
    fig = Figure(figsize=(1.5 * cols + 0.6, 1.6 * 2 * n + 0.3), layout="constrained")
    axes = fig.subplots(2 * n, cols, squeeze=False)
    for j in range(n):
        v = vmask[j]
        layer = 0
        if m.kind == "multilabel":  # the layer with the most features in the shown samples
            layer = int(np.argmax((target * vmask[:, None]).sum((0, 2, 3))))
        stretch, rgb = None, [0]
        if m.kind == "continuous":
            rgb = rgb_index or [0]
            vals = target[j][rgb][:, v]
            stretch = (float(np.percentile(vals, 2)), float(np.percentile(vals, 98))) if vals.size else (0.0, 1.0)
        img, kw = _display(first, target[j], v, stretch, layer, rgb_index)
        top, bottom = axes[2 * j], axes[2 * j + 1]
        top[0].imshow(img, **kw)
        what = {"continuous": "RGB" if len(rgb) == 3 else m.bands[0], "categorical": "classes",
                "multilabel": m.bands[layer]}[m.kind]
        top[0].set_title(f"input ({what})", fontsize=7)
        bottom[0].imshow(v, cmap="gray", vmin=0, vmax=1, **_PIXELS)
        bottom[0].set_title(f"valid mask ({v.mean():.0%})", fontsize=7)
        errors = {}
        for name, p in preds.items():
            if m.kind == "continuous":
                errors[name] = np.ma.masked_array(np.abs(p[j] - target[j]).mean(0) * factor, ~v)
            elif m.kind == "categorical":
                errors[name] = np.ma.masked_array((p[j][0] != target[j][0]).astype(float), ~v)
            else:
                errors[name] = np.ma.masked_array((p[j][layer] != target[j][layer]).astype(float), ~v)
        if m.kind == "continuous":
            stacked = np.concatenate([e.compressed() for e in errors.values()])
            emax = float(np.percentile(stacked, 99)) if stacked.size else 1.0
        else:
            emax = 1.0
        for k, (name, p) in enumerate(preds.items(), start=1):
            img, kw = _display(first, p[j], v, stretch, layer, rgb_index)
            top[k].imshow(img, **kw)
            top[k].set_title(name, fontsize=7)
            e = errors[name]
            if m.kind == "continuous":
                shown = bottom[k].imshow(e, cmap="magma", vmin=0, vmax=emax or 1.0, **_PIXELS)
                bottom[k].set_title(f"mean |err| {e.mean():.3g}", fontsize=7)
            else:
                bottom[k].imshow(e, cmap="gray", vmin=0, vmax=1, **_PIXELS)
                bottom[k].set_title(f"wrong (white): {e.mean():.1%}", fontsize=7)
        top[0].set_ylabel(f"sample {j + 1}", fontsize=7)
        if m.kind == "continuous":
            bar = fig.colorbar(shown, ax=list(bottom), fraction=0.03, pad=0.01)
            bar.ax.tick_params(labelsize=6)
            units = "dB" if m.transform == "db" else m.units.split(" (")[0]
            bar.set_label(f"|error|, band mean ({units})", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if m.kind == "categorical":
        cmap = _class_cmap(len(m.classes))
        names = m.class_names or tuple(str(c) for c in m.classes)
        fig.legend(handles=[Patch(color=cmap(i), label=nm) for i, nm in enumerate(names)], loc="outside lower center",
                   ncol=min(5, len(names)), fontsize=6, frameon=False)
    fig.suptitle(title or f"{m.name}: input, reconstructions (top) and errors (bottom) per variant", fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path
