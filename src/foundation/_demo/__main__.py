"""``python -m foundation._demo``: the same as ``foundation demo``."""

import sys

from foundation.cli import main

sys.exit(main(["demo", *sys.argv[1:]]))
