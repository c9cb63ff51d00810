#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs the project and whatever
# system components the tests need, then runs pytest (all tests, slow ones included).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The whole run (installs included) must end inside CI's 90 minutes with a report: pytest
# gets what is left of KO_TEST_BUDGET seconds, then an interrupt (it prints the failures
# and stacks so far), then a kill. pytest-timeout bounds each test on its own.
budget=${KO_TEST_BUDGET:-5100}
bash scripts/install.sh
# Quality gates first: they are fast and their failures are cheap to read.
.venv/bin/ruff check orchestrator provisioners tests bench
.venv/bin/mypy
# The Kubernetes tests' cluster is built from source once per machine (about 6 minutes,
# cached): built here, so no test's timeout runs while it compiles.
if [ "$(id -u)" = 0 ]; then
    bash scripts/kube/build.sh >/dev/null
fi
left=$((budget - SECONDS))
if [ "$left" -lt 600 ]; then
    echo "test.sh: only ${left}s of the ${budget}s budget left after the installs" >&2
    exit 1
fi
exec timeout --signal=INT --kill-after=120 "$left" .venv/bin/python -m pytest -q -rs --durations=30 "$@"
