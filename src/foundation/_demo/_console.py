"""Demo output: rich tables and progress with the ``cli`` extra, else plain text.

stdout that fails (a full disk, ``> /dev/full``; its reader gone, ``| head -1``)
ends the demo as any command's output ends it (``_cli._common.stdout_failed``):
``StdoutError`` (exit 1, one line) or ``StdoutGone`` (141, quietly), raised at
the first failed write, so each part stops what it started as for any error;
the output after it is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["Console"]


def _rich_console() -> Any:
    """rich's console (the ``cli`` extra), or None without it.

    rich answers a closed pipe (EPIPE) with ``SystemExit(1)`` and nothing said
    (``on_broken_pipe``): here it raises, so the demo ends as any command does."""
    try:
        import rich.console
    except ImportError:  # the cli extra is optional
        return None

    class _Console(rich.console.Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError("stdout's reader went away")

    console = _Console(highlight=False)
    if not console.is_terminal:  # piped or in CI: room for the tables
        console = _Console(highlight=False, width=120)
    return console


class Console:
    """A thin printer: headings, key/value tables and a progress context."""

    def __init__(self, *, plain: bool = False) -> None:
        self._rich: Any = None if plain else _rich_console()
        self._failed = False  # stdout failed once: the rest of the output is dropped

    def _write(self, write: Callable[[], object]) -> None:
        """Run ``write`` (one piece of output); stdout that fails ends the demo (see above)."""
        if self._failed:
            return
        try:
            write()
        except OSError as exc:
            self._drop_the_rest()
            from foundation._cli._common import stdout_failed

            stdout_failed(exc, "the demo's output")

    def _drop_the_rest(self) -> None:
        self._failed = True
        if self._rich is not None:
            self._rich.quiet = True  # what rich still holds goes nowhere

    def heading(self, text: str) -> None:
        if self._rich is not None:
            self._write(lambda: self._rich.rule(f"[bold cyan]{text}"))
        else:
            self._write(lambda: print(f"\n== {text} ==", flush=True))

    def say(self, text: str) -> None:
        if self._rich is not None:
            self._write(lambda: self._rich.print(text))
        else:
            self._write(lambda: print(_strip_markup(text), flush=True))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if self._rich is not None:
            self._write(lambda: self._rich_table(self._rich, title, columns, rows))
        else:
            self._write(lambda: self._plain_table(title, columns, rows))

    @staticmethod
    def _plain_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        print(title)
        widths = [
            max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
            for i, c in enumerate(columns)
        ]
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        print(end="", flush=True)  # a failure shows here, in _write

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

            bar = rich.progress.Progress(
                rich.progress.TextColumn("{task.description}"),
                rich.progress.BarColumn(),
                rich.progress.MofNCompleteColumn(),
                rich.progress.TimeElapsedColumn(),
                console=self._rich,
                transient=False,
            )
            try:
                self._write(bar.start)
                task = bar.add_task(description, total=total)
                yield lambda n=1: bar.advance(task, n)
            except BaseException:
                try:
                    bar.stop()
                except OSError:  # the error that ends the block stands
                    self._drop_the_rest()
                raise
            self._write(bar.stop)
            return
        self._write(lambda: print(f"{description} ({total}) ...", flush=True))
        yield lambda n=1: None


def _strip_markup(text: str) -> str:
    import re

    return re.sub(r"\[/?[a-z ]+\]", "", text)
