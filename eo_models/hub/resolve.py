"""Local folder or Hugging Face Hub repo: how a model argument (``--tokenizer``, ``--tokenizers``,
``from_pretrained``) is read, decided before anything is downloaded.

The rule (:func:`local_or_hub`): an argument names a **Hub repo** only when it is a string of the form ``org/name``
(exactly one ``/``, a valid Hub repo id: letters, digits, ``-``, ``_``, ``.``) that is not a local folder and whose
first part ``org`` is not a local folder either. Everything else is a **local path**: a ``Path`` object, a name
without ``/`` or with more than one, one that starts with ``.``, ``/`` or ``~`` or ends with a separator, one with
a ``\\`` or other characters a repo id cannot have, and ``tokenizers/nope`` when ``tokenizers/`` exists here. A
local path that is not an existing folder fails at once ("no such folder") instead of asking the Hub (which retries
for half a minute when it cannot be reached).
"""

from __future__ import annotations

import os
from pathlib import Path

from eo_models.errors import CheckpointError


def _hub_shaped(name: str | os.PathLike[str]) -> bool:
    """A string ``org/name`` that is a valid Hub repo id (whatever is on disk)."""
    if not isinstance(name, str):  # a Path (or other PathLike) is always local
        return False
    if name.count("/") != 1 or name.startswith((".", "~")) or name.endswith("/"):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_hub_id(name: str | os.PathLike[str]) -> bool:
    """True when ``name`` is read as a Hub repo id ``org/name`` under the module's rule (no file system access
    beyond checking that neither ``name`` nor its ``org`` part is a local folder)."""
    if not _hub_shaped(name):
        return False
    org = str(name).split("/", 1)[0]
    return not Path(name).exists() and not Path(org).is_dir()


def local_or_hub(name: str | os.PathLike[str], *, what: str = "tokenizer",
                 writer: str = "train-tokenizer") -> Path | str:
    """``name`` as an existing local folder (a :class:`~pathlib.Path`), or as a Hub repo id (the string).

    Args:
        name: A folder or a Hub repo id ``org/name``.
        what: What is loaded, for messages.
        writer: What writes such folders, for messages.

    Raises:
        CheckpointError: ``name`` is a local path (see the module docstring) and no folder is there.
    """
    if is_hub_id(name):
        return str(name)
    path = Path(os.fspath(name)).expanduser()
    if path.is_dir():
        return path
    shown = os.fspath(name)
    if path.exists():
        raise CheckpointError(f"cannot load {what} {shown!r}: it is a file, not a folder; pass the folder {writer} "
                              "wrote")
    if _hub_shaped(name):  # org/name, read as a path since the folder org exists
        why = f"a local path, since the folder {str(name).split('/', 1)[0]!r} exists here"
    else:
        why = "a local path, not a Hub repo id org/name"
    raise CheckpointError(f"cannot load {what} {shown!r}: no such folder ({why}); pass the folder {writer} wrote, "
                          "or a Hub repo id org/name")
