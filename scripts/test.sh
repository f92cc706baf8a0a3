#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests on the real dagster-daemon and
# PostgreSQL (AUTO_RESUME_TEST_PG_URL, default postgresql+psycopg2://root@127.0.0.1:5432/postgres; the
# tests create and drop their own database there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Chromium (Debian's package) and selenium for the browser test.
bash scripts/setup_browser.sh
export METAFLOW_USER=${METAFLOW_USER:-auto-resume}
exec .venv/bin/python -m pytest "$@"
