"""``eo-models pull``: download a registry model into the Hugging Face Hub cache and check its files' sha256.

:func:`pull` asks ``huggingface_hub.snapshot_download`` for the files the registry lists (with ``HF_HUB_OFFLINE=1``
the library reads them from the local cache and never touches the network), then hashes each. A file the snapshot
lacks, or whose sha256 differs from the registry's, is an error. Hashes are checked only where they apply: the
registry gives them for one commit (its ``revision``), so a file of another commit, or one the registry has no hash
for, is reported as *not verified*, never as verified.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from eo_models.errors import CheckpointError
from eo_models.hub.registry import ModelEntry, Registry, load_registry

_CHUNK = 1 << 20


@dataclass(frozen=True)
class PulledFile:
    """One file of a pulled snapshot: ``name``, ``size`` in bytes, its ``sha256``, and ``verified`` (its hash
    matched the registry's) or ``why`` it was not verified."""

    name: str
    size: int
    sha256: str
    verified: bool
    why: str = ""


@dataclass(frozen=True)
class Pulled:
    """A pulled model: its registry ``entry``, the snapshot folder ``path`` (in the Hub cache), the ``commit`` it
    holds, and its ``files``."""

    entry: ModelEntry
    path: Path
    commit: str
    files: tuple[PulledFile, ...]

    @property
    def verified(self) -> bool:
        """Every file's sha256 matched the registry's."""
        return all(f.verified for f in self.files)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def pull(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
         registry: Registry | None = None, token: str | bool | None = None) -> Pulled:
    """Download the files of a registry model into the Hub cache and check them.

    Args:
        repo_id: The model's id in the registry (its Hub repo id).
        revision: A branch, tag or commit (default: the registry's ``revision``, else ``main``).
        cache_dir: The Hub cache (default: ``huggingface_hub``'s, ``~/.cache/huggingface/hub``).
        registry: The registry (default: the bundled ``catalogs/models.yaml``).
        token: A Hub token, as ``huggingface_hub`` takes it.

    Raises:
        ConfigError: ``repo_id`` is not in the registry.
        CheckpointError: the repo or revision cannot be had (offline: not in the cache), a listed file is missing, or
            a file's sha256 differs from the registry's.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled

    entry = (registry or load_registry()).get(repo_id)
    rev = revision or entry.revision
    names = [f.name for f in entry.files]
    try:
        path = Path(snapshot_download(repo_id, revision=rev, cache_dir=cache_dir, allow_patterns=names,
                                      library_name="eo-models", token=token))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, HFValidationError) as exc:
        at = f" at revision {rev!r}" if rev else ""
        cache = f" in the cache {os.fspath(cache_dir)}" if cache_dir is not None else ""
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"cannot pull {repo_id}{at}{cache} ({type(exc).__name__}: {first}); offline "
                              "(HF_HUB_OFFLINE=1) pull it once while online or pass the --cache-dir that holds it; "
                              "online check the id and revision") from None
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"{repo_id} at {path.name} lacks {', '.join(missing)} (the registry lists "
                              f"{', '.join(names)}); the repo or the registry is wrong: pull another --revision or "
                              "fix catalogs/models.yaml")
    applies = entry.revision is not None and path.name == entry.revision
    files, bad = [], []
    for f in entry.files:
        p = path / f.name
        digest = sha256_of(p)
        if f.sha256 is None:
            files.append(PulledFile(f.name, p.stat().st_size, digest, False, "no sha256 in the registry"))
        elif not applies:
            files.append(PulledFile(f.name, p.stat().st_size, digest, False,
                                    f"the registry's sha256 is for commit {entry.revision}, this is {path.name}"))
        elif digest != f.sha256:
            bad.append(f"{f.name} (sha256 {digest[:12]}..., registry {f.sha256[:12]}...)")
        else:
            files.append(PulledFile(f.name, p.stat().st_size, digest, True))
    if bad:
        raise CheckpointError(f"{repo_id} at {path.name}: hash mismatch for {', '.join(bad)}; the download is "
                              f"corrupt or changed: delete {path.parents[1]} from the cache and pull again")
    return Pulled(entry, path, path.name, tuple(files))
