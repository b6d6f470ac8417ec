"""Regenerate every figure, table, picture and quoted command output in the docs.

Usage, from the repository root, in an environment with the ``models`` and ``docs`` extras
(``pip install -e '.[models,docs]'``)::

    python docs/generate.py                 # outputs + quicklooks (about a minute on 2 cores)
    python docs/generate.py all             # also the tokenizer comparisons (20 min or more on 2 cores)
    python docs/generate.py outputs         # one target; several may be named
    python docs/generate.py plan info       # or single regions, by name (see --list)
    python docs/generate.py --list          # every target, region and picture

Targets:

- ``outputs``: the output of the commands the docs quote (``eo-dataset info``, ``plan``, ``cell``, the xarray view
  of the demo cube, a build manifest entry, captions with two seeds, recipe validation errors);
- ``quicklooks``: ``docs/modalities/img/*.png`` by ``docs/quicklooks.py`` on sample ``532U_89R_1_1``;
- ``tokenizers``: the VQ/FSQ x GAN/diffusion table and ``docs/img/tokenizers-compare.png`` by
  ``eo-models compare`` with ``OMP_NUM_THREADS=2``, and the same comparison with training seeds 1 and 2 and with one
  thread (``--runs``); four comparisons of several minutes each on an idle 2-core machine. On one machine and
  thread count the model metrics and the figure come out bit-identical run after run; the timings do not.
- ``browse``: ``docs/img/browse-*.png``, screenshots of ``eo-dataset browse`` by ``docs/screenshots.py`` (headless
  Chromium at /usr/bin/chromium, Playwright), and the time its pages take.
- ``experiments``: the tables, key figures and pictures of docs/experiments/fusion.md from a finished run of
  ``eo-models experiment fusion-vs-late`` (an hour or more on 2 cores; not rerun here): ``python docs/generate.py
  experiments --fusion DIR`` reads ``DIR/results.json`` (kept as docs/experiments/fusion-results.json, which
  tests/test_docs.py checks the page against), copies ``robustness.png`` and ``generated.png`` to
  ``docs/img/fusion-*.png``. Likewise ``--tokenizers DIR``, the folder of a finished ``eo-models experiment
  tokenizers`` run: its tables (mean ± std over seeds, per modality) into docs/experiments/tokenizers.md,
  ``DIR/results.json`` kept as docs/experiments/tokenizers-results.json, one reconstruction figure per modality
  (``DIR/<modality>.png``) copied to ``docs/img/tokenizers-exp-<modality>.png``. Give either or both; ``all``
  skips the target without them.

Every target except ``outputs``' recipe errors and ``cell``, and ``experiments``, needs the demo cube: by default a
fresh one is built with ``eo-dataset demo`` in a new scratch folder (``--work DIR`` picks the folder; ``--cube PATH``
reuses a cube made by ``eo-dataset demo``, whose folder also holds ``demo-world/``). Commands run in the cube's
folder, so paths print as in the docs, with ``COLUMNS=150`` (the width of the quoted tables).

In the markdown, what this script writes lies between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``;
each region ends with the line "made by `python docs/generate.py TARGET` on DATE". Edit the text around a region,
never inside it. ``tests/test_docs.py`` reruns the fast outputs on a demo cube and fails when the docs no longer
show what the code prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
COLUMNS = 150  # terminal width the commands run with (rich wraps its tables to it)
SAMPLE = "532U_89R_1_1"  # the sample the modality pages show
# the tokenizer comparison's runs, (training seed, torch threads): the first is the documented command, the table
# and the figure of the docs; the numbers depend on the thread count too (docs/tokenizers.md)
RUNS = ((0, 2), (1, 2), (2, 2), (0, 1))
COMPARE = "eo-models compare --cube demo.zarr --modality s2l2a --config tiny --out compare"
REGION = re.compile(r"<!-- generated: (?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- end generated -->", re.DOTALL)
MADE_BY = re.compile(r"made by `python docs/generate\.py (?P<target>[\w-]+)` on (?P<date>\d{4}-\d{2}-\d{2})")


# -- running the documented commands ------------------------------------------------------------------------------
def environment() -> dict[str, str]:
    """The environment of the documented commands: a fixed terminal width, no colours, no progress noise."""
    env = dict(os.environ, COLUMNS=str(COLUMNS), NO_COLOR="1", TERM="dumb")
    env.pop("FORCE_COLOR", None)
    return env


def executable(name: str) -> str:
    """``eo-dataset``/``eo-models``/``python`` of this environment (the one running this script)."""
    if name == "python":
        return sys.executable
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def run(command: str, cwd: Path, timeout: float = 3600, env: dict[str, str] | None = None) -> str:
    """Run a documented command line in ``cwd`` (with ``env`` added to :func:`environment`); its stdout, trailing
    spaces stripped.

    Raises:
        RuntimeError: the command failed (its stderr says why).
    """
    argv = shlex.split(command)
    argv[0] = executable(argv[0])
    p = subprocess.run(argv, cwd=cwd, env=environment() | (env or {}), capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"`{command}` in {cwd} exited with {p.returncode}:\n{p.stderr[-4000:]}")
    return _tidy(p.stdout)


def _tidy(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


# Runs documented command lines one after the other in one fresh interpreter: `eo-dataset ARGS` as the entry point
# does (eo_dataset.cli.main(ARGS)), `eo-models ARGS` likewise, `python -c CODE` as exec(CODE). One start-up for all.
_DRIVER = """
import contextlib, io, json, shlex, sys, traceback
results = {}
for command in json.load(sys.stdin):
    argv, out, err = shlex.split(command), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if argv[0] == "eo-dataset":
                from eo_dataset.cli import main
                rc = main(argv[1:])
            elif argv[0] == "eo-models":
                from eo_models.cli.main import main
                rc = main(argv[1:])
            elif argv[:2] == ["python", "-c"]:
                exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
                rc = 0
            else:
                raise ValueError(f"cannot run {command!r} here")
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception:
            rc, _ = 1, traceback.print_exc()
    results[command] = [rc or 0, out.getvalue(), err.getvalue()]
json.dump(results, sys.__stdout__)
"""


def run_many(commands: list[str], cwd: Path, timeout: float = 600) -> dict[str, str]:
    """Run documented command lines (``eo-dataset ...``, ``eo-models ...``, ``python -c ...``) in ``cwd``, in one
    new Python process, with the environment of :func:`run`; command -> stdout.

    Raises:
        RuntimeError: a command failed (its stderr says why).
    """
    p = subprocess.run([sys.executable, "-c", _DRIVER], cwd=cwd, env=environment(), input=json.dumps(commands),
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"running {commands} in {cwd} failed:\n{p.stderr[-4000:]}")
    results = json.loads(p.stdout)
    failed = {c: r for c, r in results.items() if r[0]}
    if failed:
        raise RuntimeError("\n".join(f"`{c}` in {cwd} exited with {rc}:\n{err[-4000:]}"
                                     for c, (rc, _, err) in failed.items()))
    return {c: _tidy(out) for c, (_, out, _) in results.items()}


@contextmanager
def cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# -- outputs: what a command or snippet prints, quoted in a doc ------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """One quoted output: region ``name`` of ``doc`` shows what ``make(work)`` returns.

    ``work`` is a folder holding ``demo.zarr`` and ``demo-world/`` as ``eo-dataset demo`` leaves them. ``normalise``
    blanks what legitimately differs between two runs (timings); numbers matched by a group of ``close`` may differ
    by the relative tolerance beside it (sizes that depend on the length of the path the cube was built from).
    """

    name: str
    doc: str
    what: str  # for the provenance line: what was run, and where
    make: Callable[[Path], str]
    lang: str = "text"
    normalise: Callable[[str], str] = lambda text: text
    close: tuple[tuple[str, float], ...] = ()
    needs_cube: bool = True
    fast: bool = True  # rerun by tests/test_docs.py
    cmd: str = ""  # the command line, when the output is a command's


    def drift(self, shown: str, actual: str) -> str | None:
        """None when ``actual`` (a rerun) matches ``shown`` (the doc), else what differs."""
        def split(text: str) -> tuple[str, list[float]]:
            numbers: list[float] = []
            text = self.normalise(text)
            for pattern, _ in self.close:
                def blank(m: re.Match) -> str:
                    numbers.append(float(m.group(1)))
                    return m.group(0)[:m.start(1) - m.start(0)] + "#" + m.group(0)[m.end(1) - m.start(0):]
                text = re.sub(pattern, blank, text)
            return text, numbers

        (a, xs), (b, ys) = split(shown), split(actual)
        if a != b:
            import difflib

            return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), "docs", "now", lineterm=""))
        tol = max((t for _, t in self.close), default=0.0)
        off = [(x, y) for x, y in zip(xs, ys, strict=True) if abs(x - y) > tol * max(abs(x), abs(y))]
        return f"numbers differ by more than {tol:.0%}: {off}" if off else None


def command_output(name: str, doc: str, cmd: str, **kw) -> Output:
    """The output of a documented command line, run in the folder of ``eo-dataset demo``."""
    where = " in the folder of `eo-dataset demo`" if kw.get("needs_cube", True) else ""
    return Output(name, doc, f"Output of `{cmd}`{where}", lambda work: run_many([cmd], work)[cmd], cmd=cmd, **kw)


def blank_cpu(text: str) -> str:
    """Plan: the measured CPU time differs from build to build, and the number of worker processes and blocks each
    ran with the scheduler (a LocalCluster for ``eo-dataset demo``, one process for an in-process build): every
    number from the first line that speaks of CPU time to the end becomes N."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if re.search(r"\bCPU\b", line)), len(lines))
    return "\n".join(lines[:first] + [re.sub(r"\d[\d,.]*", "N", line) for line in lines[first:]])


def manifest_entry(work: Path) -> str:
    """The ``missing`` part of the demo cube's third build block, for its first two samples."""
    entry = json.loads((work / "demo.zarr" / "_build" / "blocks" / "000002.json").read_text())
    first = dict(list(entry["missing"].items())[:2])
    lines = [f'{{"samples": {json.dumps(entry["samples"])}, "missing": {{']
    for i, (sid, per) in enumerate(first.items()):
        inner = (",\n" + " " * (len(sid) + 7)).join(f"{json.dumps(m)}: {json.dumps(why)}" for m, why in per.items())
        lines.append(f"  {json.dumps(sid)}: {{{inner}}}" + ("," if i < len(first) - 1 else "}, ...}"))
    return "\n".join(lines)


def captions(work: Path) -> str:
    """Captions of sample SAMPLE with seeds 0 and 1, computed as docs/modalities/captions.md shows."""
    import xarray as xr

    import eo_dataset
    from eo_dataset.cube.schema import CubeMeta
    from eo_dataset.engine.captions import TemplateCaptioner

    ds = xr.open_zarr(work / "demo.zarr")
    recipe = eo_dataset.parse_recipe(CubeMeta.from_attrs(ds.attrs).recipe)
    grid = eo_dataset.Grid(recipe.grid.spec())
    ids = [str(i) for i in ds.sample_id.values]
    s = ds.isel(sample=ids.index(SAMPLE)).load()
    arrays = {k: s[k].values for k in s.variables if "sample" in ds[k].dims}
    sample = grid.sample(SAMPLE)
    stored = str(s.caption.values)
    texts = [TemplateCaptioner(seed)(sample, arrays, recipe) for seed in (0, 1)]
    if texts[0] != stored:
        raise RuntimeError(f"the cube's caption of {SAMPLE} is not TemplateCaptioner(0)'s:\n{stored}\n{texts[0]}")
    keep = re.compile(r"(\d) (m)\b")  # wrap without parting a number from its unit (no-break space meanwhile)
    return "\n".join(textwrap.fill(keep.sub("\\1\u00a0\\2", t), width=114, initial_indent=f"seed {seed}: ",
                                   subsequent_indent=" " * 8).replace("\u00a0", " ")
                     for seed, t in enumerate(texts))


# recipe validation errors (docs/recipes.md): file name -> YAML
BAD_RECIPE = """\
name: bad
time: {anchor: s2, start: 2023-06-01, end: 2023-08-31}
sources:
  pc: {type: static_catalog, href: catalog.json}
modalities:
  s2:
    collection: sentinel-2-l2a
    source: pc
    resolution_m: 25
    bands: [B04, B99]
    rule: {type: least_cloudy, max_cloud_cover: 20}
  dem:
    collection: cop-dem-glo-30
    source: elsewhere
    resolution_m: 30
    rule: {type: nearest, tolerance_days: 7}
"""


BAD_DERIVED = """\
  ndvi:
    collection: ndvi
    resolution_m: 30
    derived: {expression: (s2.B08 - s2.B04) / (s2.B08 + s2.B04)}
"""


def _schema_errors() -> str:
    """catalogs/demo.yaml with grid.origin: snapped, no time section and a typo build.shards."""
    text = (REPO / "catalogs" / "demo.yaml").read_text()
    text = re.sub(r"\ntime:\n(  .*\n)+", "\n", text)
    text = text.replace("origin: exact", "origin: snapped").replace("build:\n", "build:\n  shards: 3\n", 1)
    return text


def _valid_one(changes: dict[str, str]) -> str:
    """BAD_RECIPE with its cross-check problems fixed, then ``changes`` (old -> new) applied."""
    text = (BAD_RECIPE.replace("resolution_m: 25", "resolution_m: 10").replace("[B04, B99]", "[B04]")
            .replace("source: elsewhere", "source: pc").replace("{type: nearest, tolerance_days: 7}", "{type: static}"))
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


RECIPES = {
    "recipe-errors": ("bad.yaml", lambda: BAD_RECIPE),
    "recipe-errors-schema": ("demo.yaml", _schema_errors),
    "recipe-errors-range": ("bad.yaml", lambda: _valid_one({"max_cloud_cover: 20": "max_cloud_cover: 150"})),
    "recipe-errors-collection": ("bad.yaml",
                                 lambda: _valid_one({"collection: sentinel-2-l2a": "collection: sentinel-2"})),
    "recipe-errors-derived": ("bad.yaml", lambda: _valid_one({}) + BAD_DERIVED),
}


def recipe_error(name: str) -> Callable[[Path], str]:
    def make(work: Path) -> str:
        from eo_dataset import RecipeError, load_recipe

        file, text = RECIPES[name]
        folder = work / "recipes" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / file).write_text(text())
        with cwd(folder):
            try:
                load_recipe(file)
            except RecipeError as exc:
                return str(exc).replace(str(REPO), "...").replace(str(Path.cwd()), ".")
        raise RuntimeError(f"{name}: the recipe was accepted")

    return make


def recipe_yaml(work: Path) -> str:
    return BAD_RECIPE.rstrip()


INFO = "eo-dataset info demo.zarr"
PLAN = "eo-dataset plan demo --region world --limit 9000000 --from-cube demo.zarr --shard-samples 128 --workers 200"
CELL = "eo-dataset cell -- -48.11 -25.32"
REPR = "python -c \"import xarray as xr; print(xr.open_zarr('demo.zarr'))\""

OUTPUTS = [
    command_output("info", "index.md", INFO, close=((r"(\d+\.\d) MB in", 0.01),)),
    command_output("cell", "grid.md", CELL, lang="json", needs_cube=False),
    command_output("plan", "planet.md", PLAN, normalise=blank_cpu, close=((r"(\d+\.\d) [KMGT]?B\b", 0.01),)),
    command_output("cube-repr", "cube.md", REPR),
    Output("manifest-entry", "cube.md", "`demo.zarr/_build/blocks/000002.json` of `eo-dataset demo`, shortened to "
           "the reasons of its first two samples", manifest_entry, lang="json"),
    Output("captions", "modalities/captions.md", f"Captions of `{SAMPLE}` of `eo-dataset demo` by "
           "`TemplateCaptioner(seed)`, as in [Your own captioner](#your-own-captioner-the-captioner-protocol)",
           captions),
    Output("fusion-configs", "fusion.md", "Output of `python benchmarks/fusion.py --params` in the repository",
           lambda work: run("python benchmarks/fusion.py --params", REPO), needs_cube=False),
    Output("recipe-errors-yaml", "recipes.md", "The recipe of the errors below", recipe_yaml, lang="yaml",
           needs_cube=False),
    *[Output(name, "recipes.md", f"The message of `eo_dataset.load_recipe({file!r})` for the recipe described above",
             recipe_error(name), needs_cube=False) for name, (file, _) in RECIPES.items()],
]


# -- regions ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A generated region: ``name`` in ``doc``, written by ``target``."""

    name: str
    doc: str
    target: str
    output: Output | None = None
    picture: str | None = None  # docs-relative path of the picture this region vouches for
    note: str = ""


def quicklook_modalities() -> list[str]:
    """Modalities of the demo recipe (each has a quicklook), in recipe order."""
    from eo_dataset import load_recipe

    return list(load_recipe("demo").modalities)


# quicklook pictures: page -> picture stems shown on it
QUICKLOOK_PAGES = {"modalities/s2.md": ["s2l2a"], "modalities/s1.md": ["s1rtc"], "modalities/landsat.md": ["landsat"],
                   "modalities/dem.md": ["dem"], "modalities/landcover.md": ["lulc"],
                   "modalities/canopy.md": ["canopy"], "modalities/osm.md": ["osm"],
                   "modalities/captions.md": ["caption"]}


def regions() -> list[Region]:
    """Every generated region of the docs."""
    out = [Region(o.name, o.doc, "outputs", output=o) for o in OUTPUTS]
    quicklook = (f"`python docs/quicklooks.py demo.zarr --sample {SAMPLE}` on the cube of `eo-dataset demo`")
    for page, stems in QUICKLOOK_PAGES.items():
        for stem in stems:
            out.append(Region(f"picture-{stem}", page, "quicklooks", picture=f"modalities/img/{stem}.png",
                              note=quicklook))
    out.append(Region("tokenizers-compare", "tokenizers.md", "tokenizers"))
    out.append(Region("picture-tokenizers-compare", "tokenizers.md", "tokenizers",
                      picture="img/tokenizers-compare.png", note=f"`{COMPARE}` on the cube of `eo-dataset demo`"))
    out.append(Region("tokenizers-seeds", "tokenizers.md", "tokenizers"))
    out.append(Region("fusion-results", FUSION_DOC, "experiments"))
    out.append(Region("fusion-summary", FUSION_DOC, "experiments"))
    for name, (_, picture) in FUSION_PICTURES.items():
        out.append(Region(name, FUSION_DOC, "experiments", picture=picture))
    out.append(Region("tokenizers-exp-results", TOKENIZERS_DOC, "experiments"))
    for m in tokenizers_modalities():
        out.append(Region(f"picture-tokenizers-exp-{m}", TOKENIZERS_DOC, "experiments",
                          picture=tokenizers_picture(m)))
    shots = "`python docs/screenshots.py demo.zarr --out docs/img` on the cube of `eo-dataset demo`"
    for stem in BROWSE_PICTURES:
        out.append(Region(f"picture-{stem}", "browse.md", "browse", picture=f"img/{stem}.png", note=shots))
    return out


def pictures() -> dict[str, str]:
    """Every picture this script makes (docs-relative path) -> its target."""
    made = {f"modalities/img/{m}.png": "quicklooks" for m in quicklook_modalities()}
    made["modalities/img/caption.png"] = "quicklooks"
    made["img/tokenizers-compare.png"] = "tokenizers"
    made |= {f"img/{stem}.png": "browse" for stem in BROWSE_PICTURES}
    made |= {picture: "experiments" for _, picture in FUSION_PICTURES.values()}
    made |= {tokenizers_picture(m): "experiments" for m in tokenizers_modalities()}
    return made


TARGETS = ("outputs", "quicklooks", "tokenizers", "browse", "experiments")
BROWSE_PICTURES = ("browse-overview", "browse-sample")  # docs/screenshots.py


def made_by(target: str, date: str | None = None) -> str:
    return f"made by `python docs/generate.py {target}` on {date or dt.date.today().isoformat()}"


def read_regions(doc: Path) -> dict[str, str]:
    """Region name -> body (text between the markers) of one markdown file."""
    return {m["name"]: m["body"] for m in REGION.finditer(doc.read_text())}


def write_region(doc: str, name: str, body: str) -> None:
    """Replace the body of region ``name`` in ``docs/<doc>``.

    Raises:
        KeyError: the doc has no such region (add the two marker lines where it belongs).
    """
    path = DOCS / doc
    text = path.read_text()
    found = [m for m in REGION.finditer(text) if m["name"] == name]
    if len(found) != 1:
        raise KeyError(f"{path} has {len(found)} regions named {name!r}; expected exactly one: put "
                       f"'<!-- generated: {name} -->' and '<!-- end generated -->' on lines of their own where it "
                       "belongs")
    m = found[0]
    path.write_text(text[:m.start("body")] + body.rstrip("\n") + "\n" + text[m.end("body"):])
    print(f"  {doc}: {name}")


def code_block(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text}\n```"


def fenced(body: str) -> str:
    """The (first) fenced code block of a region's body."""
    m = re.search(r"^```[\w-]*\n(.*?)\n```$", body, re.DOTALL | re.MULTILINE)
    if m is None:
        raise ValueError(f"no fenced code block in {body[:200]!r}")
    return m.group(1)


# -- the demo cube -------------------------------------------------------------------------------------------------
def demo_cube(work: Path) -> float:
    """``eo-dataset demo`` in ``work`` (a fresh cube); returns its wall time in seconds."""
    work.mkdir(parents=True, exist_ok=True)
    for old in ("demo.zarr", "demo-world"):
        shutil.rmtree(work / old, ignore_errors=True)
    print(f"eo-dataset demo in {work} ...", flush=True)
    t0 = time.perf_counter()
    run("eo-dataset demo", work)
    seconds = time.perf_counter() - t0
    print(f"  {seconds:.0f} s")
    return seconds


# -- targets ---------------------------------------------------------------------------------------------------------
def generate_outputs(work: Path, names: set[str] | None = None) -> None:
    print("outputs:")
    chosen = [o for o in OUTPUTS if names is None or o.name in names]
    ran = run_many([o.cmd for o in chosen if o.cmd], work)
    for o in chosen:
        text = ran[o.cmd] if o.cmd else o.make(work)
        write_region(o.doc, o.name, f"{code_block(text, o.lang)}\n\n*{o.what}; {made_by('outputs')}.*")


def generate_quicklooks(work: Path) -> None:
    print("quicklooks:")
    sys.path.insert(0, str(DOCS))
    try:
        import quicklooks
    finally:
        sys.path.remove(str(DOCS))
    quicklooks.main([str(work / "demo.zarr"), "--sample", SAMPLE, "--out", str(DOCS / "modalities" / "img")])
    for r in regions():
        if r.target == "quicklooks":
            write_region(r.doc, r.name, f"*Picture: {r.note}; {made_by('quicklooks')}.*")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def generate_tokenizers(work: Path, runs: tuple[tuple[int, int], ...] = RUNS) -> None:
    """``eo-models compare`` for each ``(seed, torch threads)`` of ``runs``; the first is the documented command (seed
    0), whose table and figure the docs show; all of them make the table of model metrics per seed and thread count."""
    print("tokenizers:")
    rows, seconds = {}, {}
    for i, (seed, threads) in enumerate(runs):
        out = "compare" if i == 0 else f"compare-seed{seed}-threads{threads}"
        shutil.rmtree(work / out, ignore_errors=True)  # never resume a comparison trained by older code
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        if i == 0:
            if seed != 0:
                raise ValueError(f"the first run is the documented command, seed 0 (found {seed})")
            run(COMPARE + " --quiet", work, env=env)
        else:
            run("python -c \"from eo_models.evaluation.compare import compare_tokenizers; "
                f"compare_tokenizers('demo.zarr', 's2l2a', '{out}', config='tiny', progress=False, seed={seed})\"",
                work, env=env)
        seconds[seed, threads] = time.perf_counter() - t0
        print(f"  seed {seed}, {threads} thread(s): {_minutes(seconds[seed, threads])}", flush=True)
        rows[seed, threads] = json.loads((work / out / "compare.json").read_text())
    threads = runs[0][1]
    table = (work / "compare" / "compare.md").read_text().split("\n", 2)[2].strip()
    shutil.copyfile(work / "compare" / "compare.png", DOCS / "img" / "tokenizers-compare.png")
    write_region("tokenizers.md", "tokenizers-compare",
                 f"{code_block(f'{COMPARE}   # {_minutes(seconds[runs[0]])} wall clock', 'bash')}\n\n{table}\n\n"
                 f"*The command above in the folder of `eo-dataset demo`, with `OMP_NUM_THREADS={threads}`; "
                 f"{made_by('tokenizers')}.*")
    write_region("tokenizers.md", "picture-tokenizers-compare",
                 f"*Picture: `compare/compare.png` of the command above; {made_by('tokenizers')}.*")
    if len(runs) == 1:  # --runs 0:THREADS: the table and the figure only; the other runs' table stays as it is
        return
    write_region("tokenizers.md", "tokenizers-seeds", seed_table(rows) + "\n\n"
                 f"*Mean PSNR, SSIM and codes used of each variant. The first column is the table above; the others "
                 f"are `compare_tokenizers('demo.zarr', 's2l2a', out, config='tiny', seed=SEED)` (the training seed: "
                 f"initial weights, crops, sample order) on the same cube with `OMP_NUM_THREADS=THREADS`; "
                 f"{made_by('tokenizers')}.*")


def generate_browse(work: Path) -> None:
    """Screenshots of ``eo-dataset browse`` on the demo cube (docs/screenshots.py), and its timings."""
    print("browse:")
    sys.path.insert(0, str(DOCS))
    try:
        import screenshots
    finally:
        sys.path.remove(str(DOCS))
    r = screenshots.main([str(work / "demo.zarr"), "--out", str(DOCS / "img")])
    took = {"picture-browse-overview": f"the overview drawn in {r['overview_page_s']:.1f} s, its query answered in "
                                       f"{r['overview_query_s'] * 1000:.0f} ms",
            "picture-browse-sample": f"sample {r['sample']}: rendered on the server in {r['sample_s']:.2f} s (median "
                                     f"of 8 samples, every modality, nothing cached), shown with its pictures in "
                                     f"{r['sample_page_s']:.1f} s"}
    for region in regions():
        if region.target == "browse":
            write_region(region.doc, region.name, f"*Picture: {region.note}, Chromium {r['chromium']}; "
                         f"{took[region.name]}; {made_by('browse')}.*")


def seed_table(rows: dict[tuple[int, int], list[dict]]) -> str:
    """Per variant (row) and run (column: seed, threads): mean PSNR, SSIM, codes used."""
    from eo_models.evaluation.compare import label

    runs = list(rows)
    head = ["variant"] + [f"seed {s}, {n} thread{'s' if n > 1 else ''}" for s, n in runs]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    by = {run: {r["variant"]: r["metrics"] for r in rows[run]} for run in runs}
    for variant in by[runs[0]]:
        cells = [label(variant)] + [f"{m['psnr_mean']:.1f} dB, {m['ssim_mean']:.3f}, {m['codes_used']} codes"
                                    for m in (by[run][variant] for run in runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- experiments: the tables and figures of `eo-models experiment fusion-vs-late`, from its results.json -----------
FUSION_DOC = "experiments/fusion.md"
FUSION_JSON = "experiments/fusion-results.json"  # the results.json the region shows, kept beside the page
FUSION_PICTURES = {"picture-fusion-robustness": ("robustness.png", "img/fusion-robustness.png"),
                   "picture-fusion-generated": ("generated.png", "img/fusion-generated.png")}


def _pm(s: dict, digits: int = 3) -> str:
    """``mean ± std (n seeds)`` of one metric's summary in results.json."""
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def fusion_results(r: dict, date: str) -> str:
    """The body of region ``fusion-results``: the command, its settings and wall time, then the tables of
    ``eo_models.experiments.report.markdown`` (headings one level down, without its title, stamp and timings)."""
    from eo_models.experiments.report import markdown, stamp

    c, t = r["config"], r["timings_s"]
    minutes = _minutes(t["total_s"])
    tok = c["tokenizer"]
    settings = (f"Settings: tokenizers `{tok['config']}` ({tok['steps'] or 'its'} steps, {tok['crop']} px crops); "
                f"fusion `{c['fusion']['config']}` "
                f"({c['fusion']['steps'] or 'its'} steps); baselines `{c['baseline']['config']}` "
                f"({c['baseline']['steps'] or 'its'} steps); linear probes {c['probe']['steps']} steps, learning rates "
                f"{', '.join(f'{x:g}' for x in c['probe']['lrs'])}; bootstrap {c['bootstrap']['resamples']} resamples. "
                "Wall time (s): " + ", ".join(f"{k.removesuffix('_s')} {v}" for k, v in t.items()) + ".")
    skip = {stamp(r)}
    tables = [("#" + line if line.startswith("## ") else line) for line in markdown(r).splitlines()
              if not line.startswith("# ") and line not in skip and not line.startswith("Wall time (s):")]
    body = "\n".join(tables).strip()
    return (f"{code_block(r['command'] + f'   # {minutes} wall clock', 'bash')}\n\n{settings}\n\n{body}\n\n"
            f"*`results.json` of the command above, at git revision `{r['git_revision']}` on {r['date']}; "
            f"{made_by('experiments', date)}.*")


def fusion_summary(r: dict, date: str) -> str:
    """The body of region ``fusion-summary``: the figures the reading of the results rests on, computed from
    ``results.json`` (ranking, paired bootstrap differences, the fusion probe against chance, drops that help)."""
    scores, chance, n = r["scores"], r["chance"], len(r["seeds"])
    names = {"miou": "mIoU", "mean_ap": "mAP", "rmse": "RMSE", "f1": "F1"}
    lines = [f"Test split: {r['test_rows']['all']} samples; {n} seed{'s' if n != 1 else ''} (mean ± std over seeds)."]
    for metric, best in (("miou", max), ("mean_ap", max), ("rmse", min)):
        ranked = sorted(((m, s["all"][metric]) for m, s in scores.items() if "all" in s
                         and s["all"][metric]["mean"] == s["all"][metric]["mean"]),
                        key=lambda x: x[1]["mean"], reverse=best is max)
        chance_name = {"miou": "majority class", "mean_ap": "training prevalence", "rmse": "training mean"}[metric]
        lines.append(f"- {names[metric]}, all modalities, best first: "
                     + ", ".join(f"{m} {_pm(s)}" for m, s in ranked) + f"; {chance_name} {chance[metric]:.3f}.")
    fl = scores.get("fusion linear", {}).get("all", {}).get("miou")
    if fl:
        above = sum(v > chance["miou"] for v in fl["seeds"])
        lines.append(f"- Fusion linear probe vs the majority class (mIoU {chance['miou']:.3f}): "
                     + ", ".join(f"{v:.3f}" for v in fl["seeds"]) + f" for seeds {', '.join(map(str, r['seeds']))}: "
                     f"above it in {above} of {n}; a class drawn uniformly at random per cell: "
                     f"{chance['miou_uniform_by_subset']['all']:.3f}.")
    for d in r["differences"]:
        if d["subset"] != "all":
            continue
        verdict = (f"{d['a'] if d['a_better'] else d['b']} better, the interval excludes 0" if d["significant"]
                   else "the interval includes 0")
        lines.append(f"- {d['a']} − {d['b']}, {names[d['metric']]}: {d['difference']:+.3f} "
                     f"[{d['low']:+.3f}, {d['high']:+.3f}] ({verdict}).")
    uni = [d for d in r["differences"] if d["subset"] != "all" and d["metric"] == "miou"]
    for a in dict.fromkeys(d["a"] for d in uni):
        mine = [d for d in uni if d["a"] == a]
        worse = [d["b"].removeprefix("unimodal ") for d in mine if d["significant"] and not d["a_better"]]
        better = [d["b"].removeprefix("unimodal ") for d in mine if d["significant"] and d["a_better"]]
        lines.append(f"- {a} given one modality vs the unimodal model trained on it (mIoU, {len(mine)} modalities): "
                     f"worse where the interval excludes 0 on {', '.join(worse) or 'none'}; better on "
                     f"{', '.join(better) or 'none'}.")
    helps = r["drop_helps"]
    if helps:
        per: dict[str, list[str]] = {}
        for h in helps:
            per.setdefault(h["method"], []).append(f"{h['dropped']} ({names[h['metric']]} {h['all']:.3f} → "
                                                    f"{h['without']:.3f})")
        lines.append(f"- Dropping a modality improves a score (mean over seeds, same test samples) in {len(helps)} "
                     "cases: " + "; ".join(f"{m}: {', '.join(v)}" for m, v in per.items()) + ".")
    else:
        lines.append("- Dropping a modality improves no method's mIoU, mAP or RMSE.")
    return "\n".join(lines) + (f"\n\n*Computed from `results.json` of the command above (git revision "
                               f"`{r['git_revision']}`, {r['date']}); {made_by('experiments', date)}.*")


def generate_experiments(fusion: Path | None = None, tokenizers: Path | None = None) -> None:
    """The experiments pages from the folders of finished runs: ``fusion`` (``eo-models experiment fusion-vs-late``,
    :func:`generate_fusion_experiment`) and/or ``tokenizers`` (``eo-models experiment tokenizers``,
    :func:`generate_tokenizers_experiment`); each one independent of the other."""
    print("experiments:")
    if fusion is not None:
        generate_fusion_experiment(fusion)
    if tokenizers is not None:
        generate_tokenizers_experiment(tokenizers)


def experiment_results(folder: Path, option: str, kind: str) -> tuple[Path, dict]:
    """``folder/results.json`` of a finished ``eo-models experiment KIND`` run, and what it holds.

    Raises:
        FileNotFoundError: there is no results.json.
        ValueError: it is another experiment's.
    """
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{option} {folder}: no results.json; expected the --out folder of a finished "
                                f"`eo-models experiment {kind}` run")
    r = json.loads(path.read_text())
    if r.get("experiment") != kind:
        raise ValueError(f"{path}: experiment {r.get('experiment')!r}; expected {kind!r}")
    return path, r


def generate_fusion_experiment(fusion: Path) -> None:
    """The region ``fusion-results`` and ``fusion-summary`` of docs/experiments/fusion.md and its two pictures, from
    the folder of a finished ``eo-models experiment fusion-vs-late`` run (its results.json, robustness.png,
    generated.png); results.json is kept as docs/experiments/fusion-results.json (tests/test_docs.py checks the
    regions against it)."""
    path, r = experiment_results(fusion, "--fusion", "fusion-vs-late")
    date = dt.date.today().isoformat()
    shutil.copyfile(path, DOCS / FUSION_JSON)
    write_region(FUSION_DOC, "fusion-results", fusion_results(r, date))
    write_region(FUSION_DOC, "fusion-summary", fusion_summary(r, date))
    for name, (src, dest) in FUSION_PICTURES.items():
        if not (fusion / src).is_file():
            raise FileNotFoundError(f"{fusion / src}: missing; rerun the experiment's command to draw it")
        shutil.copyfile(fusion / src, DOCS / dest)
        write_region(FUSION_DOC, name, f"*Picture: `{src}` of the command above; {made_by('experiments', date)}.*")


TOKENIZERS_DOC = "experiments/tokenizers.md"
TOKENIZERS_JSON = "experiments/tokenizers-results.json"  # the results.json the page shows, kept beside it
# one reconstruction figure per modality: its image line and the region vouching for it, as the page holds them
TOKENIZERS_PICTURE = re.compile(r"!\[[^\]\n]*\]\(\.\./img/tokenizers-exp-[\w.-]+\.png\)\n"
                                r"<!-- generated: picture-tokenizers-exp-[\w.-]+ -->\n.*?<!-- end generated -->\n",
                                re.DOTALL)


def tokenizers_modalities() -> list[str]:
    """The modalities of the tokenizer experiment the docs show: those of docs/experiments/tokenizers-results.json,
    in its order (none before the first ``experiments --tokenizers DIR``)."""
    path = DOCS / TOKENIZERS_JSON
    return list(json.loads(path.read_text())["modalities"]) if path.is_file() else []


def tokenizers_picture(modality: str) -> str:
    """The docs-relative path of the tokenizer experiment's reconstruction figure of ``modality``."""
    return f"img/tokenizers-exp-{modality}.png"


def tokenizers_results(r: dict, date: str) -> str:
    """The body of region ``tokenizers-exp-results``: the command, its settings, then the tables of
    ``eo_models.experiments.tokenizers.markdown`` (headings one level down, without its title and stamp), and the
    reading of the stamp (git revision and date of the run)."""
    from eo_models.experiments.tokenizers import markdown, stamp

    overrides = ", ".join(f"{k} {v}" for k, v in r["train_overrides"].items()) or "none"
    settings = (f"Settings: cube `{r['cube']}`; device {r['device']}; training values of every variant set by the "
                f"command: {overrides}.")
    skip = {stamp(r)}
    tables = [("#" + line if line.startswith("## ") else line) for line in markdown(r).splitlines()
              if not line.startswith("# ") and line not in skip]
    body = "\n".join(tables).strip()
    return (f"{code_block(r['command'], 'bash')}\n\n{settings}\n\n{body}\n\n"
            f"*`results.json` of the command above, at git revision `{r['git_revision']}` on {r['date']}; "
            f"{made_by('experiments', date)}.*")


def tokenizers_picture_block(modality: str, date: str) -> str:
    """The figure of ``modality`` as the page shows it: its image line, then the region vouching for it."""
    return (f"![{modality}: the input, the seed-0 tokenizers' and the references' reconstructions, their errors]"
            f"(../{tokenizers_picture(modality)})\n<!-- generated: picture-tokenizers-exp-{modality} -->\n"
            f"*Picture: `{modality}.png` of the command above (top: the input, each variant's seed-0 tokenizer and "
            f"each reference; bottom: the errors); {made_by('experiments', date)}.*\n<!-- end generated -->\n")


def with_tokenizers_pictures(text: str, modalities: list[str], date: str) -> str:
    """``text`` (docs/experiments/tokenizers.md) with its reconstruction figures (consecutive image lines, each with
    its region, separated by blank lines only) replaced by those of ``modalities``.

    Raises:
        KeyError: the page has no such figure (put one where the figures belong).
        ValueError: other text lies between two figures (it would be lost).
    """
    found = list(TOKENIZERS_PICTURE.finditer(text))
    if not found:
        raise KeyError(f"docs/{TOKENIZERS_DOC} has no figure of the tokenizer experiment; expected '![...](../img/"
                       "tokenizers-exp-M.png)', '<!-- generated: picture-tokenizers-exp-M -->' and '<!-- end "
                       "generated -->' on lines of their own (any modality M) where the figures belong")
    start, end = found[0].start(), found[-1].end()
    between = TOKENIZERS_PICTURE.sub("", text[start:end]).strip()
    if between:
        raise ValueError(f"docs/{TOKENIZERS_DOC}: text between the tokenizer experiment's figures ({between[:80]!r}); "
                         "expected blank lines only: move it above or below the figures")
    return text[:start] + "\n".join(tokenizers_picture_block(m, date) for m in modalities) + text[end:]


def generate_tokenizers_experiment(folder: Path) -> None:
    """The region ``tokenizers-exp-results`` of docs/experiments/tokenizers.md and one reconstruction figure per
    modality, from the folder of a finished ``eo-models experiment tokenizers`` run (its results.json and
    ``<modality>.png``); results.json is kept as docs/experiments/tokenizers-results.json (tests/test_docs.py checks
    the page against it). Everything is checked before anything is written."""
    path, r = experiment_results(folder, "--tokenizers", "tokenizers")
    modalities = list(r["modalities"])
    odd = [m for m in modalities if not re.fullmatch(r"[\w.-]+", m)]
    if odd:
        raise ValueError(f"{path}: modality names {odd} cannot name a picture; expected letters, digits, _ . -")
    missing = [str(folder / f"{m}.png") for m in modalities if not (folder / f"{m}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: missing; rerun the experiment's command to draw them")
    date = dt.date.today().isoformat()
    page = DOCS / TOKENIZERS_DOC
    with_tokenizers_pictures(page.read_text(), modalities, date)  # the figures' place is there: fail before writing
    write_region(TOKENIZERS_DOC, "tokenizers-exp-results", tokenizers_results(r, date))
    page.write_text(with_tokenizers_pictures(page.read_text(), modalities, date))
    print(f"  {TOKENIZERS_DOC}: " + ", ".join(f"picture-tokenizers-exp-{m}" for m in modalities))
    for old in (DOCS / "img").glob("tokenizers-exp-*.png"):  # figures of modalities this run does not have
        if old.stem.removeprefix("tokenizers-exp-") not in modalities:
            old.unlink()
            print(f"  removed docs/img/{old.name}")
    for m in modalities:
        shutil.copyfile(folder / f"{m}.png", DOCS / tokenizers_picture(m))
    shutil.copyfile(path, DOCS / TOKENIZERS_JSON)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", help=f"targets ({', '.join(TARGETS)}, all; default: outputs quicklooks) "
                        "or region names of the outputs target")
    parser.add_argument("--work", type=Path, help="scratch folder for the demo cube and the comparison "
                        "(default: a new folder under the system's temporary directory)")
    parser.add_argument("--cube", type=Path, help="reuse this cube made by `eo-dataset demo` (its folder also holds "
                        "demo-world/) instead of building one")
    parser.add_argument("--runs", default=",".join(f"{s}:{n}" for s, n in RUNS),
                        help="SEED:THREADS of each run of the tokenizer comparison (default %(default)s; the first, "
                        "seed 0, makes the table and the figure; one run leaves the table of all runs alone)")
    parser.add_argument("--fusion", type=Path, metavar="DIR", help="experiments: the --out folder of a finished "
                        "`eo-models experiment fusion-vs-late` run (its results.json, robustness.png, generated.png)")
    parser.add_argument("--tokenizers", type=Path, metavar="DIR", help="experiments: the --out folder of a finished "
                        "`eo-models experiment tokenizers` run (its results.json, <modality>.png)")
    parser.add_argument("--list", action="store_true", help="list targets, regions and pictures, then exit")
    args = parser.parse_args(argv)

    if args.list:
        for r in regions():
            print(f"{r.target:11s} {r.doc}: {r.name}" + (f" ({r.picture})" if r.picture else ""))
        return
    what = set(args.what or ["outputs", "quicklooks"])
    if "all" in what:
        what = (what - {"all"}) | set(TARGETS)
        if args.fusion is None and args.tokenizers is None:  # an experiment takes an hour or more: `all` shows
            what.discard("experiments")                        # finished ones only
            print("experiments: skipped (no --fusion DIR or --tokenizers DIR: the folder of a finished `eo-models "
                  "experiment fusion-vs-late` or `eo-models experiment tokenizers` run)")
    if "experiments" in what and args.fusion is None and args.tokenizers is None:
        parser.error("experiments: expected --fusion DIR, the --out folder of a finished `eo-models experiment "
                     "fusion-vs-late` run (see docs/experiments/fusion.md), and/or --tokenizers DIR, that of a "
                     "finished `eo-models experiment tokenizers` run (see docs/experiments/tokenizers.md)")
    for option, folder, experiment in (("--fusion", args.fusion, "fusion-vs-late"),
                                       ("--tokenizers", args.tokenizers, "tokenizers")):
        if "experiments" not in what or folder is None:
            continue
        if not (folder / "results.json").is_file():
            parser.error(f"{option} {folder}: no results.json; expected the --out folder of a finished `eo-models "
                         f"experiment {experiment}` run")
        found = json.loads((folder / "results.json").read_text()).get("experiment")
        if found != experiment:
            parser.error(f"{option} {folder}: results.json of experiment {found!r}; expected the --out folder of a "
                         f"finished `eo-models experiment {experiment}` run")
    names = {o.name for o in OUTPUTS}
    unknown = what - set(TARGETS) - names
    if unknown:
        parser.error(f"unknown targets or regions {sorted(unknown)}; see --list")
    singles = what & names
    needs_cube = bool(what & {"quicklooks", "tokenizers", "browse"}) or any(
        o.needs_cube for o in OUTPUTS if "outputs" in what or o.name in singles)

    if args.cube:
        cube = args.cube.resolve()
        if cube.name != "demo.zarr" or not (cube.parent / "demo-world").is_dir():
            parser.error(f"--cube {args.cube}: expected a demo.zarr made by `eo-dataset demo` beside its demo-world/")
        work = cube.parent
    else:
        work = (args.work or Path(tempfile.mkdtemp(prefix="eo-docs-"))).resolve()
        if needs_cube:
            demo_cube(work)
        else:
            work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if "outputs" in what or singles:
        generate_outputs(work, None if "outputs" in what else singles)
    if "quicklooks" in what:
        generate_quicklooks(work)
    if "browse" in what:
        generate_browse(work)
    if "experiments" in what:
        generate_experiments(args.fusion and args.fusion.resolve(), args.tokenizers and args.tokenizers.resolve())
    if "tokenizers" in what:
        generate_tokenizers(work, tuple(tuple(map(int, r.split(":"))) for r in args.runs.split(",")))
    print(f"done in {_minutes(time.perf_counter() - t0)} (scratch folder: {work})")


if __name__ == "__main__":
    main()
