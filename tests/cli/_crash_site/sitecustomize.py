"""Imported at the start of every CLI child of the tests (``cli_env`` puts this
directory first on ``PYTHONPATH``): a crash of the interpreter itself prints the
stack of the thread that crashed.

``PYTHONFAULTHANDLER=1`` prints every thread's stack, newest first, and stops
after 100 threads: a demo child (part 4 runs a hundred agent threads) that died
of SIGSEGV in CI printed 100 threads and never the crashing one. Only the
crashing thread is printed here ("Current thread ..."), which names the culprit.
"""

from __future__ import annotations

import faulthandler
import os
import sys

if os.environ.get("PYTHONFAULTHANDLER"):
    faulthandler.enable(file=sys.stderr, all_threads=False)

# A sitecustomize further on the path (the environment's own) still runs.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_this = sys.modules.pop(__name__)
try:
    import sitecustomize  # noqa: F401
except ImportError:
    pass
finally:
    sys.modules[__name__] = _this  # the import system takes it back from there
