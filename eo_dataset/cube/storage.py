"""Cubes on object storage (``s3://``, ``gs://``, ``az://``): icechunk repositories, versions, and the commit
protocol that needs no rename.

A cube at an object-storage URL is an `icechunk <https://icechunk.io>`_ repository at that prefix: Zarr v3 under
transactions. The protocol (docs/planet.md, "Commits without rename"):

- Readers open branch ``main`` (or ``--at`` a snapshot id, tag or branch); ``main`` only ever points at finished
  versions, so no reader sees a half-written cube, whatever dies when.
- A build, an append or an update works on the branch ``eo-dataset-build``, started from ``main``'s head: first one
  commit that creates or grows the arrays and records the manifest, then one commit per block (its data and its
  manifest entry together, written by whichever worker aligned it; concurrent commits touch disjoint chunks and are
  rebased by icechunk), then one commit that merges the statistics. Only then is ``main`` moved to that commit, with
  a compare-and-swap on its previous head. A killed client, scheduler or worker loses at most the blocks it had not
  committed; rerunning the same command resumes from the branch.
- Every earlier version stays readable by its snapshot id until someone expires it (icechunk's
  ``expire_snapshots`` and ``garbage_collect``).

Credentials come only from the environment and the providers' standard configuration (``AWS_*`` for S3, including
``AWS_ENDPOINT_URL`` and ``AWS_ALLOW_HTTP`` for S3-compatible servers; ``GOOGLE_*`` for GCS; ``AZURE_STORAGE_*``
for Azure); nothing here writes them anywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from eo_dataset.cube.block import AlignedBlock
from eo_dataset.cube.manifest import done_blocks, mark_done, read_manifest
from eo_dataset.cube.store import block_slices, create_or_open, finalize, write_block
from eo_dataset.cube.update import begin_update, finish_update, prepare_append, update_key
from eo_dataset.errors import CubeError
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import Recipe

if TYPE_CHECKING:
    import icechunk

SCHEMES = ("s3", "gs", "gcs", "az", "abfs")
MAIN = "main"
BUILD_BRANCH = "eo-dataset-build"
FINISHED = "eo-dataset: finished"
BLOCK = "eo-dataset: block "  # the message of a block's commit: BLOCK + its index


def _icechunk() -> ModuleType:
    """icechunk, imported when first needed: only cubes at object-storage URLs use it, so a local build, a loader of
    a local cube and every Dask or DataLoader worker of theirs never load its Rust library (about 15 ms and 9 MB per
    process)."""
    import icechunk

    return icechunk


def is_object_url(where: Any) -> bool:
    """True for an ``s3://``, ``gs://`` or ``az://`` URL (a cube on object storage)."""
    return isinstance(where, str) and urlsplit(where).scheme in SCHEMES


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def object_storage(url: str) -> icechunk.Storage:
    """The icechunk storage of a URL, configured from the environment only.

    S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or any standard AWS credential source), ``AWS_REGION``
    (or ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL`` for an S3-compatible server (then path-style requests) and
    ``AWS_ALLOW_HTTP=true`` for a plain-HTTP one. GCS: the standard Google credentials. Azure: ``az://CONTAINER/PATH``
    with ``AZURE_STORAGE_ACCOUNT_NAME`` and the standard Azure credentials.

    Raises:
        CubeError: an unsupported scheme, no bucket, or a plain-HTTP endpoint without ``AWS_ALLOW_HTTP``.
    """
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not bucket or not prefix:
        raise CubeError(f"{url} names no bucket and path; expected e.g. {parts.scheme}://bucket/cubes/name.zarr")
    if parts.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        allow_http = _flag("AWS_ALLOW_HTTP")
        if endpoint and endpoint.startswith("http://") and not allow_http:
            raise CubeError(f"AWS_ENDPOINT_URL is plain HTTP ({endpoint}) but AWS_ALLOW_HTTP is not set; set "
                            "AWS_ALLOW_HTTP=true to allow it, or use an https:// endpoint")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        return _icechunk().s3_storage(bucket=bucket, prefix=prefix, region=region, endpoint_url=endpoint,
                                   allow_http=allow_http, force_path_style=bool(endpoint), from_env=True)
    if parts.scheme in {"gs", "gcs"}:
        return _icechunk().gcs_storage(bucket=bucket, prefix=prefix, from_env=True)
    if parts.scheme in {"az", "abfs"}:
        return _icechunk().azure_storage(account=_azure_account(url), container=bucket, prefix=prefix, from_env=True)
    raise CubeError(f"{url}: unsupported scheme {parts.scheme!r}; expected one of {', '.join(SCHEMES)}")


def _azure_account(url: str) -> str:
    """The Azure storage account of an ``az://`` URL (which names only the container): ``AZURE_STORAGE_ACCOUNT_NAME``
    (Azurite's ``devstoreaccount1`` by default with ``AZURE_STORAGE_USE_EMULATOR``)."""
    account = (os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or os.environ.get("AZURE_STORAGE_ACCOUNT")
               or ("devstoreaccount1" if _flag("AZURE_STORAGE_USE_EMULATOR") else None))
    if not account:
        raise CubeError(f"{url}: set AZURE_STORAGE_ACCOUNT_NAME to the storage account of container "
                        f"{urlsplit(url).netloc}")
    return account


def _short(exc: BaseException) -> str:
    """icechunk's multi-line error report as one line: what failed (its first line) and the innermost cause (its
    last ``->`` line; an S3 error as its code and message), without the trace of Rust functions between them."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    first = next((ln.removeprefix("x ").strip() for ln in lines if ln.strip(" |x")), type(exc).__name__)
    causes = [ln[3:].strip() for ln in lines if ln.startswith(("|->", "`->"))]
    cause = causes[-1] if causes else ""
    if found := re.search(r'code: "([^"]*)", message: "([^"]*)"', cause):
        cause = f"{found[1]}: {found[2]}"
    return (f"{first}: {cause}" if cause and cause != first else first)[:300]


@contextlib.contextmanager
def icechunk_errors(url: str, error: type[Exception] = CubeError, option: str = "") -> Iterator[None]:
    """icechunk's errors (network, credentials, a conflict with another writer) as one-line ``error``s naming the
    URL (after ``option``, e.g. ``"--out"``, when given)."""
    try:
        yield
    except _icechunk().IcechunkError as exc:
        where = f"{option} {url}" if option else url
        raise error(f"{where}: {_short(exc)}; check the URL and the AWS_*/GOOGLE_*/AZURE_* environment "
                    "variables") from None


def open_repo(url: str, create: bool = False) -> icechunk.Repository:
    """The icechunk repository of a cube URL (created when ``create`` and there is none; a creation that was cut
    short between icechunk's two writes is finished, see :func:`finish_cut_short_creation`).

    Raises:
        CubeError: there is no repository (and ``create`` is off), the prefix holds other objects (a repository is
            never created over them), or the storage cannot be reached.
    """
    storage = object_storage(url)
    with icechunk_errors(url):
        if _icechunk().Repository.exists(storage):
            return _icechunk().Repository.open(storage)
        if not create:
            raise CubeError(f"{url} holds no cube (no icechunk repository there); build one with "
                            f"'eo-dataset build RECIPE --out {url}'")
    if not finish_cut_short_creation(url):
        refuse_foreign(url)  # never write a repository over objects that are someone else's
        try:
            with icechunk_errors(url):
                return _icechunk().Repository.create(storage)
        except CubeError:
            with icechunk_errors(url):
                if not _icechunk().Repository.exists(storage):  # else: another build created it just now
                    raise
    with icechunk_errors(url):
        return _icechunk().Repository.open(storage)


def _session(repo: icechunk.Repository, url: str, at: str | None) -> icechunk.Session:
    """A read-only session on ``main``, or ``at``: a tag, a branch or a snapshot id."""
    with icechunk_errors(url):
        if at is None:
            return repo.readonly_session(branch=MAIN)
        if at in repo.list_tags():
            return repo.readonly_session(tag=at)
        if at in repo.list_branches():
            return repo.readonly_session(branch=at)
        try:
            return repo.readonly_session(snapshot_id=at)
        except (_icechunk().IcechunkError, ValueError):
            raise CubeError(f"{url} has no version {at!r}; 'eo-dataset info {url}' lists its versions") from None


def is_repository(url: str) -> bool:
    """True if an icechunk repository is at the URL."""
    storage = object_storage(url)
    with icechunk_errors(url):
        return _icechunk().Repository.exists(storage)


def _obstore(url: str) -> Any:
    """obstore's store at the URL's prefix (configured from the environment, as icechunk's storage is)."""
    from obstore.store import from_url

    if urlsplit(url).scheme in {"az", "abfs"}:  # the account is not in the URL: given, so the store can say it
        return from_url(url.rstrip("/") + "/", account_name=_azure_account(url))
    return from_url(url.rstrip("/") + "/")


def _obstore_error(url: str, exc: BaseException) -> CubeError:
    return CubeError(f"{url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; check the URL and the "
                     "AWS_*/GOOGLE_*/AZURE_* environment variables")


# what icechunk's Repository.create writes, in this order: the first snapshot (the same id in every repository),
# then branch main pointing at it (icechunk's format, spec 1: refs/branch.NAME/ref.json)
FIRST_SNAPSHOT = "1CECHNKREP0F1RSTCMT0"
MAIN_REF = f"refs/branch.{MAIN}/ref.json"
ICECHUNK_MAGIC = b"ICE\xf0\x9f\xa7\x8aCHUNK"  # how every file icechunk writes begins ("ICE", an ice cube, "CHUNK")

# the names an icechunk repository writes under its prefix
ICECHUNK_NAMES = frozenset({"chunks", "manifests", "snapshots", "transactions", "refs", "config.yaml", "overwritten"})


def objects_under(url: str, limit: int = 100) -> list[tuple[str, int]]:
    """``(path, size)`` of up to ``limit`` objects under the URL's prefix (paths relative to it), from one listing.

    Raises:
        CubeError: the storage cannot be listed (network, credentials).
    """
    import obstore

    try:
        found = next(iter(obstore.list(_obstore(url), chunk_size=limit)), [])
    except Exception as exc:  # obstore's errors (network, credentials) have no common public base
        raise _obstore_error(url, exc) from None
    return [(str(o["path"]), int(o["size"])) for o in found][:limit]


def finish_cut_short_creation(url: str) -> bool:
    """Finish the creation of a repository that was killed between icechunk's two writes (the prefix holds its first
    snapshot and nothing else): write the branch ``main`` that icechunk would have written next, only if no one has
    meanwhile (a conditional write), so that a rerun of the build resumes. True if the prefix held that and the
    repository now opens; False (nothing written) if the prefix holds anything else, or an object of that name that
    is not an icechunk file.

    Raises:
        CubeError: the storage cannot be reached, or the repository does not open once completed.
    """
    import obstore
    from obstore.exceptions import AlreadyExistsError

    found = objects_under(url, limit=2)
    if [p for p, _ in found] != [f"snapshots/{FIRST_SNAPSHOT}"] or found[0][1] > 1 << 20:
        return False
    store = _obstore(url)
    try:
        if bytes(obstore.get_range(store, found[0][0], start=0, length=len(ICECHUNK_MAGIC))) != ICECHUNK_MAGIC:
            return False  # someone's object under that name: refuse_foreign says what is there
        obstore.put(store, MAIN_REF, json.dumps({"snapshot": FIRST_SNAPSHOT}).encode(), mode="create")
    except AlreadyExistsError:
        pass  # another build finished the creation first: the same repository
    except Exception as exc:  # obstore's errors (network, credentials) have no common public base
        raise _obstore_error(url, exc) from None
    with icechunk_errors(url):
        list(_icechunk().Repository.open(object_storage(url)).ancestry(branch=MAIN))  # it reads as a repository
    return True


def refuse_foreign(url: str) -> None:
    """Refuse, before anything is written, to create a repository at a prefix that already holds objects (icechunk
    creates repositories only in empty prefixes; this says what is there, in one line).

    Raises:
        CubeError: the prefix holds objects: a plain Zarr store, other files, or an icechunk repository without its
            branch ``main`` that is more than a cut-short creation (see :func:`finish_cut_short_creation`).
    """
    objects = objects_under(url)
    if not objects:
        return
    names = [p for p, _ in objects]
    if all(p.split("/", 1)[0] in ICECHUNK_NAMES for p in names):
        what = "an incomplete icechunk repository (no branch main), not what a build cut short leaves"
    elif "zarr.json" in names:
        what = "a plain Zarr store (zarr.json), not an icechunk repository"
    else:
        what = f"{len(names)}{'+' if len(names) >= 100 else ''} object(s) that are not an icechunk repository"
    shown = ", ".join(repr(p) for p in names[:3]) + (", ..." if len(names) > 3 else "")
    raise CubeError(f"{url} already holds {what} ({shown}); nothing was written: build to another URL (a prefix "
                    "with nothing under it)")


def plain_store(url: str) -> zarr.abc.store.Store | None:
    """A read-only plain Zarr store at the URL (a cube copied there, no repository), through zarr's
    :class:`~zarr.storage.ObjectStore` on obstore (configured from the same environment); None if there is none."""
    store = zarr.storage.ObjectStore(_obstore(url), read_only=True)
    try:
        found = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False) is not None
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        found = False
    except Exception as exc:  # obstore's errors (network, credentials) have no common public base
        raise _obstore_error(url, exc) from None
    return store if found else None


def open_version(url: str, at: str | None = None) -> zarr.abc.store.Store:
    """A read-only Zarr store of one version of a cube on object storage (default: the latest finished one); a
    plain Zarr cube at the URL (no repository: copied there, not built there) is read as it is, without versions.

    Raises:
        CubeError: no cube, no such version, or no finished version yet.
    """
    if at is None and not is_repository(url):
        store = plain_store(url)
        if store is not None:
            return store
    # a repository, or nothing: open_repo raises then (also when a build created the repository just now, after
    # the check above: it is opened, never mistaken for an empty plain store)
    store = _session(open_repo(url), url, at).store
    if read_manifest(store) is None:
        where = f"version {at!r}" if at else "branch main"
        raise CubeError(f"{url} has no finished cube in {where} yet (a build is running or was interrupted: rerun it"
                        f" to finish; its unfinished state reads with --at {BUILD_BRANCH})")
    return store


def pin_version(url: str, at: str | None = None) -> str | None:
    """The snapshot id of one version of a cube on object storage (default: the latest finished one), so that
    every later read (a DataLoader's workers, opening it again) sees that same version even if a build publishes a
    newer one meanwhile; None for a plain Zarr store (it has no versions).

    Raises:
        CubeError: no cube, no such version, or no finished version yet.
    """
    session = getattr(open_version(url, at), "session", None)  # an icechunk store's; a plain Zarr store has none
    return None if session is None else session.snapshot_id


def block_commit_times(url: str, at: str | None = None) -> dict[int, float]:
    """When each block of a version was committed (POSIX seconds; its latest commit, e.g. by an update), from the
    repository's history: what a local cube's block entry files' modification times say. Empty for a plain Zarr
    store."""
    if at is None and not is_repository(url):
        return {}
    repo = open_repo(url)
    snapshot = _session(repo, url, at).snapshot_id
    out: dict[int, float] = {}
    with icechunk_errors(url):
        for s in repo.ancestry(snapshot_id=snapshot):
            head, _, index = s.message.partition(BLOCK)
            if not head and index.isdigit():
                out.setdefault(int(index), s.written_at.timestamp())
    return out


def stored_bytes(store: zarr.abc.store.Store, prefix: str) -> int:
    """Bytes stored under ``prefix`` (e.g. ``"s2l2a/"``: an array's chunks and metadata) of a Zarr store on object
    storage, summed from one listing (no read of the data)."""
    from zarr.core.sync import sync

    return int(sync(store.getsize_prefix(prefix)))


def open_cube_at(url: str, at: str | None = None) -> xr.Dataset:
    """``xr.open_zarr`` of one version of a cube on object storage (see :func:`open_version`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return xr.open_zarr(open_version(url, at), zarr_format=3, consolidated=False)


def locate(where: str, at: str | None = None) -> Any:
    """What :mod:`eo_dataset.cube.store` and :mod:`~eo_dataset.cube.manifest` read: a local path or another URL as
    it is, a cube on object storage as the read-only store of a version.

    Raises:
        CubeError: ``at`` given for something that has no versions.
    """
    if is_object_url(where):
        return open_version(where, at)
    if at is not None:
        raise CubeError(f"--at reads a version of a cube on object storage (s3://, gs://, az://); {where} has none")
    return where


@dataclass(frozen=True)
class Version:
    """A finished version of a cube: what readers see on ``main`` (the newest first)."""

    snapshot_id: str
    written_at: str
    message: str


def versions(url: str) -> list[Version]:
    """The finished versions of a cube on object storage, newest first (every other snapshot is a step inside a
    build: its first commit or a block); none for a plain Zarr store."""
    if not is_repository(url):
        return []
    repo = open_repo(url)
    with icechunk_errors(url):
        return [Version(s.id, s.written_at.isoformat(timespec="seconds"), s.message)
                for s in repo.ancestry(branch=MAIN) if s.message.startswith(FINISHED)]


@dataclass(frozen=True)
class IcechunkWriter:
    """An open build of a cube on object storage: the same interface as
    :class:`~eo_dataset.cube.lifecycle.CubeWriter`, every step a commit (see the module's protocol).

    Small and picklable (the URL, the recipe, the modalities an update rewrites): each worker opens the repository
    itself, with its own environment's credentials.
    """

    path: str
    recipe: Recipe
    only: tuple[str, ...] | None = None

    @classmethod
    def open(cls, url: str, recipe: Recipe, samples: Sequence[Sample], *, overwrite: bool = False,
             append: bool = False, update: Sequence[str] = ()) -> tuple[IcechunkWriter, Sequence[Sample]]:
        """Start (or resume) a build, append or update on the build branch; see ``CubeWriter.open``."""
        repo = open_repo(url, create=True)
        only = tuple(sorted(update)) or None
        with icechunk_errors(url):
            main = repo.lookup_branch(MAIN)
            if BUILD_BRANCH not in repo.list_branches():
                repo.create_branch(BUILD_BRANCH, main)
            head = repo.lookup_branch(BUILD_BRANCH)
            if head != main and next(iter(repo.ancestry(snapshot_id=head))).message.startswith(FINISHED):
                repo.reset_branch(MAIN, head, from_snapshot_id=main)  # finished, then killed before publishing
                main = head
            if overwrite and head != main:
                repo.reset_branch(BUILD_BRANCH, main)  # drop the unfinished work (it stays in the history)
            session = repo.writable_session(BUILD_BRANCH)
            store = session.store
            try:
                if append and read_manifest(store) is not None:
                    samples = prepare_append(store, recipe, samples)
                if only:
                    begin_update(store, recipe, samples, only)
                else:
                    create_or_open(store, recipe, samples, overwrite=overwrite, name=url)
            except CubeError as exc:
                raise CubeError(str(exc).replace(str(store), url)) from None
            if session.has_uncommitted_changes:
                session.commit("eo-dataset: begin", metadata={"recipe_hash": recipe.hash, "n_samples": len(samples),
                                                              "update": list(only or ())})
        return cls(url, recipe, only), samples

    @property
    def _entries(self) -> str:
        return update_key(self.only) if self.only else "blocks"

    def _read(self) -> zarr.abc.store.Store:
        return _session(open_repo(self.path), self.path, BUILD_BRANCH).store

    def blocks(self, n_samples: int) -> list[slice]:
        """The sample range of every block of a cube of ``n_samples`` samples."""
        return block_slices(n_samples, self.recipe.build.shard_samples)

    def done(self) -> set[int]:
        """Indices of the blocks committed on the build branch (of this update, for an update)."""
        return done_blocks(self._read(), self._entries)

    def anchor_times(self, region: slice) -> list[Any]:
        """The anchor times of a block's samples, as the build branch holds them."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            times = xr.open_zarr(self._read(), consolidated=False).anchor_time.values[region]
        return [None if np.isnat(t) else pd.Timestamp(t).to_pydatetime().replace(tzinfo=dt.UTC)
                for t in times]

    def arrays(self, region: slice) -> dict[str, np.ndarray]:
        """Every per-sample array of a block's samples, as the build branch holds them."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            cube = xr.open_zarr(self._read(), consolidated=False).isel(sample=region)
        return {k: cube[k].values for k in cube.variables if "sample" in cube[k].dims}

    def write(self, index: int, region: slice, block: AlignedBlock, entry: Callable[[], dict[str, Any]]) -> None:
        """Write a block's arrays and its manifest entry in one commit (rebased over concurrent block commits)."""
        with icechunk_errors(self.path):
            session = open_repo(self.path).writable_session(BUILD_BRANCH)
            write_block(session.store, self.recipe, region, block)
            mark_done(session.store, index, entry(), self._entries)
            session.commit(f"{BLOCK}{index}", rebase_with=_icechunk().ConflictDetector())

    def finish(self) -> zarr.abc.store.Store:
        """Fold an update in and merge the statistics in one commit, then publish it: move ``main`` to it. Returns
        the finished version's store (to read its manifest entries from)."""
        repo = open_repo(self.path)
        with icechunk_errors(self.path):
            main, head = repo.lookup_branch(MAIN), repo.lookup_branch(BUILD_BRANCH)
            if head == main:  # nothing was written: the cube was complete already
                return _session(repo, self.path, None).store
            session = repo.writable_session(BUILD_BRANCH)
            if self.only:
                finish_update(session.store, self.recipe, self.only)
            finalize(session.store)
            manifest = read_manifest(session.store) or {}
            if not session.has_uncommitted_changes:
                return session.store
            snapshot = session.commit(f"{FINISHED} {manifest.get('n_samples')} samples, recipe {self.recipe.hash}"
                                      + (f", updated {','.join(self.only)}" if self.only else ""))
            repo.reset_branch(MAIN, snapshot, from_snapshot_id=main)
            return repo.readonly_session(snapshot_id=snapshot).store
