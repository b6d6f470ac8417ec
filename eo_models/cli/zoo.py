"""The model zoo commands of ``eo-models``: ``list``, ``pull``, ``push``.

    eo-models list
    eo-models pull org/name [--revision R] [--cache-dir D]
    eo-models push eo-tokenizers/s2l2a-fsq-gan --repo org/s2l2a-fsq-gan --dry-run --out eo-push/s2l2a-fsq-gan
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

#: Where ``push --dry-run`` writes by default (a name no Python module can have).
DEFAULT_ROOT = Path("eo-push")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> None:
    from eo_models.hub.registry import load_registry

    reg = load_registry(args.registry)
    rows = []
    for m in reg.models:
        source = ("4M4EO" if m.source.type == "project" else "TerraMind, upstream" if m.source.repo == m.id
                  else f"converted from {m.source.repo}")
        hashes = "sha256" if m.verified else "not verified"
        rows.append([m.id, m.kind, ",".join(m.modalities) or "-", source, m.license,
                     (m.revision or "main")[:12], hashes])
    if not rows:
        print("the model registry lists no models")
        return
    print(table(rows, ["id", "kind", "modalities", "source", "license", "revision", "files"]))


def _pull(args: argparse.Namespace) -> None:
    from eo_models.hub.pull import pull
    from eo_models.hub.registry import load_registry

    p = pull(args.id, revision=args.revision, cache_dir=args.cache_dir, registry=load_registry(args.registry))
    for f in p.files:
        state = "sha256 verified" if f.verified else f"NOT verified: {f.why}"
        print(f"  {f.name}  {_size(f.size)}  {f.sha256[:12]}  {state}")
    summary = "every file's sha256 verified" if p.verified else "NOT every file verified (see above)"
    print(f"{p.entry.id} ({p.entry.kind}) at commit {p.commit}: {len(p.files)} files, {summary}")
    print(p.path)


def _push(args: argparse.Namespace) -> None:
    import yaml

    from eo_models.hub.push import push, stage

    if args.dry_run:
        out = args.out or DEFAULT_ROOT / args.repo.split("/")[-1]
        s = stage(args.folder, out)
        for f in s.files:
            print(f"  {f.name}  {_size(f.size)}  {f.sha256[:12]}")
        left = f"; left out of the upload: {', '.join(s.left_out)}" if s.left_out else ""
        print(f"dry run: {s.folder} holds exactly what would be pushed to {args.repo} ({s.kind.name}, "
              f"{len(s.files)} files, validated: config, card, weights, from_pretrained){left}")
        return
    r = push(args.folder, args.repo, revision=args.revision, private=args.private, message=args.message)
    print(f"pushed {r.staged.kind.name} {args.folder} to {args.repo}: commit {r.commit} ({r.url})")
    print("registry entry (catalogs/models.yaml):")
    print(yaml.safe_dump({"models": [r.staged.registry_entry(args.repo, r.commit)]}, sort_keys=False).rstrip())


def add_commands(command: Callable[[str, str, str], argparse.ArgumentParser],
                 workers: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Add the zoo commands (``command(name, help, example)`` makes a subparser)."""
    s = command("list", "the model zoo: every model in the registry (catalogs/models.yaml)", "eo-models list")
    s.add_argument("--registry", default=None, metavar="YAML", help="a registry file (default: the bundled "
                   "catalogs/models.yaml)")
    s.set_defaults(func=_list)

    s = command("pull", "download a registry model into the Hugging Face cache, check its files' sha256",
                "eo-models pull org/name --revision main")
    s.add_argument("id", help="the model's id in the registry (its Hub repo id org/name)")
    s.add_argument("--revision", default=None, metavar="R", help="a branch, tag or commit (default: the registry's "
                   "revision, else main); the registry's sha256 apply only to its own revision")
    s.add_argument("--cache-dir", default=None, metavar="DIR", help="the Hub cache (default: huggingface_hub's, "
                   "~/.cache/huggingface/hub); with HF_HUB_OFFLINE=1 the files are read from it")
    s.add_argument("--registry", default=None, metavar="YAML", help="a registry file (default: the bundled "
                   "catalogs/models.yaml)")
    s.set_defaults(func=_pull)

    s = command("push", "upload a tokenizer, fusion model, baseline or converted backbone folder to the Hub: exactly "
                "its card, config and weights",
                "eo-models push eo-tokenizers/s2l2a-fsq-gan --repo org/s2l2a-fsq-gan --dry-run")
    s.add_argument("folder", help="a folder save_pretrained wrote (train-tokenizer, train-text-tokenizer, "
                   "train-fusion, convert); its other files (train/) are not uploaded")
    s.add_argument("--repo", required=True, metavar="ID", help="the Hub repo id org/name (created if missing)")
    s.add_argument("--dry-run", action="store_true", help="write the upload into --out and validate it, upload "
                   "nothing")
    s.add_argument("--out", default=None, metavar="DIR", help=f"with --dry-run: a new or empty folder (default: "
                   f"{DEFAULT_ROOT}/<repo name>)")
    s.add_argument("--revision", default=None, metavar="BRANCH", help="the branch to push to (default: main)")
    s.add_argument("--private", action="store_true", help="create the repo private")
    s.add_argument("--message", default=None, help="the commit message (default: 'Upload <kind> with eo-models push')")
    s.set_defaults(func=_push)
