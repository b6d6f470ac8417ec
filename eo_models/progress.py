"""A rich progress bar for long model work (training steps, tokenized blocks), or nothing when disabled."""

from __future__ import annotations

from typing import Any


class Progress:
    """Bars with a free ``info`` field; every method is a no-op when ``enabled`` is False."""

    def __init__(self, enabled: bool, unit: str = "") -> None:
        self.bar: Any = None
        self.task: Any = None
        if enabled:
            from rich import progress as rp

            columns = [rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn()]
            columns += [rp.TextColumn(unit)] if unit else []
            columns += [rp.TimeRemainingColumn(), rp.TextColumn("{task.fields[info]}")]
            self.bar = rp.Progress(*columns)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def add(self, what: str, total: int, done: int = 0) -> None:
        """Start a new bar (the one :meth:`advance` moves)."""
        if self.bar is not None:
            self.task = self.bar.add_task(what, total=total, completed=done, info="")

    def advance(self, info: str = "") -> None:
        """One step done."""
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)
