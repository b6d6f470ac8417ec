"""The data-quality report of a cube as one self-contained HTML file (``eo-dataset report CUBE --html FILE``).

What it shows, all read from the cube and its build manifest:

- availability per modality, co-availability (how many samples hold both of two modalities) and the commonest
  combinations of modalities;
- per modality, the fraction of valid pixels of each available sample (``<m>_valid``), and for modalities whose
  collection declares a pixel quality mask (Sentinel-2's SCL, Landsat's QA bits ...) the fraction of the pixels
  holding data that the mask rejected (clouds, shadows ...): the cube records cloud cover per pixel, not per scene;
- the time gap of each modality to the anchor date (``<m>_time - anchor_time``);
- why data is missing (grouped by modality and reason, with counts and example sample ids);
- band statistics (the cube's ``stats`` attr: stored and physical units; class counts);
- build timings of every block (samples/s, CPU seconds, host and process).

Pictures are PNGs drawn with matplotlib (object API, Agg) and embedded as base64; the page has no script and no
external link. Needs matplotlib (``pip install 'eo-dataset[docs]'``). The HTML carries
``<meta name="generator" content="eo-dataset report ...">``: only a file with that mark is ever replaced.

From Python: ``write_report("demo.zarr", "report.html")``; the numbers alone: :func:`eo_dataset.view.quality.quality`.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
import os
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

from eo_dataset._version import __version__
from eo_dataset.cube.manifest import block_reports, read_manifest
from eo_dataset.cube.schema import CubeMeta
from eo_dataset.cube.storage import is_object_url, locate
from eo_dataset.cube.store import open_cube
from eo_dataset.errors import CubeError, OutputError
from eo_dataset.outputs import check_output_file
from eo_dataset.view.quality import BlockTiming, ModalityQuality, Quality, quality

GENERATOR = f"eo-dataset report {__version__}"  #: the page's ``<meta name="generator">``: marks a report of ours
WHAT = "data-quality report written by eo-dataset report"
MAX_BLOCK_ROWS = 200  #: above this many blocks, the table lists the slowest ones
FRACTION_BINS = np.linspace(0.0, 1.0, 21)
DPI = 80


# -- the pictures --------------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _histograms(values: dict[str, np.ndarray], xlabel: str, *, bins: np.ndarray | None = FRACTION_BINS,
                lines: dict[str, tuple[float, ...]] | None = None) -> str:
    """Small multiples: one histogram per modality (samples per bin), as base64 PNG.

    ``bins`` None: whole days over the values and the modality's ``lines`` (its tolerance), at most ~30 bins.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    lines = lines or {}
    cols = min(4, len(values))
    rows = math.ceil(len(values) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (m, v) in zip(axes, values.items(), strict=False):
        ax.set_title(f"{m} ({v.size} samples)", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if not v.size:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            continue
        edges = _day_bins(np.concatenate([v, lines.get(m, ())])) if bins is None else bins
        if bins is None:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.hist(v, bins=edges, color="#4c72b0", edgecolor="white", linewidth=0.5)
        ax.set_ylabel("samples", fontsize=8)
        for x in lines.get(m, ()):
            ax.axvline(x, color="#c44e52", linestyle="--", linewidth=1)
    for ax in axes[len(values):]:
        ax.set_axis_off()
    return _png(fig)


def _day_bins(v: np.ndarray) -> np.ndarray:
    """Bin edges centred on whole days (or on every ``k`` days, at most ~30 bins) spanning ``v``."""
    lo, hi = math.floor(float(v.min())), math.ceil(float(v.max()))
    if hi - lo < 10:  # a readable axis around a narrow spread
        lo, hi = (lo + hi) // 2 - 5, (lo + hi) // 2 + 5
    step = max(1, math.ceil((hi - lo + 1) / 30))
    return np.arange(lo - 0.5 * step, hi + step, step, dtype=np.float64)


def _timing_chart(blocks: list[BlockTiming]) -> str:
    """Samples/s and CPU seconds per block, coloured by host, as base64 PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.0), layout="constrained")
    rate_ax, cpu_ax = fig.subplots(1, 2)
    hosts = sorted({str(b.host) for b in blocks})
    for k, host in enumerate(hosts):
        mine = [b for b in blocks if str(b.host) == host]
        colour = f"C{k % 10}"
        rate_ax.scatter([b.index for b in mine], [b.samples_per_s or 0.0 for b in mine], s=14, color=colour,
                        label=host if k < 10 else None)
        cpu_ax.scatter([b.index for b in mine], [b.cpu_s or 0.0 for b in mine], s=14, color=colour)
    for ax, label in ((rate_ax, "samples/s (align + write)"), (cpu_ax, "CPU seconds")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("block", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
    rate_ax.legend(title="host", fontsize=7, title_fontsize=7)
    return _png(fig)


# -- the page ------------------------------------------------------------------------------------------------------
def render(q: Quality, *, seconds: float | None = None) -> str:
    """The report page of :func:`quality`'s numbers (draws its pictures; needs matplotlib).

    Args:
        q: The numbers.
        seconds: How long reading the cube took, shown in the page's footer.
    """
    import jinja2

    t0 = time.perf_counter()
    mods = list(q.modalities.values())
    pictures = {"valid": _histograms({m.name: m.valid_fraction for m in mods}, "valid fraction of the pixels")}
    masked = {m.name: m.masked_fraction for m in mods if m.masked_fraction is not None}
    if masked:
        pictures["masked"] = _histograms(masked, "masked fraction of the data pixels")
    dated = {m.name: m.gap_days for m in mods if m.gap_days is not None and not m.static}
    if dated:
        tol = {m.name: (-t, t) for m in mods if (t := (m.meta.rule or {}).get("tolerance_days")) is not None}
        pictures["gaps"] = _histograms(dated, "days after the anchor date", bins=None, lines=tol)
    timed = [b for b in q.blocks if b.seconds is not None]
    if timed:
        pictures["timing"] = _timing_chart(timed)
    shown = q.blocks
    if len(shown) > MAX_BLOCK_ROWS:
        shown = sorted(sorted(timed, key=lambda b: b.samples_per_s or 0.0)[:MAX_BLOCK_ROWS], key=lambda b: b.index)
    env = jinja2.Environment(loader=jinja2.PackageLoader("eo_dataset.view", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = lambda x, n: "" if not n else f"{100 * x / n:.1f}%"
    took = (seconds or 0.0) + time.perf_counter() - t0
    return env.get_template("report.html").render(
        q=q, mods=mods, pictures=pictures, shown_blocks=shown, generator=GENERATOR, made=_now(), seconds=took,
        hosts=_hosts(q.blocks), stats=q.meta.stats or {}, stat_rows=_stat_rows(q.meta), summary=_summary(mods),
        cpu_s=sum(b.cpu_s or 0.0 for b in q.blocks), workers=len({(b.host, b.pid) for b in q.blocks if b.host}))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(x: Any, digits: int = 3) -> str:
    """A number for a table cell: integers with thousands separators, floats to ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    return f"{float(x):.{digits}g}"


def _summary(mods: list[ModalityQuality]) -> dict[str, dict[str, Any]]:
    """Per modality: mean/median/min of the fractions and min/median/max of the gaps (None where empty)."""

    def stats(v: np.ndarray | None) -> dict[str, Any] | None:
        if v is None:
            return None
        if not v.size:
            return {"n": 0, "mean": None, "median": None, "min": None, "max": None, "below_half": 0}
        return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
                "max": float(v.max()), "below_half": int((v < 0.5).sum())}

    return {m.name: {"valid": stats(m.valid_fraction), "masked": stats(m.masked_fraction), "gap": stats(m.gap_days)}
            for m in mods}


def _stat_rows(meta: CubeMeta) -> dict[str, list[dict[str, Any]]]:
    """Per modality, one row per band: the cube's statistics in stored and physical units."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m, entry in (meta.stats or {}).items():
        mm = meta.modalities.get(m)
        scale, offset = (mm.scale, mm.offset) if mm is not None else (1.0, 0.0)
        rows = []
        for band, s in entry.get("bands", {}).items():
            phys = {k: (None if s.get(k) is None else s[k] * scale + offset) for k in ("mean", "min", "max")}
            std = None if s.get("std") is None else s["std"] * abs(scale)
            rows.append({"band": band, **{k: s.get(k) for k in ("count", "mean", "std", "min", "max")},
                         "p_mean": phys["mean"], "p_std": std, "p_min": phys["min"], "p_max": phys["max"]})
        out[m] = rows
    return out


def _hosts(blocks: list[BlockTiming]) -> list[dict[str, Any]]:
    """Per host: blocks, samples, wall and CPU seconds, samples/s."""
    acc: dict[str, dict[str, Any]] = {}
    for b in blocks:
        if b.host is None:
            continue
        h = acc.setdefault(b.host, {"host": b.host, "blocks": 0, "samples": 0, "seconds": 0.0, "cpu_s": 0.0,
                                    "pids": set()})
        h["blocks"] += 1
        h["samples"] += b.samples
        h["seconds"] += b.seconds or 0.0
        h["cpu_s"] += b.cpu_s or 0.0
        h["pids"].add(b.pid)
    for h in acc.values():
        h["rate"] = h["samples"] / h["seconds"] if h["seconds"] else None
        h["processes"] = len(h.pop("pids"))
    return sorted(acc.values(), key=lambda h: h["host"])


# -- the file ------------------------------------------------------------------------------------------------------
def check_report_output(path: str | os.PathLike[str], option: str = "--html") -> Path:
    """Check, before any work, that ``path`` may receive the report: a new ``.html`` file or one of our reports,
    and matplotlib is there to draw it.

    Raises:
        OutputError: not a ``.html`` name, a URL, an unwritable place, a folder, or a file that is not ours.
        CubeError: matplotlib is not installed.
    """
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"{option} {path}: expected a .html file name, e.g. {option} report.html")
    out = check_output_file(path, what=WHAT, is_ours=is_report_html, option=option)
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CubeError(f"'eo-dataset report --html' draws with matplotlib, which is not installed ({exc}); install "
                        "it with pip install 'eo-dataset[docs]'") from None
    return out


def write_report(cube: str | os.PathLike[str], out: str | os.PathLike[str], *, at: str | None = None,
                 **kwargs: Any) -> Path:
    """Write the data-quality report of ``cube`` to ``out`` (atomically: a crash leaves the old file or the new).

    Args:
        cube: A local path or URL of a cube built by eo-dataset (``s3://``, ``gs://``, ``az://``: a cube on object
            storage, read at one version).
        out: The ``.html`` file: new, or a report this function wrote (anything else is refused, untouched).
        at: The version of a cube on object storage (snapshot id, tag or branch; default the latest finished one).
        **kwargs: ``ds``, ``entries`` and ``manifest`` for :func:`quality`, when the caller has them already.

    Raises:
        OutputError: ``out`` cannot be written or is not ours.
        CubeError: not a cube, no such version (or ``at`` for a cube without versions), or matplotlib is missing.
    """
    out = check_report_output(out)
    t0 = time.perf_counter()
    remote = is_object_url(os.fspath(cube))
    if at is not None and not remote:
        raise CubeError(f"at={at!r} reads a version of a cube on object storage (s3://, gs://, az://); {cube} has "
                        "none: leave it out")
    if remote and "ds" not in kwargs:  # one version: its arrays and its manifest, read through the store
        where = locate(os.fspath(cube), at)
        kwargs |= {"ds": open_cube(where), "entries": block_reports(where), "manifest": read_manifest(where)}
    q = quality(cube, **kwargs)
    page = render(q, seconds=time.perf_counter() - t0)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # "x": a new file (never someone else's), the umask's mode
            f.write(page)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


class _Generator(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.generator: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "meta" and a.get("name") == "generator" and self.generator is None:
            self.generator = a.get("content") or ""


def is_report_html(path: str | os.PathLike[str]) -> bool:
    """True for an HTML file this module wrote: a ``<meta name="generator">`` saying ``eo-dataset report`` in its
    first 16 kB."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(16_384)
    except (OSError, UnicodeDecodeError):
        return False
    parser = _Generator()
    parser.feed(head)
    return (parser.generator or "").startswith("eo-dataset report")
