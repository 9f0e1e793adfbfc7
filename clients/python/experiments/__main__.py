# SPDX-License-Identifier: MIT
"""python3 -m experiments: run the papers' experiments through curvd.

    make reproduce                       # the defaults, about an hour on 2 cores
    PYTHONPATH=clients/python python3 -m experiments --curvd build/curvd --full

See clients/python/experiments/__init__.py and docs/results/README.md.
"""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
