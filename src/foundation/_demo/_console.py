"""Demo output: rich tables and progress with the ``cli`` extra, else plain text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["Console"]


class Console:
    """A thin printer: headings, key/value tables and a progress context."""

    def __init__(self, *, plain: bool = False) -> None:
        self._rich: Any = None
        if not plain:
            try:
                import rich.console

                console = rich.console.Console(highlight=False)
                if not console.is_terminal:  # piped or in CI: room for the tables
                    console = rich.console.Console(highlight=False, width=120)
                self._rich = console
            except ImportError:  # the cli extra is optional
                self._rich = None

    def heading(self, text: str) -> None:
        if self._rich is not None:
            self._rich.rule(f"[bold cyan]{text}")
        else:
            print(f"\n== {text} ==")

    def say(self, text: str) -> None:
        if self._rich is not None:
            self._rich.print(text)
        else:
            print(_strip_markup(text))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if self._rich is not None:
            self._rich_table(self._rich, title, columns, rows)
            return
        print(title)
        widths = [
            max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
            for i, c in enumerate(columns)
        ]
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))

    @staticmethod
    def _rich_table(
        console: Any, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> None:
        """Print the table with rich: the first column left-aligned, the others right."""
        import rich.table

        table = rich.table.Table(title=title, title_justify="left")
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        console.print(table)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Any]:
        """Yield an ``advance(n=1)`` callable."""
        if self._rich is not None:
            import rich.progress

            with rich.progress.Progress(
                rich.progress.TextColumn("{task.description}"),
                rich.progress.BarColumn(),
                rich.progress.MofNCompleteColumn(),
                rich.progress.TimeElapsedColumn(),
                console=self._rich,
                transient=False,
            ) as bar:
                task = bar.add_task(description, total=total)
                yield lambda n=1: bar.advance(task, n)
            return
        print(f"{description} ({total}) ...")
        yield lambda n=1: None


def _strip_markup(text: str) -> str:
    import re

    return re.sub(r"\[/?[a-z ]+\]", "", text)
