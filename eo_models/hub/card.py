"""Model cards for every artifact kind, built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard`.

An artifact describes itself as a :class:`CardContent` (title, summary, sections, usage, metrics, licence, tags,
datasets, training cube hash); :func:`render_card` turns it into the markdown of ``README.md`` (front matter from
:class:`~huggingface_hub.ModelCardData`: ``library_name``, ``license``, ``tags``, ``datasets``, ``metrics`` and the
training cube's ``recipe_hash``), :func:`build_card` into a :class:`~huggingface_hub.ModelCard`. :func:`check_card`
reads a card back and says what is wrong with it (used before anything is pushed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from eo_models.errors import CheckpointError

LIBRARY = "eo-models"  #: ``library_name`` of every card
LICENSE = "apache-2.0"  #: the licence of what this project trains (the code's, Apache-2.0)
CARD_FILE = "README.md"  #: where ``save_pretrained`` writes the card


@dataclass(frozen=True)
class CardContent:
    """What a model card says.

    Attributes:
        title: The first heading, with its ``#`` (``"# 4M4EO tokenizer: s2l2a"``).
        summary: One paragraph under the title.
        tags: Hub tags (front matter).
        sections: ``(heading, lines)`` pairs, in order (``## heading`` then the markdown lines).
        usage: Python lines for the ``## Use`` section (none: no such section).
        metrics: Evaluation results (a JSON-able mapping); their names go to the front matter, the values to a
            ``## Metrics`` section.
        license: SPDX-style licence id (front matter).
        datasets: Hub dataset ids the model was trained on (front matter).
        recipe_hash: The training cube's ``recipe_hash`` (front matter), ``None`` if unknown.
        footer: Markdown lines after everything else.
    """

    title: str
    summary: str
    tags: tuple[str, ...]
    sections: tuple[tuple[str, tuple[str, ...]], ...] = ()
    usage: tuple[str, ...] = ()
    metrics: Mapping[str, Any] | None = None
    license: str = LICENSE
    datasets: tuple[str, ...] = ()
    recipe_hash: str | None = None
    footer: tuple[str, ...] = field(default=())


def card_data(content: CardContent) -> ModelCardData:
    """The card's front matter."""
    extra: dict[str, Any] = {}
    if content.recipe_hash:
        extra["recipe_hash"] = content.recipe_hash
    return ModelCardData(library_name=LIBRARY, license=content.license, tags=list(content.tags),
                         datasets=list(content.datasets) or None,
                         metrics=sorted(content.metrics) if content.metrics else None, **extra)


def _json_safe(value: Any) -> Any:
    """NaN and infinities as strings (JSON has no such numbers), everything else as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def render_card(content: CardContent) -> str:
    """The markdown of ``README.md``: front matter, title, summary, sections, metrics, usage, footer."""
    lines = [f"---\n{card_data(content).to_yaml()}\n---", content.title, "", content.summary]
    for heading, body in content.sections:
        lines += ["", f"## {heading}", "", *body]
    if content.metrics:
        lines += ["", "## Metrics", "", "```json", json.dumps(_json_safe(dict(content.metrics)), indent=2,
                                                                sort_keys=True), "```"]
    if content.usage:
        lines += ["", "## Use", "", "```python", *content.usage, "```"]
    if content.footer:
        lines += ["", *content.footer]
    return "\n".join(lines) + "\n"


def build_card(content: CardContent) -> ModelCard:
    """The :class:`~huggingface_hub.ModelCard` of :func:`render_card`'s markdown."""
    return ModelCard(render_card(content))


def check_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read a model card and check that it is one of ours: front matter naming the library and a licence, a title.

    Raises:
        CheckpointError: no such file, or a card without ``library_name: eo-models``, a licence or a title.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model card {path}: expected the {CARD_FILE} save_pretrained writes; save the "
                              "artifact again with save_pretrained")
    card = ModelCard.load(path)
    problems = []
    if card.data.library_name != LIBRARY:
        problems.append(f"library_name {card.data.library_name!r} (expected {LIBRARY!r})")
    if not card.data.license:
        problems.append("no license")
    if not card.text.lstrip().startswith("# "):
        problems.append("no title")
    if problems:
        raise CheckpointError(f"model card {path}: {', '.join(problems)}; expected a card written by eo-models' "
                              "save_pretrained (save the artifact again)")
    return card
