"""Outputs of eo-models on object storage (``s3://``, ``gs://``, ``az://``): icechunk repositories written on a
branch and published when finished, with the protocol of eo-dataset's cubes there (:mod:`eo_dataset.cube.storage`).

A token store (``eo-models tokenize``), a store of generated modalities (``generate``) or of embeddings (``embed``)
at an object-storage URL is an `icechunk <https://icechunk.io>`_ repository at that prefix, holding the same Zarr
v3 layout as the local store:

- Work goes on the branch ``eo-models-write`` (:data:`WRITE_BRANCH`), started from ``main``: one commit creates the
  store (its metadata, coordinates and build record), then one commit per block (its data and its entry in the build
  record together), then one commit that marks it ``complete``. Only then is ``main`` moved to that commit (a
  compare-and-swap on its previous head), so a reader of ``main`` never sees an unfinished or torn store.
- A kill at any moment loses at most the block being written; rerunning the same command resumes from the branch
  (and publishes a store that was finished but not yet published).
- A prefix that holds anything else (objects that are not an icechunk repository, a cube, another kind of store,
  another tool's branches) is refused before anything is written, and never deleted.

Credentials come only from the environment (the ``AWS_*``, ``GOOGLE_*``, ``AZURE_*`` variables that
:func:`eo_dataset.cube.storage.object_storage` reads); nothing here writes them anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import zarr

from eo_dataset.cube.schema import CubeMeta
from eo_dataset.cube.storage import MAIN, icechunk_errors, open_repo
from eo_dataset.errors import CubeError, OutputError

__all__ = ["FINISHED", "WRITE_BRANCH", "VersionedOutput", "root_attrs"]

WRITE_BRANCH = "eo-models-write"
FINISHED = "eo-models: finished"


def root_attrs(store: Any) -> dict[str, Any] | None:
    """The root attrs of a Zarr v3 store (None if it holds no root group yet)."""
    try:
        return zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False).attrs.asdict()
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None


def _kind(attrs: dict[str, Any]) -> str | None:
    try:
        return CubeMeta.from_attrs(attrs, "").store
    except CubeError:
        return None


class VersionedOutput:
    """An output of eo-models at an object-storage URL, open for writing (see the module docstring).

    Args:
        url: ``s3://bucket/path`` (or ``gs://``, ``az://``).
        kind: The ``store`` of the :class:`~eo_dataset.cube.schema.CubeMeta` written there (``tokens``,
            ``generated``, ``embeddings``): a repository whose published version is another kind is refused.
        what: What is written there, for messages ("token store written by eo-models tokenize").
        option: The option that named the URL, for messages.

    Raises:
        OutputError: the prefix holds objects that are not an icechunk repository, a repository with branches of
            another writer (a cube being built, another tool) or of another kind of store, or it cannot be
            reached.
    """

    def __init__(self, url: str, kind: str, what: str, option: str = "--out") -> None:
        self.url, self.what, self.option = url, what, option
        try:
            self.repo = open_repo(url, create=True)  # refuses a prefix of objects that are not a repository
        except CubeError as exc:
            raise OutputError(f"{option} {exc}") from None
        with self._errors():
            branches = set(self.repo.list_branches())
            foreign = sorted(branches - {MAIN, WRITE_BRANCH})
            if foreign:
                raise OutputError(f"{option} {url} is an icechunk repository with branches of another writer "
                                  f"({', '.join(foreign)}), not a {what}; it is left untouched: choose another "
                                  f"{option}")
            attrs = root_attrs(self.repo.readonly_session(branch=MAIN).store)
            found = _kind(attrs) if attrs is not None else kind
            if found != kind:  # refused before anything is written there
                found = {None: "a Zarr store", "cube": "an eo-dataset cube"}.get(found, f"an eo-models {found} store")
                raise OutputError(f"{option} {url} is {found}, not a {what}; it is left untouched: choose another "
                                  f"{option}")
            if WRITE_BRANCH not in branches:
                self.repo.create_branch(WRITE_BRANCH, self.repo.lookup_branch(MAIN))
            else:
                self._publish_if_finished()

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return icechunk_errors(self.url, OutputError, self.option)

    def _publish_if_finished(self) -> None:
        """A store finished on the branch and killed before it was published: publish it now."""
        main, head = self.repo.lookup_branch(MAIN), self.repo.lookup_branch(WRITE_BRANCH)
        if head != main and next(iter(self.repo.ancestry(snapshot_id=head))).message.startswith(FINISHED):
            self.repo.reset_branch(MAIN, head, from_snapshot_id=main)

    def published(self) -> Any | None:
        """The read-only Zarr store of the published (finished) version, or None if nothing was published yet."""
        with self._errors():
            store = self.repo.readonly_session(branch=MAIN).store
        return store if root_attrs(store) is not None else None

    def head(self) -> Any:
        """The read-only Zarr store of the work in progress (the head of :data:`WRITE_BRANCH`)."""
        with self._errors():
            return self.repo.readonly_session(branch=WRITE_BRANCH).store

    @contextlib.contextmanager
    def commit(self, message: str) -> Iterator[Any]:
        """A writable Zarr store on the branch; what is written in the ``with`` block is committed on leaving it
        (nothing is, if it raises)."""
        with self._errors():
            session = self.repo.writable_session(WRITE_BRANCH)
        yield session.store
        import icechunk

        with self._errors():
            if session.has_uncommitted_changes:  # rebased over concurrent commits of other blocks (disjoint chunks)
                session.commit(message, rebase_with=icechunk.ConflictDetector())

    def restart(self) -> None:
        """Drop the unfinished work on the branch (it stays in the repository's history)."""
        with self._errors():
            self.repo.reset_branch(WRITE_BRANCH, self.repo.lookup_branch(MAIN))

    def publish(self) -> Any:
        """Move ``main`` to the branch's head, which must be a commit whose message starts with :data:`FINISHED`
        (made with :meth:`commit`, e.g. setting the store's ``complete`` attr). Returns the published store."""
        with self._errors():
            head = self.repo.lookup_branch(WRITE_BRANCH)
            if not next(iter(self.repo.ancestry(snapshot_id=head))).message.startswith(FINISHED):
                raise OutputError(f"{self.option} {self.url}: the {self.what} is not finished; nothing was published")
            self._publish_if_finished()
        return self.published()
