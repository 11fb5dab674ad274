"""Every ```python block of README.md and docs/contract.md passes ``mypy --strict``.

Users paste these examples into typed code bases: an example that needs a
``# type: ignore`` there (an ``Optional`` read as if always set, an untyped
``ctx``) teaches the wrong thing. One mypy run checks them all, each block a
module of its own (the blocks come from ``tests.test_readme``'s parser, so
the two suites always see the same blocks).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_readme import DOCUMENTS, parse


def test_every_python_block_passes_mypy_strict(tmp_path: Path) -> None:
    modules = []
    for document in DOCUMENTS:
        for block in parse(document):
            if block.lang != "python":
                continue
            module = tmp_path / f"{document.stem.lower()}_line_{block.line}.py"
            module.write_text(block.text)
            modules.append(module)
    assert len(modules) >= 10, "the parser found too few python blocks"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *(module.name for module in modules),
        ],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
