"""The docs show what the code does: quoted outputs rerun on the demo cube, documented command lines parse, every
picture and generated region comes from docs/generate.py and says which command made it, and when.

When a test here fails because the code changed on purpose, regenerate: ``python docs/generate.py`` (see its
docstring); ``python docs/generate.py NAME`` for one region.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
CLI_PAGES = ("README.md", "docs/index.md")  # their commands also run on the demo cube
RUN_ON_CUBE = {"info", "cell", "report", "plan", "show"}  # fast eo-dataset commands; others only parsed


def _load_generate():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generate = _load_generate()


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, demo_cube: Path, world: Path) -> Path:
    """A folder laid out as ``eo-dataset demo`` leaves it: demo.zarr (the session's demo cube) and demo-world/."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "demo.zarr").symlink_to(demo_cube, target_is_directory=True)
    (folder / "demo-world").symlink_to(world.parent, target_is_directory=True)
    return folder


def cube_examples() -> list[tuple[str, str]]:
    """``(command, comment)`` of the info/cell/report/plan and ``python -c`` examples of README.md and docs/index.md."""
    commands = []
    for page in CLI_PAGES:
        for argv, comment in documented_commands(REPO / page):
            if argv[0] == "eo-dataset" and len(argv) > 1 and argv[1] in RUN_ON_CUBE:
                commands.append((shlex.join(argv), comment))
        text = (REPO / page).read_text()
        commands += [(m.group(1), "") for m in re.finditer(r"^(?:\.venv/bin/)?(python -c \"[^\"]*\")", text, re.M)]
    return commands


@pytest.fixture(scope="module")
def ran(sandbox: Path) -> dict[str, str]:
    """Every command this module checks, run once in the sandbox (one process for all: start-up costs seconds)."""
    commands = [o.cmd for o in generate.OUTPUTS if o.cmd] + [c for c, _ in cube_examples()]
    return generate.run_many(list(dict.fromkeys(commands)), sandbox)


# -- quoted outputs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output", [o for o in generate.OUTPUTS if o.fast], ids=lambda o: o.name)
def test_quoted_output_matches_the_code(output, sandbox: Path, ran: dict[str, str]) -> None:
    body = generate.read_regions(DOCS / output.doc)[output.name]
    shown = generate.fenced(body)
    actual = ran[output.cmd] if output.cmd else output.make(sandbox)
    problem = output.drift(shown, actual)
    assert problem is None, (f"docs/{output.doc}, region {output.name!r} no longer shows what the code prints; "
                             f"rerun `python docs/generate.py {output.name}` (or `outputs`):\n{problem}")


# -- documented command lines --------------------------------------------------------------------------------------
def documented_commands(path: Path) -> list[tuple[list[str], str]]:
    """``(argv, comment)`` of every eo-dataset / eo-models command in the bash blocks of a markdown file."""
    found, block = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block not in ("bash", "sh", "console", "shell"):
            continue
        code, _, comment = line.partition(" #")
        words = shlex.split(code, comments=True)
        segment: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", "||", ";", "|"):
                while segment and re.fullmatch(r"[A-Z_]+=\S*", segment[0]):  # VAR=value prefixes
                    segment.pop(0)
                if segment and Path(segment[0]).name in ("eo-dataset", "eo-models"):
                    found.append(([Path(segment[0]).name, *segment[1:]], comment))
                segment = []
            else:
                segment.append(w)
    return found


def test_every_documented_command_line_parses() -> None:
    """Subcommands and options in the docs exist (catches renamed or removed options); nothing is run here."""
    from eo_dataset.cli.main import parser as dataset_parser
    from eo_models.cli.main import parser as models_parser

    parsers = {"eo-dataset": dataset_parser, "eo-models": models_parser}
    checked, bad = 0, []
    for path in markdown_files():
        for argv, _ in documented_commands(path):
            try:
                parsers[argv[0]]().parse_args(argv[1:])
            except SystemExit as exc:
                if exc.code:
                    bad.append(f"{path.relative_to(REPO)}: {shlex.join(argv)}")
            checked += 1
    assert checked > 20, f"only {checked} documented commands found: is the parsing of the docs broken?"
    assert not bad, "documented commands the CLI refuses:\n" + "\n".join(bad)


def test_cli_examples_of_readme_and_index_run(ran: dict[str, str]) -> None:
    """README.md's and docs/index.md's info/cell/report/plan and `python -c` examples run on the demo cube (the
    fixture `ran` fails when one exits with an error), and the sample ids and EPSG codes their comments promise are
    in the output."""
    commands = cube_examples()
    assert {c.split()[1] for c, _ in commands if c.startswith("eo-dataset")} == RUN_ON_CUBE, commands
    assert any(c.startswith("python -c") for c, _ in commands), commands
    for cmd, comment in commands:
        out = ran[cmd]
        for sample_id in re.findall(r"\b\d+[UD]_\d+[LR]_\d+_\d+\b", comment):
            assert sample_id in out, f"{cmd}: the docs promise {sample_id}, the output is\n{out}"
        for epsg in re.findall(r"EPSG:(\d+)", comment):
            assert f'"epsg": {epsg}' in out, f"{cmd}: the docs promise EPSG:{epsg}, the output is\n{out}"


# -- pictures and regions ------------------------------------------------------------------------------------------
def test_every_picture_in_docs_is_made_by_the_generator() -> None:
    made = generate.pictures()
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    assert on_disk <= set(made), f"pictures no target of docs/generate.py makes: {sorted(on_disk - set(made))}"
    assert set(made) <= on_disk, f"pictures docs/generate.py makes but docs/ lacks: {sorted(set(made) - on_disk)}"
    vouched = {(r.doc, r.picture): r for r in generate.regions() if r.picture}
    for md in DOCS.rglob("*.md"):
        lines = md.read_text().splitlines()
        for i, line in enumerate(lines):
            for ref in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", line):
                path = (md.parent / ref).resolve().relative_to(DOCS).as_posix()
                doc = md.relative_to(DOCS).as_posix()
                assert path in made, f"{doc}:{i + 1} shows {ref}, which docs/generate.py does not make"
                assert (doc, path) in vouched, f"{doc}:{i + 1}: no generated region vouches for {ref}"
                following = next((x for x in lines[i + 1:] if x.strip()), "")
                name = vouched[doc, path].name
                assert following == f"<!-- generated: {name} -->", (f"{doc}:{i + 1}: put region {name!r} (its command "
                                                                     f"and date) right under the picture")


def test_every_generated_region_names_its_command_and_date() -> None:
    expected = {(r.doc, r.name): r for r in generate.regions()}
    found = {}
    for md in DOCS.rglob("*.md"):
        text = md.read_text()
        doc = md.relative_to(DOCS).as_posix()
        names = re.findall(r"<!-- generated: ([\w.-]+) -->", text)
        assert len(names) == len(set(names)) == len(generate.read_regions(md)), f"{doc}: unbalanced/duplicate regions"
        found.update({(doc, n): b for n, b in generate.read_regions(md).items()})
    assert set(found) == set(expected), (f"regions in the docs but not in docs/generate.py: "
                                         f"{sorted(set(found) - set(expected))}; in docs/generate.py but not in the "
                                         f"docs: {sorted(set(expected) - set(found))}")
    for key, body in found.items():
        made = list(generate.MADE_BY.finditer(body))
        assert len(made) == 1, f"{key}: expected one 'made by `python docs/generate.py TARGET` on DATE' line"
        assert made[0]["target"] == expected[key].target, f"{key}: made by {made[0]['target']}?"
        assert dt.date.fromisoformat(made[0]["date"]) <= dt.date.today(), key


def test_tokenizer_comparison_is_the_code_s_table() -> None:
    """Not rerun here (minutes): the region holds the documented command and a table with the columns and rows
    eo_models.evaluation.compare writes, and the figure is a real PNG."""
    from eo_models.evaluation.compare import VARIANTS, label, markdown_table

    body = generate.read_regions(DOCS / "tokenizers.md")["tokenizers-compare"]
    assert generate.fenced(body).startswith(generate.COMPARE + "   # ")
    fake = {"kind": "continuous", "codebook_size": 1000, "psnr_mean": 1.0, "ssim_mean": 1.0, "mae_mean": 1.0,
            "codebook_usage": 0.1, "codes_used": 100, "perplexity": 1.0, "decode_ms_per_sample": 1.0,
            "modality": "s2l2a", "samples": 1, "crop_px": 64, "tokens_per_sample": 64, "mae_units": "x",
            "decode_steps": 10}
    rows = [{"variant": v, "decoder": v.split("-")[1], "steps": 60, "train_samples_per_s": 1.0,
             "train_cpu_ms_per_sample": 1.0, "final_loss": 1.0, "final_rec": 1.0, "metrics": fake} for v in VARIANTS]
    header = markdown_table(rows).splitlines()[0]
    table = [line for line in body.splitlines() if line.startswith("|")]
    assert table[0] == header, "the comparison table's columns are not those eo_models.evaluation.compare writes now"
    assert [row.split("|")[1].strip() for row in table[2:]] == [label(v) for v in VARIANTS]
    for row in table[2:]:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert len(cells) == len(header.split("|")) - 3 and all(re.match(r"[\d.]", c) for c in cells), row
    assert f"; {generate.COMPARE}" in body, "the table's notes name another command"
    seeds = generate.read_regions(DOCS / "tokenizers.md")["tokenizers-seeds"]
    assert [r.split("|")[1].strip() for r in seeds.splitlines() if r.startswith("| ") and "variant" not in r] == \
        [label(v) for v in VARIANTS]
    png = (DOCS / "img" / "tokenizers-compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_fusion_experiment_is_its_results_json() -> None:
    """Not rerun here (an hour): docs/experiments/fusion.md's tables and key figures are what docs/generate.py writes
    from the run's results.json kept beside the page (nothing typed by hand), over at least 3 seeds, and its two
    figures are real PNGs."""
    import json

    r = json.loads((DOCS / generate.FUSION_JSON).read_text())
    assert r["experiment"] == "fusion-vs-late" and len(r["seeds"]) >= 3, (r["experiment"], r["seeds"])
    found = generate.read_regions(DOCS / generate.FUSION_DOC)
    for name, make in (("fusion-results", generate.fusion_results), ("fusion-summary", generate.fusion_summary)):
        date = generate.MADE_BY.search(found[name])["date"]
        assert found[name].rstrip("\n") == make(r, date), (f"docs/{generate.FUSION_DOC}, region {name!r} is not "
                                                           f"what {generate.FUSION_JSON} gives; rerun `python "
                                                           "docs/generate.py experiments --fusion DIR`")
    assert r["command"] in found["fusion-results"]
    for _, picture in generate.FUSION_PICTURES.values():
        png = (DOCS / picture).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, picture


def test_tokenizers_experiment_is_its_results_json() -> None:
    """Not rerun here (minutes to hours): docs/experiments/tokenizers.md's tables are what docs/generate.py writes from
    the run's results.json kept beside the page (nothing typed by hand), mean ± std over at least 3 seeds, the kept
    summaries are those of its per-seed numbers, and the page shows one real PNG per modality of the run, in order."""
    import json
    import statistics

    from eo_models.evaluation.compare import VARIANTS, label

    r = json.loads((DOCS / generate.TOKENIZERS_JSON).read_text())
    assert r["experiment"] == "tokenizers" and len(r["seeds"]) >= 3, (r["experiment"], r["seeds"])
    page = (DOCS / generate.TOKENIZERS_DOC).read_text()
    body = generate.read_regions(DOCS / generate.TOKENIZERS_DOC)["tokenizers-exp-results"]
    date = generate.MADE_BY.search(body)["date"]
    assert body.rstrip("\n") == generate.tokenizers_results(r, date), (
        f"docs/{generate.TOKENIZERS_DOC}, region 'tokenizers-exp-results' is not what {generate.TOKENIZERS_JSON} "
        "gives; rerun `python docs/generate.py experiments --tokenizers DIR`")
    assert generate.fenced(body) == r["command"]
    for m, mod in r["modalities"].items():
        assert f"### {m} ({mod['kind']})" in body, m
        rows = {line.split("|")[1].strip(): line for line in body.split(f"### {m} (", 1)[1].split("\n### ")[0]
                .splitlines() if line.startswith("| ")}
        for variant in VARIANTS:
            cells = rows[label(variant)].split("|")[2:-1]
            assert all(" ± " in c for c in cells), f"{m}, {variant}: not mean ± std over seeds: {cells}"
            per_seed = mod["variants"][variant]["seeds"]
            for key, s in mod["variants"][variant]["summary"].items():
                values = [x[key] for x in per_seed if x[key] is not None]
                assert len(values) == s["n"] == len(r["seeds"]) and s["mean"] == pytest.approx(
                    statistics.fmean(values)), (m, variant, key)
    shown = re.findall(r"<!-- generated: picture-tokenizers-exp-([\w.-]+) -->", page)
    assert shown == list(r["modalities"]) == generate.tokenizers_modalities(), shown
    for m in shown:
        date = generate.MADE_BY.search(generate.read_regions(DOCS / generate.TOKENIZERS_DOC)
                                       [f"picture-tokenizers-exp-{m}"])["date"]
        assert generate.tokenizers_picture_block(m, date) in page, m
        png = (DOCS / generate.tokenizers_picture(m)).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, m


def test_tokenizers_figures_follow_the_run_s_modalities() -> None:
    """The generator rewrites the page's run of figures for the modalities of a new run, and never swallows text."""
    page = "intro\n\n" + generate.tokenizers_picture_block("a", "2000-01-01") + "\n" + \
        generate.tokenizers_picture_block("b", "2000-01-01") + "\nafter\n"
    new = generate.with_tokenizers_pictures(page, ["x", "y", "z"], "2000-01-02")
    assert new.startswith("intro\n\n") and new.endswith("\nafter\n")
    assert re.findall(r"<!-- generated: picture-tokenizers-exp-([\w.-]+) -->", new) == ["x", "y", "z"]
    assert "2000-01-01" not in new and new.count("(../img/tokenizers-exp-") == 3
    with pytest.raises(ValueError, match="text between"):
        generate.with_tokenizers_pictures(page.replace("\n\n![b", "\nhand text\n\n![b"), ["x"], "2000-01-02")
    with pytest.raises(KeyError, match="no figure"):
        generate.with_tokenizers_pictures("intro\n", ["x"], "2000-01-02")


def test_the_cube_metadata_snippet_runs(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cube.md's "Reading the metadata from Python" block runs as written, in a folder with demo.zarr."""
    text = (DOCS / "cube.md").read_text()
    section = text.split("### Reading the metadata from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(sandbox)
    scope: dict = {}
    exec(compile(code, "docs/cube.md", "exec"), scope)
    assert scope["s1"].transform == "db" and scope["bands"] and scope["meta"].store == "cube"
