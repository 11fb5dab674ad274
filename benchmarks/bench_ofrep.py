"""OFREP round trips against a real admin server process, side by side.

The admin server (``foundation.admin.serve``, uvicorn) runs in a subprocess on
a free loopback port, with a bearer token, over 20 boolean flags and 4 typed
flags. From this process, interleaved in rounds so noise hits every side:

- a boolean flag with an actor (50% rollout) through the OpenFeature SDK
  client with ``OFREPProvider`` (``openfeature-provider-ofrep``: requests,
  keep-alive session) - the number a Python service calling OFREP sees;
- the same ``POST /ofrep/v1/evaluate/flags/{key}`` with a bare keep-alive
  ``http.client`` connection (the server's share of the round trip);
- a string-variant flag with an actor (split 3 ways) through the SDK client;
- the bulk ``POST /ofrep/v1/evaluate/flags`` (all 24 flags), and the same with
  ``If-None-Match`` answered 304;
- ``GET /healthz`` on the same kind of connection: the floor of one HTTP round
  trip on this server, which every ratio is against.

Reported as p50 and p99 latency per call (informational: a round trip has no
target); each row's detail gives its ratio to the ``/healthz`` floor.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._harness import Row

SECTION = "ofrep"
REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-secret"
ROUNDS = 5
PER_ROUND = 400

_SERVER = """
from foundation.admin import serve
from foundation.flags import FeatureFlags, Flag
declared = [Flag(f"flag_{i:02d}", default=i % 2 == 0, description=f"flag {i}") for i in range(20)]
declared += [
    Flag("color", variants={"red": "#f00", "blue": "#00f", "green": "#0f0"}, default="red"),
    Flag("retries", variants={"few": 2, "many": 9}, default="few"),
    Flag("ratio", variants={"low": 0.25, "high": 2.5}, default="low"),
    Flag("limits", variants={"free": {"rps": 5}, "pro": {"rps": 500}}, default="free"),
]
flags = FeatureFlags(declared)
flags.set_percentage("flag_01", 50)
flags.set_split("color", {"red": 20, "blue": 30, "green": 50})
serve(flags=flags, token="bench:TOKEN", bind="127.0.0.1:0",
      on_ready=lambda url: print(url, flush=True))
flags.close()
""".replace("TOKEN", TOKEN)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # blocks until on_ready prints the URL
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"the admin server did not start: {line!r}")
        self.url = line
        host_port = line.removeprefix("http://").rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _timed(call: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def run() -> list[Row]:
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext

    server = _Server()
    provider = OFREPProvider(
        server.url, headers_factory=lambda: {"Authorization": f"Bearer {TOKEN}"}
    )
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        api.set_provider_and_wait(provider)
        client = api.get_client()
        contexts = [EvaluationContext(targeting_key=f"user-{i}") for i in range(1000)]
        bodies = [json.dumps({"context": {"targetingKey": f"user-{i}"}}) for i in range(1000)]
        i = 0

        def sdk_boolean() -> None:
            nonlocal i
            i += 1
            details = client.get_boolean_details("flag_01", False, contexts[i % 1000])
            assert details.error_code is None, details.error_message

        def sdk_string() -> None:
            nonlocal i
            i += 1
            details = client.get_string_details("color", "none", contexts[i % 1000])
            assert details.error_code is None, details.error_message

        def request(method: str, path: str, body: str | None, extra: dict[str, str]) -> int:
            conn.request(method, path, body=body, headers={**headers, **extra})
            response = conn.getresponse()
            response.read()
            return response.status

        def raw_single() -> None:
            nonlocal i
            i += 1
            assert request("POST", "/ofrep/v1/evaluate/flags/flag_01", bodies[i % 1000], {}) == 200

        bulk_body = bodies[7]
        conn.request("POST", "/ofrep/v1/evaluate/flags", body=bulk_body, headers=headers)
        first = conn.getresponse()
        etag = first.getheader("ETag") or ""
        first.read()

        def bulk() -> None:
            assert request("POST", "/ofrep/v1/evaluate/flags", bulk_body, {}) == 200

        def bulk_304() -> None:
            status = request("POST", "/ofrep/v1/evaluate/flags", bulk_body, {"If-None-Match": etag})
            assert status == 304

        def healthz() -> None:
            assert request("GET", "/healthz", None, {}) == 200

        sides: dict[str, tuple[str, Callable[[], None]]] = {
            "sdk_bool": ("boolean flag + actor, OpenFeature client + OFREPProvider", sdk_boolean),
            "raw": ("POST /ofrep/v1/evaluate/flags/{key}, bare keep-alive http.client", raw_single),
            "sdk_str": (
                "string-variant flag + actor, OpenFeature client + OFREPProvider",
                sdk_string,
            ),
            "bulk": ("bulk POST /ofrep/v1/evaluate/flags (24 flags)", bulk),
            "bulk304": ("bulk with If-None-Match (304 Not Modified)", bulk_304),
            "floor": ("GET /healthz", healthz),
        }
        for _, call in sides.values():  # warm up every path
            conn.close()
            conn.connect()
            _timed(call, 50)
        samples: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(ROUNDS):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for key in order:
                # uvicorn drops a keep-alive connection idle for 5 s (while the other
                # sides run): open a fresh one, untimed, before each batch.
                conn.close()
                conn.connect()
                samples[key] += _timed(sides[key][1], PER_ROUND)
    finally:
        conn.close()
        api.shutdown()
        provider.session.close()
        server.close()

    rows: list[Row] = []
    floor = samples.pop("floor")
    for label, q in (("p50", 0.50), ("p99", 0.99)):
        base = _percentile(floor, q)
        for key, values in samples.items():
            mine = _percentile(values, q)
            rows.append(
                Row(
                    SECTION,
                    f"{sides[key][0]}, {label}",
                    "GET /healthz round trip (floor)",
                    mine * 1e3,
                    " ms",
                    "info",
                    None,
                    f"{len(values)} samples; {mine / base:.2f}x the floor "
                    f"({base * 1e3:.3f} ms); server in another process",
                )
            )
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row.what:<80} {row.value:8.3f}{row.unit}  {row.detail}")
