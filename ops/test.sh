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
if [[ "${JOBS_TEST_SLOW:-0}" == "1" ]]; then
    step "pytest (including slow tests)"
    python -m pytest "$@"
else
    step "pytest -m 'not slow' (JOBS_TEST_SLOW=1 runs the slow ones too)"
    python -m pytest -m "not slow" "$@"
fi
