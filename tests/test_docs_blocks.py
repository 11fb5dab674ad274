"""The rest of the documentation runs as written: blocks, commands and links.

``tests/test_readme.py`` runs the python blocks of README.md and
docs/contract.md. This file covers what it leaves out, as a new user would
meet it:

- the python blocks of every other ``docs/*.md`` page, with the same markers
  (``<!-- readme-test: redis -->`` starts a private ``redis-server``);
- that together the two files run every Markdown page of the repository;
- the README's ``$ foundation ...`` transcript, command by command;
- every command and option the README lists for the ``foundation`` command;
- the README's ``[cli]`` table (accepted) and its rule for unknown keys;
- every link: relative, resolving to a file of the repository and, for an
  anchor, to a heading of the target page.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_readme import DOCUMENTS as README_TEST_DOCUMENTS
from tests.test_readme import Block, parse

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ALL_DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
OTHER_DOCUMENTS = [d for d in ALL_DOCUMENTS if d not in README_TEST_DOCUMENTS]

_REDIS_URL = re.compile(r"rediss?://[^\s\"']+")
_TIMEOUT = 90.0
_FOUNDATION = Path(sys.executable).parent / "foundation"


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_")}
    # A node copy (RedisFlagStore's default cache_path) goes under the test's own directory.
    env["HOME"] = str(tmp_path)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env


def _python_blocks() -> list[Block]:
    found = []
    for document in OTHER_DOCUMENTS:
        for block in parse(document):
            kind = (block.marker or "run").split(maxsplit=1)[0]
            assert kind in {"run", "redis"}, f"{block.label}: marker {block.marker!r} not handled"
            if block.lang == "python":
                found.append(block)
    return found


BLOCKS = _python_blocks()


def test_every_markdown_page_is_run_by_one_of_the_two_files() -> None:
    assert set(README_TEST_DOCUMENTS) | set(OTHER_DOCUMENTS) == set(ALL_DOCUMENTS)
    assert not set(README_TEST_DOCUMENTS) & set(OTHER_DOCUMENTS)
    pages = {b.document.name for b in BLOCKS}
    assert {"keys-and-metadata.md", "flags-outages.md", "redis.md"} <= pages


@pytest.mark.parametrize("block", BLOCKS, ids=[b.label for b in BLOCKS])
def test_python_block_of_a_docs_page_runs_as_written(block: Block, tmp_path: Path) -> None:
    source = block.text
    if block.marker == "redis":
        from tests.redis_support import RedisServer

        with RedisServer() as server:
            source = _REDIS_URL.sub(server.url, block.text)
            assert source != block.text, f"{block.label}: marked redis but names no redis:// URL"
            result = _run_python(source, tmp_path)
    else:
        result = _run_python(source, tmp_path)
    assert result.returncode == 0, f"{block.label}:\n{result.stdout}\n{result.stderr}"


def _run_python(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "block.py"
    script.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )


# --- the foundation command ---------------------------------------------------------


def _foundation(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert _FOUNDATION.exists(), f"{_FOUNDATION} missing: install the package ('cli' extra)"
    return subprocess.run(
        [str(_FOUNDATION), *args],
        cwd=tmp_path,
        env={**_clean_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )


def _readme_blocks() -> list[Block]:
    return parse(README)


def _transcript() -> list[tuple[str, list[str]]]:
    """The README's ``$ foundation ...`` lines, each with the lines it prints."""
    blocks = [b for b in _readme_blocks() if b.text.startswith("$ foundation ")]
    assert len(blocks) == 1, "expected one transcript block in the README"
    steps: list[tuple[str, list[str]]] = []
    for line in blocks[0].text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def test_the_readme_transcript_of_the_foundation_command_is_what_it_prints(
    tmp_path: Path,
) -> None:
    # The README's setting: a string flag `color`, variants red ("#f00", the
    # default) and blue ("#00f"), declared by an application in the store.
    declare = (
        "from foundation import FeatureFlags, Flag, SQLiteFlagStore\n"
        "FeatureFlags([Flag('color', variants={'red': '#f00', 'blue': '#00f'},"
        " default='red')], store=SQLiteFlagStore('flags.db')).close()\n"
    )
    assert _run_python(declare, tmp_path).returncode == 0
    steps = _transcript()
    assert len(steps) >= 4
    for command, expected in steps:
        argv = shlex.split(command)
        assert argv[0] == "foundation"
        # The transcript is a terminal session: text, not the JSON a pipe gets.
        result = _foundation([*argv[1:], "--text"], tmp_path, FOUNDATION_STORE="sqlite:///flags.db")
        printed = (result.stdout + result.stderr).splitlines()
        assert printed == expected, f"$ {command}\n{result.stdout}{result.stderr}"


def _listed_commands() -> list[tuple[list[str], list[str]]]:
    """Each ``foundation ...`` line of the README's plain blocks: (subcommand words, options)."""
    listed = []
    for block in _readme_blocks():
        if block.lang or block.text.startswith("$ "):
            continue
        for line in block.text.splitlines():
            if not line.startswith("foundation "):
                continue
            usage = re.split(r"\s{2,}", line.strip())[0]  # the description follows two spaces
            words = usage.split()[1:]
            subcommand = []
            for word in words:
                if not re.fullmatch(r"[a-z]+", word):
                    break
                subcommand.append(word)
            options = re.findall(r"--[a-z][a-z-]*", usage)
            listed.append((subcommand, options))
    return listed


LISTED = _listed_commands()


def test_the_readme_lists_every_command_group() -> None:
    groups = {tuple(words[:1]) for words, _ in LISTED}
    assert {("flags",), ("migration",), ("agents",)} <= groups
    assert len(LISTED) >= 20


@pytest.mark.parametrize(("subcommand", "options"), LISTED, ids=[" ".join(w) for w, _ in LISTED])
def test_each_listed_command_exists_with_its_options(
    subcommand: list[str], options: list[str], tmp_path: Path
) -> None:
    result = _foundation([*subcommand, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    usage = result.stdout
    assert usage.startswith(f"usage: foundation {' '.join(subcommand)}"), usage
    for option in options:
        assert option in usage, f"foundation {' '.join(subcommand)}: no {option}\n{usage}"


def test_other_commands_and_options_the_readme_names_exist(tmp_path: Path) -> None:
    top = _foundation(["--help"], tmp_path).stdout
    for option in ("--json", "--text", "--debug", "--store", "--redis", "--namespace"):
        assert option in top
    admin = _foundation(["admin", "--help"], tmp_path).stdout
    for option in ("--bind", "--token", "--read-only", "--plan"):
        assert option in admin
    demo = _foundation(["demo", "--help"], tmp_path).stdout
    for option in ("--chaos", "--admin", "--redis", "--plain"):
        assert option in demo
    for command in (["flags", "enable"], ["migration", "advance"]):
        usage = _foundation([*command, "--help"], tmp_path).stdout
        assert "--by" in usage
        assert "--reason" in usage
    version = _foundation(["version"], tmp_path)
    assert version.returncode == 0
    assert "0.1.0" in version.stdout


def test_the_cli_table_of_the_readme_is_accepted_and_unknown_keys_are_refused(
    tmp_path: Path,
) -> None:
    tables = [b for b in _readme_blocks() if b.lang == "toml" and b.text.startswith("[cli]")]
    assert len(tables) == 1
    (tmp_path / "foundation.toml").write_text(tables[0].text, encoding="utf-8")
    result = _foundation(["flags", "list"], tmp_path)
    # The store it names does not exist here, and no command ever creates one.
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "/var/lib/shop/flags.db" in result.stderr, result.stderr

    (tmp_path / "foundation.toml").write_text('[cli]\nstor = "x"\n', encoding="utf-8")
    result = _foundation(["flags", "list"], tmp_path)
    assert result.returncode != 0
    assert "stor" in result.stderr, result.stderr


def test_the_documented_error_line_and_exit_codes(tmp_path: Path) -> None:
    declare = (
        "from foundation import FeatureFlags, Flag, SQLiteFlagStore\n"
        "FeatureFlags([Flag('beta')], store=SQLiteFlagStore('flags.db')).close()\n"
    )
    assert _run_python(declare, tmp_path).returncode == 0
    result = _foundation(["flags", "enable", "btea"], tmp_path, FOUNDATION_STORE="flags.db")
    assert result.returncode == 1
    assert result.stderr == "UnknownFlag: unknown flag 'btea' (did you mean 'beta'?)\n"
    debug = _foundation(
        ["--debug", "flags", "enable", "btea"], tmp_path, FOUNDATION_STORE="flags.db"
    )
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    usage = _foundation(["flags", "nosuch"], tmp_path, FOUNDATION_STORE="flags.db")
    assert usage.returncode == 2
    # Piped (not a terminal): JSON.
    piped = _foundation(["flags", "list"], tmp_path, FOUNDATION_STORE="flags.db")
    assert piped.returncode == 0
    assert piped.stdout.lstrip().startswith(("{", "["))


# --- links ----------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)\s*\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(document: Path) -> set[str]:
    anchors = set()
    in_code = False
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def _links() -> list[tuple[Path, str]]:
    found = []
    for document in ALL_DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code is not linked
        found += [(document, m[1]) for m in _LINK.finditer(text)]
    return found


LINKS = _links()


def test_the_documents_have_links() -> None:
    assert len(LINKS) >= 30


@pytest.mark.parametrize(("document", "target"), LINKS, ids=[f"{d.name}->{t}" for d, t in LINKS])
def test_each_link_stays_in_the_repository_and_resolves(document: Path, target: str) -> None:
    assert "://" not in target, target
    assert not target.startswith(("mailto:", "//")), target
    path, _, anchor = target.partition("#")
    resolved = (document.parent / path).resolve() if path else document
    assert resolved.is_relative_to(REPO), f"{document.name}: {target} leaves the repository"
    assert resolved.exists(), f"{document.name}: {target} does not exist"
    if anchor:
        assert anchor in _anchors(resolved), f"{document.name}: no heading for #{anchor}"


# --- outputs promised in comments -----------------------------------------------------


def _commented_print_blocks() -> list[Block]:
    """Unmarked python blocks whose every ``print(...)`` line says its output in a comment."""
    found = []
    for document in ALL_DOCUMENTS:
        for block in parse(document):
            if block.lang != "python" or block.marker is not None:
                continue
            prints = [ln for ln in block.text.splitlines() if ln.lstrip().startswith("print(")]
            if prints and all("  # " in ln for ln in prints):
                found.append(block)
    return found


COMMENTED = _commented_print_blocks()


def test_the_blocks_with_commented_outputs_are_found() -> None:
    assert len(COMMENTED) >= 2  # the typed flags and OpenFeature examples of the README


@pytest.mark.parametrize("block", COMMENTED, ids=[b.label for b in COMMENTED])
def test_each_print_prints_what_its_comment_says(block: Block, tmp_path: Path) -> None:
    # "print(x)  # 20: the default variant" promises the line "20".
    claims = [
        ln.split("  # ", 1)[1].strip()
        for ln in block.text.splitlines()
        if ln.lstrip().startswith("print(")
    ]
    result = _run_python(block.text, tmp_path)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert len(printed) == len(claims), result.stdout
    for line, claim in zip(printed, claims, strict=True):
        assert line, claim
        assert claim.startswith(line), (
            f"{block.label}: printed {line!r}, the comment says {claim!r}"
        )
