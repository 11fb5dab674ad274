"""``python -m foundation._demo``."""

import sys

from foundation._demo import main

sys.exit(main(sys.argv[1:]))
