#!/usr/bin/env bash
# The whole test suite: lint, format, types, import layers, then pytest.
#
#   bash ops/test.sh                 # everything except tests marked slow
#   JOBS_TEST_SLOW=1 bash ops/test.sh
#   bash ops/test.sh tests/unit -x   # extra arguments go to pytest
#
# Redis and PostgreSQL: reused on 127.0.0.1:6379 / :5432 (or JOBS_TEST_REDIS_URL /
# JOBS_TEST_DATABASE_URL), otherwise tests/conftest.py starts embedded servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "ruff check"
python -m ruff check .
step "ruff format --check"
python -m ruff format --check .
step "mypy (strict)"
python -m mypy
step "lint-imports"
lint-imports
# Most test time is spent waiting on worker processes, not computing: two pytest processes
# (each its own session: database and Redis DB) halve the wall time on a 2-core machine.
# Tests marked `serial` measure rates or time windows and run afterwards, alone.
# JOBS_TEST_PROCESSES=0 runs everything in this process, in one phase.
processes="${JOBS_TEST_PROCESSES:-2}"
selection="not slow"
if [[ "${JOBS_TEST_SLOW:-0}" == "1" ]]; then
    selection=""
fi
run_pytest() {
    # pytest exits 5 when a phase selects no test (e.g. `ops/test.sh tests/unit`).
    local code=0
    python -m pytest "$@" || code=$?
    if [[ $code -ne 0 && $code -ne 5 ]]; then
        exit "$code"
    fi
}
with_selection() { [[ -n "$selection" ]] && printf '%s and (%s)' "$selection" "$1" || printf '%s' "$1"; }
if [[ "$processes" == "0" ]]; then
    step "pytest -m '${selection:-everything}' (JOBS_TEST_SLOW=1 runs the slow ones too)"
    run_pytest -p no:xdist ${selection:+-m "$selection"} "$@"
else
    step "pytest -m '$(with_selection "not serial")' in $processes processes"
    run_pytest -n "$processes" --dist worksteal -m "$(with_selection "not serial")" "$@"
    step "pytest -m '$(with_selection "serial")' alone"
    run_pytest -p no:xdist -m "$(with_selection "serial")" "$@"
fi
