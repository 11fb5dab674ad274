"""Every ```python block of README.md and docs/contract.md runs as written.

Each block runs on its own, in a subprocess (``sys.executable``, the default
hooks), in a fresh temporary directory, and must exit 0. An HTML comment on
the line before a block says how to run it; without one it simply runs:

- ``<!-- readme-test: file NAME -->`` before any block: the block is the
  content of the file NAME, written into the directory of every python block
  of that document (the flags quickstart reads ``foundation.toml``);
- ``<!-- readme-test: redis -->``: a real ``redis-server`` is started on a
  free port (``tests.redis_support``) and every ``redis://`` URL in the block
  is replaced by its URL;
- ``<!-- readme-test: sigterm after TEXT -->``: the block is a program that
  serves until signalled: once its stdout shows TEXT it gets SIGTERM and must
  then exit 0;
- ``<!-- readme-test: stdout -->`` before a plain block: it is the exact
  stdout of the python block just above it;
- ``<!-- readme-test: skip REASON -->``: not run; reported as skipped with the
  reason (``pytest -ra`` lists them). Only for what cannot run on one machine.

A marker this file does not know, or one that is not followed by a block,
fails the suite.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", REPO / "docs" / "contract.md"]

_MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<what>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
_REDIS_URL = re.compile(r"rediss?://[^\s\"']+")
_TIMEOUT = 90.0


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None

    @property
    def label(self) -> str:
        return f"{self.document.name}:{self.line}"


def parse(document: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the marker on the line before it."""
    lines = document.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i])
        if marker:
            if pending is not None:
                raise AssertionError(f"{document.name}:{pending[0]}: a marker without a block")
            pending = (i + 1, marker["what"])
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if fence:
            end = i + 1
            while end < len(lines) and lines[end].rstrip() != "```":
                end += 1
            if end == len(lines):
                raise AssertionError(f"{document.name}:{i + 1}: unclosed code block")
            text = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(document, i + 1, fence["lang"], text, pending and pending[1]))
            pending = None
            i = end + 1
            continue
        if pending is not None and lines[i].strip():
            raise AssertionError(f"{document.name}:{pending[0]}: marker not followed by a block")
        i += 1
    if pending is not None:
        raise AssertionError(f"{document.name}:{pending[0]}: marker not followed by a block")
    return blocks


def _kind(marker: str | None) -> str:
    if marker is None:
        return "run"
    word = marker.split(maxsplit=1)[0]
    if word not in {"file", "redis", "sigterm", "stdout", "skip"}:
        raise AssertionError(f"unknown readme-test marker {marker!r}")
    return word


def _python_blocks() -> list[Block]:
    found = []
    for document in DOCUMENTS:
        for block in parse(document):
            kind = _kind(block.marker)  # validates every marker, on every block
            if block.lang == "python" and kind != "file":
                found.append(block)
    return found


def _files(document: Path) -> dict[str, str]:
    files = {}
    for block in parse(document):
        if block.marker and _kind(block.marker) == "file":
            files[block.marker.split(maxsplit=1)[1].strip()] = block.text
    return files


def _expected_stdout(block: Block) -> str | None:
    blocks = parse(block.document)
    following = blocks[blocks.index(block) + 1 :]
    if following and following[0].marker and _kind(following[0].marker) == "stdout":
        return following[0].text
    return None


def _clean_env() -> dict[str, str]:
    # A developer's FOUNDATION_FLAG_* or FOUNDATION_STORE must not change what a block does.
    return {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_")}


def _run(block: Block, tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    for name, content in _files(block.document).items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    script = tmp_path / "block.py"
    script.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )


def _run_until_then_sigterm(block: Block, tmp_path: Path, text: str) -> tuple[int, str, str]:
    for name, content in _files(block.document).items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    script = tmp_path / "block.py"
    script.write_text(block.text, encoding="utf-8")
    out: list[str] = []
    err: list[str] = []
    seen = threading.Event()
    with subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        stdout_pipe, stderr_pipe = proc.stdout, proc.stderr
        assert stdout_pipe is not None
        assert stderr_pipe is not None

        def read_stdout() -> None:
            for line in stdout_pipe:
                out.append(line)
                if text in line:
                    seen.set()
            seen.set()  # EOF: the program ended (or died) without the text

        readers = [
            threading.Thread(target=read_stdout),
            threading.Thread(target=lambda: err.extend(stderr_pipe)),
        ]
        for reader in readers:
            reader.start()
        try:
            seen.wait(_TIMEOUT)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for reader in readers:
                reader.join(_TIMEOUT)
    stdout = "".join(out)
    assert text in stdout, f"{block.label}: never printed {text!r}:\n{stdout}\n{''.join(err)}"
    return code, stdout, "".join(err)


BLOCKS = _python_blocks()


def test_the_documents_have_python_blocks_and_only_known_markers() -> None:
    assert len(BLOCKS) >= 8
    readme = [b for b in BLOCKS if b.document.name == "README.md"]
    assert readme, "README.md has no python block"
    files = _files(REPO / "README.md")
    assert "foundation.toml" in files  # the flags quickstart's config, shown in the README


@pytest.mark.parametrize("block", BLOCKS, ids=[b.label for b in BLOCKS])
def test_python_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    kind = _kind(block.marker)
    assert block.marker is None or kind != "stdout", f"{block.label}: stdout marks a plain block"
    if kind == "skip":
        assert block.marker is not None
        reason = block.marker.removeprefix("skip").strip()
        assert reason, f"{block.label}: a skip needs a reason"
        pytest.skip(f"{block.label}: {reason}")
    if kind == "sigterm":
        assert block.marker is not None
        text = block.marker.split("after", 1)[1].strip().strip("\"'")
        code, stdout, stderr = _run_until_then_sigterm(block, tmp_path, text)
        assert code == 0, f"{block.label}: exit {code}\n{stdout}\n{stderr}"
        return
    if kind == "redis":
        from tests.redis_support import RedisServer

        with RedisServer() as server:
            source = _REDIS_URL.sub(server.url, block.text)
            assert source != block.text, f"{block.label}: marked redis but names no redis:// URL"
            result = _run(block, tmp_path, source)
    else:
        result = _run(block, tmp_path, block.text)
    assert result.returncode == 0, f"{block.label}:\n{result.stdout}\n{result.stderr}"
    expected = _expected_stdout(block)
    if expected is not None:
        assert result.stdout == expected
