#!/usr/bin/env bash
# The demo: an example flow fails, auto-resume's sensor decides, its resume job clones what
# completed and executes the rest. Embedded: a throwaway SQLite Dagster instance, no Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export METAFLOW_USER=${METAFLOW_USER:-auto-resume}
exec .venv/bin/auto-resume demo "$@"
