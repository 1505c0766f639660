#!/usr/bin/env bash
# Set up (idempotent) and run the test suite on the real MIT-BIH records.
# Records: $SPLITPRIV_MITDB, else ../shared/data/mitdb beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${SPLITPRIV_MITDB:-}" ] && [ -d ../shared/data/mitdb ]; then
    SPLITPRIV_MITDB="$(cd ../shared/data/mitdb && pwd)"
    export SPLITPRIV_MITDB
fi
# lint (with McCabe complexity <= 15) and types first: a failure stops here, in seconds
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: no tests were collected" >&2
    exit 1
fi
exit "$rc"
