"""Measured figures and checked invariants, summarised at the end of the demo."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Scoreboard"]


@dataclass
class Scoreboard:
    """Collects ``figure`` rows (what was measured) and ``check`` rows (invariants)."""

    figures: list[tuple[str, str]] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def figure(self, name: str, value: str) -> None:
        self.figures.append((name, value))

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        return ok

    @property
    def failed(self) -> list[tuple[str, bool, str]]:
        return [c for c in self.checks if not c[1]]
