"""The chaos suite (issue 9): real redis-server faults and raising listeners,
each in processes with the interpreter's default hooks (see ``runner``).

Redis faults (``scenarios``: two node processes, each a RedisRegistry, a
RedisFlagStore-backed FeatureFlags and a Supervisor registering its children):
SIGKILL + restart empty, SIGSTOP/SIGCONT of redis-server, REPLICAOF read-only
and back, CLIENT PAUSE, DEBUG SLEEP, maxmemory OOM, and a node SIGSTOPped past
its lease. Each asserts:

- no library thread died (threads named at the baseline are alive at the end,
  and stderr shows no thread death or raw traceback outside ``foundation.``
  log records);
- no raw exception escaped (every exception of a public call is a
  ``FoundationError``);
- no healthy supervised child stopped (and the supervisor is still running);
- within ``scenarios.RECOVERY_BOUND`` (7 s) of the fault being healed, every
  node lists exactly every live agent of every node, with its owner's current
  metadata; an agent that died during the fault is listed nowhere, then or
  a lease later;
- no flag reverted (``beta``, enabled before the fault, is on everywhere with
  its history) and the kill switch pulled during the fault took effect at
  once on its node and holds everywhere after recovery (issue 9, item 6);
- ``lookup`` and ``update_metadata`` never disagree about a live key, a
  thawed node tells its listeners no false "replaced", and ``status()`` of a
  node whose write just failed does not say "connected, no error".

Raising listeners (``listeners``): on MemoryRegistry, ThreadLocalRegistry,
MigratingRegistry, RedisRegistry and on the Memory, SQLite and Redis flag
stores: every write returns and is applied, every later death or foreign
change is still seen (its thread survived), no thread died, nothing raw escaped.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos import listeners, scenarios
from tests.chaos.runner import (
    Outcome,
    ScenarioPool,
    died_threads,
    raw_exceptions,
    stray_errors,
)

HEALTHY_CHILDREN = ("healthy_task", "healthy_thread")


def _common(outcome: Outcome) -> list[str]:
    problems: list[str] = []
    if outcome.result is None:
        return [
            f"the scenario printed no result (exit {outcome.returncode}):\n"
            f"{outcome.stdout[-2000:]}\n{outcome.stderr[-4000:]}"
        ]
    if outcome.returncode != 0:
        problems.append(f"the scenario process exited with {outcome.returncode}")
    problems += [f"stderr of the scenario: {s}" for s in stray_errors(outcome.stderr)]
    return problems


def _node_problems(name: str, node: dict[str, Any]) -> list[str]:
    problems = [f"node {name} stderr: {s}" for s in stray_errors(node.get("stderr", ""))]
    if node.get("exit_code") != 0:
        problems.append(f"node {name} exited with {node.get('exit_code')}")
    final = node.get("final")
    if final is None:
        return [*problems, f"node {name} did not finish"]
    if not final["baseline_threads"]:
        problems.append(f"node {name}: no library thread at the baseline (harness defect)")
    problems += [
        f"node {name}: library thread {t!r} died"
        for t in died_threads(final["baseline_threads"], final["final_threads"])
    ]
    problems += [f"node {name}: raw exception: {e}" for e in raw_exceptions(final["exceptions"])]
    for child in HEALTHY_CHILDREN:
        info = final["children"].get(child)
        if info is None or info["status"] != "running" or info["restarts"] != 0:
            problems.append(f"node {name}: healthy child {child!r} was stopped: {info}")
    if final["supervisor_state"] != "running":
        problems.append(f"node {name}: supervisor is {final['supervisor_state']!r}")
    problems += [f"node {name}: false 'replaced' event for {k}" for k in final["false_replaced"]]
    problems += [f"node {name}: {msg}" for msg in final["inconsistent"]]
    return problems


def judge_redis_fault(outcome: Outcome) -> list[str]:
    problems = _common(outcome)
    r = outcome.result
    if r is None:
        return problems
    problems += r["problems"]
    for name, node in r["nodes"].items():
        problems += _node_problems(name, node)
    crasher = r["nodes"].get("a", {}).get("final", {}).get("children", {}).get("crasher")
    if crasher is not None and crasher["restarts"] < 1:
        problems.append(
            f"node a's crasher never restarted (the scenario proved nothing): {crasher}"
        )
    recovery = r.get("recovery")
    if recovery is None:
        problems.append("no recovery was measured")
    else:
        bound = r["recovery_bound"]
        if recovery["registry_seconds"] is None:
            problems.append(
                f"registry not recovered within {bound}s: {recovery['registry_problems'][:10]}"
            )
        if recovery["flags_seconds"] is None:
            problems.append(f"flags not recovered within {bound}s: {recovery['flag_problems']}")
        problems += [f"a lease after recovery: {p}" for p in r["late_problems"][:10]]
    during = r["during"]
    kill = during.get("disable_killable_on_a")
    if kill is None or kill["enabled"] is not False:
        problems.append(f"the kill switch pulled during the fault did not take effect: {kill}")
    if r["scenario"] == "node_frozen_past_lease":
        if not during.get("b_reaped_by_a"):
            problems.append(
                "node b's lease was never reaped by node a (the scenario proved nothing)"
            )
    else:
        probes = [during.get(f"probe_{name}") for name in r["nodes"]]
        if all(p is not None and p["registered"] for p in probes):
            problems.append("every write succeeded during the fault (the scenario proved nothing)")
        # A write failed during the fault: status() must say so (issue 9, item 2).
        for name in r["nodes"]:
            probe, status = during.get(f"probe_{name}"), during.get(f"status_{name}")
            if probe is None or status is None:
                problems.append(f"node {name} was not probed during the fault")
            elif not probe["registered"] and status["connected"] and status["last_error"] is None:
                problems.append(
                    f"node {name}: a write failed, yet status() says connected, no error: "
                    f"{status['status']}"
                )
    return problems


@pytest.mark.parametrize("scenario", sorted(scenarios.SCENARIOS))
def test_a_redis_fault_loses_nothing_and_stops_nothing(
    chaos_pool: ScenarioPool, scenario: str
) -> None:
    outcome = chaos_pool.outcome(("tests.chaos.scenarios", scenario))
    problems = judge_redis_fault(outcome)
    assert not problems, "\n".join(problems)


def judge_listener(outcome: Outcome) -> list[str]:
    problems = _common(outcome)
    r = outcome.result
    if r is None:
        return problems
    # A body cut short (a harness defect) must not pass: registries make 16
    # checks, flag stores 9-13 (the memory store has no second writer).
    if len(r["checks"]) < 9:
        problems.append(f"only {len(r['checks'])} checks ran (harness defect): {r['checks']}")
    problems += [f"failed: {name}" for name, ok in r["checks"].items() if not ok]
    problems += [f"raw exception: {e}" for e in raw_exceptions(r["exceptions"])]
    problems += [
        f"a listener's error reached the caller: {e['call']} raised {e['type']}: {e['message']}"
        for e in r["exceptions"]
        if e["foundation"]
    ]
    problems += [
        f"library thread {t!r} died"
        for t in died_threads(r["baseline_threads"], r["final_threads"])
    ]
    return problems


@pytest.mark.parametrize("backend", [*listeners.REGISTRIES, *listeners.STORES])
def test_a_raising_listener_breaks_nothing(chaos_pool: ScenarioPool, backend: str) -> None:
    outcome = chaos_pool.outcome(("tests.chaos.listeners", backend))
    problems = judge_listener(outcome)
    assert not problems, "\n".join(problems)


def test_stray_errors_finds_a_thread_death_and_allows_foundation_records() -> None:
    stderr = "\n".join(
        [
            "[log foundation.registry] ERROR t: listener failed",
            "[log foundation.registry] Traceback (most recent call last):",
            "[log foundation.registry] ValueError: boom",
            "Exception ignored in: <listener>",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in f',
            "tests.chaos._harness.ChaosListenerError: chaos: this listener always raises",
            "Exception in thread foundation-redis-tail[a]:",
            "Traceback (most recent call last):",
            "TypeError: sys.unraisablehook argument type must be UnraisableHookArgs",
        ]
    )
    found = stray_errors(stderr)
    assert len(found) == 1, found
    assert found[0].startswith("Exception in thread foundation-redis-tail[a]")
    assert stray_errors(
        "Exception ignored in: <x>\nTraceback (most recent call last):\nKeyError: 1"
    )
    asyncio_record = [
        "[log asyncio] ERROR supervisor:a: Exception in callback _on_done()",
        "[log asyncio] Traceback (most recent call last):",
        "[log asyncio] TypeError: boom",
    ]
    assert len(stray_errors("\n".join(asyncio_record))) == 1
    assert stray_errors("[log asyncio] DEBUG MainThread: Using selector: EpollSelector") == []
