"""Run every benchmark side by side and print/write a table of ratios.

python -m benchmarks            # everything
python -m benchmarks registry   # only modules whose name contains "registry"
"""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys
import time
from pathlib import Path

from benchmarks._harness import Row

RESULTS = Path(__file__).parent / "results"


def _modules(selected: list[str]) -> list[str]:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    if selected:
        names = [n for n in names if any(s in n for s in selected)]
    return names


def _format(rows: list[Row]) -> str:
    lines = [
        "| section | what | against | measured | target | result | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "info" if r.passed is None else ("PASS" if r.passed else "FAIL")
        value = f"{r.value:.2f}{r.unit}" if r.value < 1000 else f"{r.value:,.0f}{r.unit}"
        cells = [r.section, r.what, r.against, value, r.target, verdict, r.detail]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    rows: list[Row] = []
    for name in _modules(argv):
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(module.run())
    table = _format(rows)
    header = (
        f"# Foundation benchmarks\n\n{time.strftime('%Y-%m-%d %H:%M:%S')} on "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}. Ratios are measured side by side in one run.\n\n"
    )
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(header + table + "\n")
    failed = [r for r in rows if r.passed is False]
    print(f"\n{len(rows) - len(failed)} rows ok, {len(failed)} below target", file=sys.stderr)
    print(f"written to {RESULTS / 'latest.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
