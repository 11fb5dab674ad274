"""A flag node in its own OS process (driven by tests and the benchmark).

python -m tests.redis_flags._node URL NAMESPACE [CACHE_PATH]

``CACHE_PATH`` is the node's copy of the flags (absent or empty: in memory only).

Prints ``ready``, then ``change <flag> <enabled> <monotonic ns>`` whenever a
change made elsewhere reaches its FeatureFlags, and answers commands read from
stdin, one per line, with ``= <answer>``: ``enabled <flag>``, ``enable <flag>``,
``disable <flag>``, ``quit``.
"""

from __future__ import annotations

import sys
import time

from foundation.flags import FeatureFlags, Flag, FlagChange, RedisFlagStore

FLAGS = (Flag("beta"), Flag("gamma"), Flag("kill_switch", default=True))


def main(url: str, namespace: str, cache_path: str) -> None:
    store = RedisFlagStore(url, namespace=namespace, cache_path=cache_path or None)
    flags = FeatureFlags(FLAGS, store=store)

    def on_change(change: FlagChange) -> None:
        # Listeners run after the local cache is rebuilt: enabled() is already current.
        seen = flags.enabled(change.flag)
        print(f"change {change.flag} {seen} {time.monotonic_ns()}", flush=True)

    flags.subscribe(on_change)
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "quit":
                break
            if command == "enabled":
                print(f"= {flags.enabled(arg)}", flush=True)
            elif command == "enable":
                flags.enable(arg, by="node-b")
                print("= done", flush=True)
            elif command == "disable":
                flags.disable(arg, by="node-b")
                print("= done", flush=True)
            else:
                print(f"= unknown command {command!r}", flush=True)
    finally:
        flags.close()
        store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
