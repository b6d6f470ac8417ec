"""The packages follow the data flow: no import cycle, no import from a later stage into an earlier one, no private
name imported across modules. The graph is read from the source (every import, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("eo_dataset", "eo_models")

# Stages in data-flow order; a module may import from its own stage and earlier ones only.
STAGES = [
    ("eo_dataset._version", "eo_dataset.errors", "eo_dataset.logfile", "eo_dataset.outputs"),
    ("eo_dataset.spec",),
    ("eo_dataset.sources",),
    ("eo_dataset.cube",),
    ("eo_dataset.engine",),
    ("eo_dataset.pipeline", "eo_dataset.demo", "eo_dataset.view"),
    ("eo_dataset.torch",),
    ("eo_dataset.cli",),
    ("eo_dataset",),  # the package root re-exports from every stage
    ("eo_models.errors", "eo_models.progress", "eo_models.config", "eo_models.hub"),
    ("eo_models.cube", "eo_models.modality"),
    ("eo_models.tokenizers",),
    ("eo_models.backbones",),
    ("eo_models.convert",),
    ("eo_models.tokens", "eo_models.training"),
    ("eo_models.evaluation", "eo_models.fusion", "eo_models.baselines",
     "eo_models.backbones.embed"),  # a backbone over a cube writes the fusion package's embeddings store
    ("eo_models.hub.artifacts", "eo_models.hub.push"),  # the hub layer over every artifact class
    ("eo_models.experiments",),
    ("eo_models.export",),
    ("eo_models.cli",),
    ("eo_models",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def stage(name: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{name}: no stage in tests/test_layout.py STAGES; add its package there"
    return rank


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import of our own modules in ``path``."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            if mod.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            subs = [n for n in names if f"{mod}.{n}" in known]  # `from pkg import module`
            out += [(f"{mod}.{n}", [], node.lineno) for n in subs]
            out.append((mod, [n for n in names if n not in subs], node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m, _, _ in imports(name, path, known) if m != name} for name, path in known.items()}


def test_every_module_has_a_stage():
    for name in modules():
        stage(name)


def test_no_upward_imports():
    known = modules()
    bad = []
    for name, path in known.items():
        for mod, _, line in imports(name, path, known):
            if stage(mod) > stage(name):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name} (stage {stage(name)}) imports {mod} "
                           f"(stage {stage(mod)})")
    assert not bad, "imports from a later stage:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    known = modules()
    bad = []
    for name, path in known.items():
        for mod, names, line in imports(name, path, known):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and mod != name:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {', '.join(private)} from {mod}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    known = set(g)

    def targets(mod: str) -> set[str]:  # an import of a.b.c also runs a/__init__ and a/b/__init__
        out = set()
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known:
                out.add(prefix)
        return out

    # a module's own parent packages are initialised before it in any case: an edge to them is no cycle
    edges = {n: {t for m in ms for t in targets(m) if t != n and not n.startswith(t + ".")} for n, ms in g.items()}
    cycles, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("package", PACKAGES)
def test_tests_mirror_the_packages(package):
    """Each test folder under tests/<package>/ names a package that exists."""
    for folder in (ROOT / "tests" / package).rglob("*"):
        if folder.is_dir() and folder.name != "__pycache__":
            rel = folder.relative_to(ROOT / "tests")
            assert (ROOT / rel).is_dir(), f"tests/{rel} mirrors no package ({rel} does not exist)"


def test_no_names_from_own_package_roots():
    """A module takes names from the module that defines them, not from a package ``__init__`` above it (which may
    be importing that very module: the ``noqa: E402`` tangle of old)."""
    known = modules()
    bad = []
    for name, path in known.items():
        for mod, names, line in imports(name, path, known):
            if names and name.startswith(mod + ".") and known[mod].name == "__init__.py":
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {', '.join(names)} from its package {mod}")
    assert not bad, "\n".join(bad)


def _catalog_names() -> set[str]:
    """Names of the bundled collections, their bands and the bundled recipes' modalities."""
    import yaml

    names: set[str] = set()
    for path in (ROOT / "catalogs" / "collections").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        names.add(spec["name"])
        names.update(b["name"] for b in spec["bands"])
    for path in (ROOT / "catalogs").glob("*.yaml"):
        names.update(yaml.safe_load(path.read_text()).get("modalities", ()))  # models.yaml (the zoo) has none
    return names


def test_no_branch_on_a_modality_or_collection_name():
    """What a modality is comes from its YAML (kind, transform, display, caption role), never from its name: no
    comparison with, membership test against or ``startswith`` of a bundled collection, band or modality name in
    the packages (the demo world, which makes those products, excepted)."""
    names = _catalog_names()

    def named(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value] if node.value in names else []
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return [v for e in node.elts for v in named(e)]
        return []

    bad = []
    for name, path in modules().items():
        if name.startswith("eo_dataset.demo"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Compare) and not (isinstance(node.left, ast.Name) and node.left.id == "role"):
                found = [v for side in (node.left, *node.comparators) for v in named(side)]  # (caption roles are
                # their own vocabulary: `role == "elevation"` compares a role, not a name)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("startswith", "endswith") and node.args:
                arg = node.args[0]
                prefixes = [e.value for e in (arg.elts if isinstance(arg, ast.Tuple) else [arg])
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                found = [p for p in prefixes if p in names or "-" in p and any(n.startswith(p) for n in names)]
            elif isinstance(node, ast.Assign) and node in tree.body and not any(  # tables keyed by names
                    isinstance(x, ast.Name) and (x.id == "__all__" or x.id.endswith("KIND_ALIASES"))
                    for x in node.targets):  # (the old spelling of a kind, "osm", is a kind, not a name)
                keys = node.value.keys if isinstance(node.value, ast.Dict) else \
                    node.value.elts if isinstance(node.value, ast.Tuple | ast.List | ast.Set) else []
                found = [k.value for k in keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                         and (k.value in names or "-" in k.value and any(n.startswith(k.value) for n in names))]
            if found:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: branches on {sorted(set(found))}")
    assert not bad, "code that decides by a modality's, collection's or band's name:\n" + "\n".join(bad)
