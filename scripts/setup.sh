#!/usr/bin/env bash
# Set-up shared by the README's commands: a virtualenv with the pinned packages, and the
# example flows compiled by metaflow-dagster (generated files hold this machine's paths).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.auto-resume-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing pinned packages into .venv (log: .venv/install.log)" >&2
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[dev]"; } \
      >.venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    exit 1
  fi
  touch "$stamp"
fi

# Metaflow refuses to run without a user name, and root does not count as one.
export METAFLOW_USER=${METAFLOW_USER:-auto-resume}
export METAFLOW_DATASTORE_SYSROOT_LOCAL=${METAFLOW_DATASTORE_SYSROOT_LOCAL:-$ROOT}
mkdir -p examples/generated
# decorated_flow is compiled with a --tag, which the definitions file forwards to every step.
for flow in linear_flow branch_flow foreach_flow nested_foreach_flow multi_body_flow switch_flow \
    decorated_flow; do
  out=examples/generated/${flow}_dagster.py
  extra=()
  if [ "$flow" = decorated_flow ]; then extra=(--tag team:auto-resume); fi
  if [ ! -f "$out" ] || [ "examples/flows/$flow.py" -nt "$out" ] || ! grep -q "$ROOT" "$out"; then
    echo "setup: compiling examples/flows/$flow.py -> $out" >&2
    if ! .venv/bin/python "examples/flows/$flow.py" --no-pylint --datastore=local --metadata=local \
        dagster create "${extra[@]}" "$out" >.venv/compile.log 2>&1; then
      cat .venv/compile.log >&2
      exit 1
    fi
  fi
done
