#!/bin/sh
# Run the Python client's suites (pytest) against a real curvd, which the
# fixtures start on loopback ports with temporary databases. CURVD_BIN
# names the daemon (default: build/curvd). Extra arguments go to pytest.
#   clients/python/run-tests.sh            # everything, about 30 s
#   clients/python/run-tests.sh -k ggn     # one area
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
CURVD_BIN=${CURVD_BIN:-$root/build/curvd}
export CURVD_BIN
if [ ! -x "$CURVD_BIN" ]; then
    echo "run-tests: no curvd at $CURVD_BIN (make build/curvd)" >&2
    exit 1
fi
# One BLAS/torch thread each: the daemon and the tests share the machine.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
cd "$root"
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider clients/python/tests "$@"
