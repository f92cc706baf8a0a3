#!/usr/bin/env bash
# The Dagster UI in one command, no PostgreSQL: a throwaway SQLite DAGSTER_HOME, `dagster dev`
# (webserver and daemon) on 127.0.0.1, auto_resume_sensor running, and one example run that fails
# once so that the sensor resumes it. Ctrl-C stops everything and removes the home.
# Options go to `auto-resume ui` (--port, --keep, --width, --fail-index).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export METAFLOW_USER=${METAFLOW_USER:-auto-resume}
exec "${VENV:-.venv}/bin/auto-resume" ui "$@"
