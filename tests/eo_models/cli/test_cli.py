"""eo-models on first contact: --version and --help, one-line errors for a missing models extra, a cube that is
not one and a tokenizer path that is no folder (never asking the Hub), outputs that are not ours left untouched
whatever the flags, loader workers, and default output folders that do not shadow Python packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")

import zarr  # noqa: E402

from eo_models.cli.main import DEFAULT_ROOT, default_out, main, parser  # noqa: E402
from eo_models.config import TrainConfig, load_sections  # noqa: E402
from eo_models.errors import CheckpointError, ConfigError  # noqa: E402
from eo_models.hub.resolve import is_hub_id  # noqa: E402
from eo_models.tokenizers import Tokenizer  # noqa: E402
from eo_models.tokenizers.text import CaptionTokenizer  # noqa: E402
from eo_models.tokenizers.tokenizer import load_tokenizer  # noqa: E402
from eo_models.training.tokenizer import default_workers, loader_workers, tokenizer_config  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
MICRO = """\
name: micro
quantizer: {type: fsq, levels: [8, 5, 5, 5], codebook_size: 64, codebook_dim: 4}
encoder: {type: vit, patch: 8, dim: 16, depth: 1, heads: 2, latent_dim: 8}
decoder: {type: gan, dim: 8, disc_start: 1000, disc_dim: 8}
train: {crop: 32, batch_size: 2, steps: 1, log_every: 1, num_workers: 0}
"""
DESTRUCTIVE = ("--overwrite", "--restart", "--force", "delete", "remove", "rm ")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the Hugging Face Hub: offline, and any download is a failure."""
    import huggingface_hub.constants
    import huggingface_hub.hub_mixin

    import eo_models.tokenizers.text as text

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the Hub was asked for {args} {kwargs}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", refuse)
    monkeypatch.setattr(text, "snapshot_download", refuse)


@pytest.fixture(scope="module")
def micro_tokenizer(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained s2l2a tokenizer saved as a folder (enough for the checks that run before any work)."""
    root = tmp_path_factory.mktemp("micro")
    (root / "micro.yaml").write_text(MICRO)
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_config(demo_cube, "s2l2a", root / "micro.yaml").to_dict())
    tok.save_pretrained(root / "s2l2a")
    return root / "s2l2a"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eo-models: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- --version and --help ------------------------------------------------------------------------------------------
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("eo-models ") and len(out.split()) == 2


def test_every_command_has_an_example_and_documents_every_option() -> None:
    p = parser()
    sub = next(a for a in p._actions if a.choices and "tokenize" in a.choices)
    assert set(sub.choices) >= {"train-tokenizer", "eval-tokenizer", "compare", "tokenize", "train-text-tokenizer",
                                "train-fusion", "generate", "embed"}
    for name, s in sub.choices.items():
        assert s.epilog and s.epilog.startswith("example:\n  eo-models " + name), name
        example = s.epilog.splitlines()[1].split()
        assert p.parse_args(example[1:]).command == name  # the example parses
        for action in s._actions:
            if "-h" in action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings}: no help"
            flag = action.nargs == 0  # --quiet, --restart, --no-card
            if not action.required and not flag:
                assert "default" in action.help, f"{name} {action.option_strings}: the help does not say the default"
    assert "--workers" in sub.choices["train-tokenizer"].format_help()
    assert "--workers" in sub.choices["eval-tokenizer"].format_help()
    assert "--workers" in sub.choices["compare"].format_help()


# -- tracebacks become one line ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["train-tokenizer", "--cube", "demo.zarr", "--modality", "s2l2a"],
                                  ["tokenize", "--cube", "demo.zarr", "--tokenizers", "t", "--out", "t.zarr"],
                                  ["train-text-tokenizer", "--cube", "demo.zarr"]])
def test_without_the_models_extra(argv: list[str], tmp_path: Path) -> None:
    """torch missing (as after `pip install -e .`): the command says which extra to install, in one line."""
    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ModuleNotFoundError
            "from eo_models.cli import main\nraise SystemExit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2, run.stderr
    line = _one_line_error(run.stderr)
    assert "'torch' is missing" in line and "pip install -e '.[models]'" in line
    assert not list(tmp_path.iterdir())  # nothing written


def test_hub_ids_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("org/name") and is_hub_id("ibm-esa-geospatial/TerraMind-1.0-s2l2a")
    for path in ("./org/name", "/org/name", "~/org/name", "org/name/", "a/b/c", "name", "org/..", "org\\name",
                 "org/na me", ".hidden/name", "org/name.git", ""):
        assert not is_hub_id(path), path
    assert not is_hub_id(Path("org/name"))  # a Path is always local
    (tmp_path / "tokenizers").mkdir()
    assert not is_hub_id("tokenizers/nope")  # its first part is a folder here: a path
    assert is_hub_id("tokenizer/nope")


def test_a_path_that_is_no_folder_fails_at_once(demo_cube: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`tokenizers/nope` with a tokenizers/ folder here: "no such folder", never a download (no_hub)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokenizers").mkdir()
    for load in (load_tokenizer, Tokenizer.from_pretrained, CaptionTokenizer.from_pretrained):
        with pytest.raises(CheckpointError, match=r"'tokenizers/nope': no such folder .*'tokenizers' exists here"):
            load("tokenizers/nope")
    for name in ("./nope", "a/b/c", "nope"):
        with pytest.raises(CheckpointError, match="no such folder"):
            load_tokenizer(name)
    with pytest.raises(CheckpointError, match="it is a file, not a folder"):
        load_tokenizer(Path(demo_cube) / "zarr.json")
    code, _, err = _run(["tokenize", "--cube", demo_cube, "--tokenizers", "tokenizers/nope", "--out", "t.zarr",
                         "--quiet"], capsys)
    assert code == 2 and "'tokenizers/nope': no such folder" in _one_line_error(err)
    code, _, err = _run(["eval-tokenizer", "--cube", demo_cube, "--tokenizer", "tokenizers/nope"], capsys)
    assert code == 2 and "no such folder" in _one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizers"]


def _not_cubes(root: Path) -> dict[str, Path]:
    root.mkdir()
    folder = root / "results"
    folder.mkdir()
    (folder / "results.csv").write_text("a,b\n1,2\n")
    store = root / "other.zarr"
    zarr.open_group(store, mode="w", zarr_format=3).attrs["title"] = "not a cube"
    zarr.consolidate_metadata(store)
    return {"missing": root / "nothing.zarr", "file": folder / "results.csv", "folder": folder, "zarr": store}


@pytest.mark.parametrize("command", ["train-tokenizer", "eval-tokenizer", "compare", "tokenize",
                                     "train-text-tokenizer"])
def test_a_cube_that_is_not_one(command: str, micro_tokenizer: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = {"train-tokenizer": ["--modality", "s2l2a", "--steps", "1", "--out", out, "--quiet"],
            "eval-tokenizer": ["--tokenizer", micro_tokenizer, "--limit", "1"],
            "compare": ["--modality", "s2l2a", "--steps", "1", "--out", out, "--quiet"],
            "tokenize": ["--tokenizers", micro_tokenizer, "--out", out, "--quiet"],
            "train-text-tokenizer": ["--out", out]}[command]
    for kind, cube in _not_cubes(tmp_path / "cubes").items():
        code, _, err = _run([command, "--cube", cube, *args], capsys)
        line = _one_line_error(err)
        assert code == 2, line
        if kind == "zarr" and command == "train-text-tokenizer":  # a Zarr store with a caption variable would do
            assert "no `caption` variable" in line
            continue
        assert f"{cube} is " in line and "not an eo-dataset cube" in line, line
        assert "build one with 'eo-dataset demo'" in line and "No group found" not in line
        assert not out.exists(), kind


# -- outputs that are not ours ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train-tokenizer", "train-tokenizer --restart", "compare", "tokenize",
                                     "train-text-tokenizer", "eval-tokenizer"])
def test_a_folder_that_is_not_ours_is_left_untouched(command: str, demo_cube: Path, micro_tokenizer: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = tmp_path / "results"
    user.mkdir()
    (user / "results.csv").write_text("run,score\n1,0.93\n")
    (user / "notes").mkdir()
    (user / "notes" / "todo.md").write_text("- check run 1\n")
    before = _listing(user)
    name, *flags = command.split()
    args = {"train-tokenizer": ["--modality", "s2l2a", "--steps", "1", "--batch-size", "2", "--crop", "32",
                                "--out", user, "--quiet"],
            "compare": ["--modality", "s2l2a", "--steps", "1", "--out", user, "--quiet"],
            "tokenize": ["--tokenizers", micro_tokenizer, "--out", user, "--quiet"],
            "train-text-tokenizer": ["--out", user],
            "eval-tokenizer": ["--tokenizer", micro_tokenizer, "--limit", "1", "--no-card", "--out",
                               user / "results.csv"]}[name]
    code, out, err = _run([name, "--cube", demo_cube, *args, *flags], capsys)
    line = _one_line_error(err)
    assert code == 2 and "left untouched" in line and str(user) in line, line
    assert not any(word in line for word in DESTRUCTIVE), line  # nothing suggests destroying the user's files
    assert _listing(user) == before


def test_a_downloaded_tokenizer_or_a_cube_is_no_output(demo_cube: Path, micro_tokenizer: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A tokenizer folder from the Hub (config.json, model.safetensors, README.md, no train/) is not a training
    output, even with --restart; a cube is not a token store."""
    before = _listing(micro_tokenizer)
    code, _, err = _run(["train-tokenizer", "--cube", demo_cube, "--modality", "s2l2a", "--out", micro_tokenizer,
                         "--restart", "--steps", "1", "--quiet"], capsys)
    line = _one_line_error(err)
    assert code == 2 and "not a tokenizer folder written by train-tokenizer (no train/metrics.csv)" in line
    assert _listing(micro_tokenizer) == before
    cube_files = {p.relative_to(demo_cube).as_posix() for p in demo_cube.rglob("*")}
    code, _, err = _run(["tokenize", "--cube", demo_cube, "--tokenizers", micro_tokenizer, "--out", demo_cube,
                         "--quiet"], capsys)
    assert code == 2 and "is an eo-dataset cube, not a token store" in _one_line_error(err)
    assert {p.relative_to(demo_cube).as_posix() for p in demo_cube.rglob("*")} == cube_files


def test_eval_leaves_a_readme_it_did_not_write(demo_cube: Path, micro_tokenizer: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((micro_tokenizer / name).read_bytes())
    (folder / "README.md").write_text("# My tokenizer\n\nNotes I keep.\n")
    args = ["eval-tokenizer", "--cube", demo_cube, "--tokenizer", folder, "--limit", "1", "--batch-size", "1",
            "--workers", "0"]
    code, out, err = _run(args, capsys)
    line = _one_line_error(err)
    assert code == 2 and "README.md is not a model card written by eo-models" in line and "--no-card" in line
    assert out == "" and (folder / "README.md").read_text() == "# My tokenizer\n\nNotes I keep.\n"
    code, out, _ = _run([*args, "--no-card"], capsys)
    assert code == 0 and '"samples": 1' in out
    assert (folder / "README.md").read_text() == "# My tokenizer\n\nNotes I keep.\n"


# -- loader workers ----------------------------------------------------------------------------------------------------
def test_loader_workers_flag_then_config_then_cores(demo_cube: Path) -> None:
    tiny = tokenizer_config(demo_cube, "s2l2a", "tiny")
    base = tokenizer_config(demo_cube, "s2l2a", "base")
    assert tiny.train.num_workers == 0 and loader_workers(tiny) == 0  # tiny reads in the training process
    assert "num_workers" not in load_sections("base", "s2l2a")["train"]  # no machine's core count in a config
    assert base.train.num_workers is None and loader_workers(base) == default_workers() >= 1
    assert loader_workers(tiny, 3) == 3 and loader_workers(base, 0) == 0
    assert TrainConfig().num_workers is None
    with pytest.raises(ConfigError, match="workers must be an int >= 0"):
        loader_workers(tiny, -1)
    with pytest.raises(ConfigError, match="train.num_workers must be an int >= 0"):
        TrainConfig(num_workers=-2)


# -- default output folders ------------------------------------------------------------------------------------------
def test_default_output_folders_shadow_no_package(demo_cube: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A `tokenizers/` folder in a project makes ruff's isort take the `tokenizers` library for first-party code
    (I001 in every file importing it, as eo_models/tokenizers/text.py does). The default outputs are named so that
    no Python module can have their name; ruff on a project with them passes."""
    assert default_out("tiny", "s2l2a", None, None) == DEFAULT_ROOT / "s2l2a-fsq-gan"
    assert default_out("base", "lulc", "vq", None) == DEFAULT_ROOT / "lulc-vq-diffusion"
    assert not DEFAULT_ROOT.parts[0].isidentifier()
    sub = next(a for a in parser()._actions if a.choices and "tokenize" in a.choices).choices
    assert not Path(sub["train-text-tokenizer"].get_default("out")).parts[0].isidentifier()
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.ruff.lint]\nselect = ["I"]\n')
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "mod.py").write_text("import os\n\nimport tokenizers\n\nimport pkg\n\n"
                                            "print(os, tokenizers, pkg)\n")
    monkeypatch.chdir(project)
    code, out, _ = _run(["train-text-tokenizer", "--cube", demo_cube, "--vocab-size", "200"], capsys)
    assert code == 0 and (project / DEFAULT_ROOT / "caption" / "tokenizer.json").is_file()
    ruff = [sys.executable, "-m", "ruff", "check", "--no-cache", "."]
    try:
        run = subprocess.run(ruff, cwd=project, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("ruff is not installed")
    if "No module named ruff" in run.stderr:
        pytest.skip("ruff is not installed")
    assert run.returncode == 0, run.stdout + run.stderr
    (project / "tokenizers").mkdir()  # the old default: the cause
    run = subprocess.run(ruff, cwd=project, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "I001" in run.stdout
