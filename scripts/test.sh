#!/usr/bin/env bash
# Set up and run the whole test suite. PostgreSQL on 127.0.0.1:5432 (trust
# auth, database `test`) is required: when it is installed but stopped it is
# started; when it cannot be reached the PostgreSQL tests fail (never skip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
fi

export VNA_TEST_PG_URL=${VNA_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
.venv/bin/python -m ruff check vna replicator viewer_gateway tests scripts
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -n "${VNA_TEST_WORKERS:-2}" "$@"
