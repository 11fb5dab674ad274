"""The admin page in headless Chromium (Debian's ``chromium``, driven by Playwright).

Skipped, with the reason shown, only when the browser is not installed
(``make test`` installs it with apt-get), and never in CI (``CI=true``: it
fails). Screenshots are saved as artifacts in ``$FOUNDATION_ADMIN_ARTIFACTS``
(default: the test's temporary directory) and their paths printed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from foundation import spawn_thread
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.admin._browser import browser, playwright_api
from tests.admin.conftest import World, close_world, make_world

__all__ = ["browser"]  # the fixture (tests/admin/_browser.py)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("FOUNDATION_ADMIN_ARTIFACTS") or tmp_path / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


async def _forever(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()


def test_operator_session_in_the_browser(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    expect = playwright_api.expect
    expect.set_options(timeout=20_000)
    crashed = threading.Event()

    async def flaky(ctx: ChildContext) -> None:
        ctx.ready()
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("first run crashes")
        await asyncio.Event().wait()

    sup = Supervisor(
        [
            ChildSpec("http", _forever),
            ChildSpec("indexer", flaky),
            ChildSpec("jobs", Supervisor([ChildSpec("mailer", _forever)], name="jobs")),
        ],
        name="app",
    )
    shots: list[Path] = []
    with sup.run_in_thread() as handle:
        world: World = make_world(tmp_path, supervisors=[handle])
        try:
            _scenario(world, browser, artifacts, shots, expect)
        finally:
            close_world(world)
    print("\nadmin page screenshots:\n  " + "\n  ".join(str(s) for s in shots))
    assert all(s.stat().st_size > 10_000 for s in shots)


def _scenario(world: World, browser: Any, artifacts: Path, shots: list[Path], expect: Any) -> None:
    world.registry.register(
        "api-1", spawn_thread(world.stop.wait, name="api-1"), {"role": "api", "zone": "eu-1"}
    )
    world.registry.register(
        "api-2", spawn_thread(world.stop.wait, name="api-2"), {"role": "api", "zone": "eu-2"}
    )
    victim = world.sleeper()
    world.registry.register("batch-7", victim, {"role": "batch", "zone": "eu-1"})
    world.flags.set_percentage("new_checkout", 20, by="ana", reason="canary 20%")
    world.flags.allow("new_checkout", "qa-team", by="bo", reason="QA always sees it")

    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def shot(name: str) -> None:
        path = artifacts / f"{len(shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    page.goto(world.url)
    row = lambda name: page.locator(f'#flags tr[data-flag="{name}"]')  # noqa: E731
    # Reads are open on loopback; without a token every write control is disabled.
    expect(row("dark_mode").locator(".badge")).to_have_text("on")
    expect(row("dark_mode").locator(".toggle")).to_be_disabled()
    expect(page.locator("#live")).to_have_text("live")

    # Log in: a wrong token is refused, the right one names the operator.
    page.fill("#token", "not-the-token")
    page.click("#login")
    expect(page.locator("#message")).to_contain_text("Unauthorized")
    page.fill("#token", "ana-secret")
    page.click("#login")
    expect(page.locator("#operator")).to_have_text("ana")
    expect(row("dark_mode").locator(".toggle")).to_be_enabled()
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

    # Flip a flag with confirmation: the button stays disabled until the name is typed.
    page.fill("#reason", "dark theme breaks the invoice PDF")
    row("dark_mode").locator(".toggle").click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-word")).to_have_text("dark_mode")
    page.fill("#confirm-input", "dark")
    expect(page.locator("#confirm-ok")).to_be_disabled()
    page.fill("#confirm-input", "dark_mode")
    expect(page.locator("#confirm-ok")).to_be_enabled()
    page.click("#confirm-ok")
    expect(row("dark_mode").locator(".badge")).to_have_text("off")
    assert not world.flags.enabled("dark_mode")
    change = world.flags.history("dark_mode")[-1]
    assert (change.by, change.reason) == ("ana", "dark theme breaks the invoice PDF")
    first = page.locator("#history tbody tr").first
    expect(first).to_contain_text("dark_mode")
    expect(first).to_contain_text("ana")
    expect(first).to_contain_text("switched off")

    # Percentage and actors from the row.
    page.fill("#reason", "widen the canary")
    row("new_checkout").locator(".pct-input").fill("35")
    row("new_checkout").locator(".pct-set").click()
    expect(row("new_checkout").locator(".pct")).to_have_text("35%")
    row("new_checkout").locator(".actor-input").fill("bot-9")
    row("new_checkout").locator(".deny-btn").click()
    expect(row("new_checkout").locator(".deny")).to_have_text("bot-9")
    assert world.flags.state("new_checkout").percentage == 35.0
    assert not world.flags.enabled("new_checkout", "bot-9")

    # What does this actor get?
    page.select_option("#eval-flag", "new_checkout")
    for actor in ("qa-team", "bot-9", "user-1", "user-2"):
        page.fill("#eval-actor", actor)
        page.click("#eval-go")
        want = "ON" if world.flags.enabled("new_checkout", actor) else "OFF"
        expect(page.locator("#eval-out .badge")).to_have_text(want)
    page.fill("#eval-actor", "bot-9")
    page.click("#eval-go")
    expect(page.locator("#eval-out")).to_contain_text("the actor is in the deny set")
    shot("flag-flipped")

    # A typed flag: split actors across variants, pin one actor, ask what actors get.
    theme = row("theme")
    expect(theme.locator(".split")).to_have_text("no split (light)")
    expect(theme.locator(".variants")).to_contain_text('dark = "#101418"')
    page.fill("#reason", "try the dark themes")
    theme.locator('.share-input[data-variant="dark"]').fill("30")
    theme.locator('.share-input[data-variant="sepia"]').fill("70")
    theme.locator(".split-set").click()
    expect(theme.locator(".split")).to_have_text("dark 30% · sepia 70%")
    assert world.flags.state("theme").split == {"dark": 30.0, "sepia": 70.0}
    theme.locator(".actor-input").fill("ceo")
    theme.locator(".variant-select").select_option("light")
    theme.locator(".assign-btn").click()
    expect(theme.locator(".assign")).to_have_text("ceo \u2192 light")
    assert world.flags.variant("theme", "ceo") == "light"
    change = world.flags.history("theme")[-1]
    assert (change.by, change.reason) == ("ana", "try the dark themes")
    expect(page.locator("#history tbody tr").first).to_contain_text("assign ceo \u2192 light")
    expect(page.locator("#history tbody tr").nth(1)).to_contain_text("dark 30% · sepia 70%")
    page.select_option("#eval-flag", "theme")
    page.fill("#eval-actor", "ceo")
    page.click("#eval-go")
    expect(page.locator("#eval-out .badge")).to_have_text("light")
    expect(page.locator("#eval-out .eval-value")).to_have_text('"#ffffff"')
    expect(page.locator("#eval-out")).to_contain_text("TARGETING_MATCH")
    for actor in ("user-1", "user-2", "user-3"):
        page.fill("#eval-actor", actor)
        page.click("#eval-go")
        expect(page.locator("#eval-out .badge")).to_have_text(world.flags.variant("theme", actor))
        expect(page.locator("#eval-out")).to_contain_text("SPLIT")
    theme.locator(".actor-input").fill("ceo")
    theme.locator(".variant-select").select_option("")
    theme.locator(".assign-btn").click()
    expect(theme.locator(".assign")).to_have_text("—")
    assert world.flags.state("theme").assign == {}
    theme.locator(".deny-btn").click()
    expect(theme.locator(".deny")).to_have_text("—")
    expect(page.locator("#message")).to_contain_text("type an actor first")
    shot("typed-flag")

    # Another process changes the store: the page shows it without a reload.
    expect(row("search_v2").locator(".badge")).to_have_text("off")
    world.other_process("enable", "search_v2")
    expect(row("search_v2").locator(".badge")).to_have_text("on")
    expect(page.locator("#history tbody tr").first).to_contain_text("other-process")
    assert page.evaluate("window.__sameDocument") is True
    shot("live-change")

    # Migration: advance twice (a readiness problem blocks it first), then emergency rollback.
    world.problems.append("canary error rate 4% > 1%")
    page.click("#mig-advance")
    expect(page.locator("#message")).to_contain_text("canary error rate")
    expect(page.locator("#mig-problems")).to_contain_text("canary error rate")
    world.problems.clear()
    page.click("#mig-advance")
    expect(page.locator("#mig-stage")).to_have_text("1")
    page.click("#mig-advance")
    expect(page.locator("#mig-stage")).to_have_text("2")
    page.click("#mig-emergency")
    expect(page.locator("#confirm-word")).to_have_text("monitoring")
    page.fill("#confirm-input", "monitoring")
    page.fill("#confirm-reason", "")
    expect(page.locator("#confirm-ok")).to_be_disabled()  # an emergency needs a reason
    page.fill("#confirm-reason", "error spike on eu-1")
    page.click("#confirm-ok")
    expect(page.locator("#mig-stage")).to_have_text("0")
    assert world.migration.status().stage == 0
    event = world.migration.history()[-1]
    assert (event.action, event.by, event.reason) == (
        "emergency_rollback",
        "ana",
        "error spike on eu-1",
    )
    expect(page.locator("#mig-history tr").first).to_contain_text("emergency_rollback")

    # Agents: search, filter, counts; a killed agent leaves the list and shows why.
    expect(page.locator("#agent-counts")).to_contain_text(
        "3 shown of 3 · by kind: thread 2, process 1 · by node: local 3"
    )
    page.fill("#agent-where", "zone:eq:eu-1")
    page.click("#agent-go")
    expect(page.locator("#agents tbody tr")).to_have_count(2)
    page.fill("#agent-where", "")
    page.fill("#agent-search", "batch")
    expect(page.locator("#agents tbody tr")).to_have_count(1)
    page.fill("#agent-search", "")
    expect(page.locator("#agents tbody tr")).to_have_count(3)
    expect(page.locator('#agents tr[data-key="batch-7"]')).to_have_count(1)
    victim.send_signal(signal.SIGKILL)
    expect(page.locator('#agents tr[data-key="batch-7"]')).to_have_count(0)
    dead = page.locator('#dead tr[data-key="batch-7"]')
    expect(dead).to_contain_text("killed")
    expect(dead).to_contain_text("signal 9")

    # Supervision tree with the restart count.
    expect(page.locator('#supervision li[data-child="indexer"]')).to_contain_text("restarts: 1")
    expect(page.locator('#supervision li[data-child="mailer"]')).to_contain_text("running")
    assert page.evaluate("window.__sameDocument") is True
    page.evaluate("window.scrollTo(0, 0)")
    shot("after-emergency-and-kill")

    # Sign out: write controls are disabled again.
    page.click("#logout")
    expect(row("search_v2").locator(".toggle")).to_be_disabled()
    assert errors == []
    page.close()
