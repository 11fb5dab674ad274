"""Start writer processes at the same instant and collect what they printed.

Each process prints ``ready`` once set up, then waits for ``go`` on stdin, so
none runs ahead while the others are still starting.
"""

from __future__ import annotations

import subprocess


def run_together(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[str, str]]:
    """``go`` to every process once all said ``ready``; each one's (stdout, stderr).
    A process still running when this fails is killed."""
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
