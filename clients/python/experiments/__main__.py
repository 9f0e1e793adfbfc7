# SPDX-License-Identifier: MIT
"""python3 -m experiments: run the papers' experiments through curvd.

    make reproduce                       # the defaults, about an hour on 2 cores
    PYTHONPATH=clients/python python3 -m experiments --curvd build/curvd --full

See clients/python/experiments/__init__.py and docs/results/README.md.
"""

import os
import signal
import sys

# Idle OpenMP threads sleep instead of spinning: on a machine shared with
# other work, spinning threads of a 2-thread torch made the small CNN's
# evaluation ten times slower (measured). Set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

# SIGTERM unwinds like an exception, so that the daemon is stopped and the
# temporary database removed.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
sys.exit(main(sys.argv[1:]))
