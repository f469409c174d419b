#!/usr/bin/env bash
# The README's test command: installs what the tests need (idempotent), then lints and tests.
#   bash tests/run_all.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy_scripts/install.sh

echo "==> ruff check"
.venv/bin/ruff check .
echo "==> ruff format --check"
.venv/bin/ruff format --check .

echo "==> pytest"
set +e
.venv/bin/python -m pytest -ra "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests; a test run that tests nothing is a failure" >&2
    exit 1
fi
exit $status
