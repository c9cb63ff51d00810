#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs the project and whatever
# system components the tests need, then runs pytest (all tests, slow ones included).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Quality gates first: they are fast and their failures are cheap to read.
.venv/bin/ruff check orchestrator provisioners tests bench
.venv/bin/mypy
# The Kubernetes tests' cluster is built from source once per machine (about 6 minutes,
# cached): built here, so no test's timeout runs while it compiles.
if [ "$(id -u)" = 0 ]; then
    bash scripts/kube/build.sh >/dev/null
fi
exec .venv/bin/python -m pytest -q -rs "$@"
