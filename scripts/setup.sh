#!/usr/bin/env bash
# Set-up shared by the README's commands: a virtualenv with the locked packages, and the example
# flows compiled by metaflow-dagster (generated files hold this machine's paths).
#   VENV         the virtualenv (default .venv)
#   PYTHON       the interpreter that creates it (default python3.11; 3.11, 3.12 and 3.13 are supported)
#   CONSTRAINTS  the lock it installs from (default constraints/newest.txt; constraints/oldest.txt
#                is the oldest supported set)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
CONSTRAINTS=${CONSTRAINTS:-constraints/newest.txt}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp=$VENV/.auto-resume-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$CONSTRAINTS" -nt "$stamp" ] \
    || [ "$(cat "$stamp")" != "$CONSTRAINTS" ]; then
  echo "setup: installing $CONSTRAINTS into $VENV (log: $VENV/install.log)" >&2
  if ! { "$VENV/bin/python" -m pip install --upgrade pip \
      && "$VENV/bin/python" -m pip install -c "$CONSTRAINTS" -e ".[dev]"; } >"$VENV/install.log" 2>&1; then
    tail -n 40 "$VENV/install.log" >&2
    exit 1
  fi
  echo "$CONSTRAINTS" >"$stamp"
fi

# Metaflow refuses to run without a user name, and root does not count as one.
export METAFLOW_USER=${METAFLOW_USER:-auto-resume}
export METAFLOW_DATASTORE_SYSROOT_LOCAL=${METAFLOW_DATASTORE_SYSROOT_LOCAL:-$ROOT}
mkdir -p examples/generated
# The generated files depend on the metaflow-dagster release: compile again when it changes.
compiler=$("$VENV/bin/python" -c 'from importlib.metadata import version as v
print("metaflow-dagster==" + v("metaflow-dagster"), "metaflow==" + v("metaflow"))')
stale=0
[ "$(cat examples/generated/.compiled-by 2>/dev/null)" = "$compiler" ] || stale=1
# The example flows ship in the package (auto_resume/examples); examples/flows links to them.
# decorated_flow is compiled with a --tag, which the definitions file forwards to every step.
for flow in linear_flow branch_flow foreach_flow nested_foreach_flow multi_body_flow switch_flow \
    decorated_flow; do
  src=auto_resume/examples/$flow.py
  out=examples/generated/${flow}_dagster.py
  extra=()
  if [ "$flow" = decorated_flow ]; then extra=(--tag team:auto-resume); fi
  if [ "$stale" = 1 ] || [ ! -f "$out" ] || [ "$src" -nt "$out" ] || ! grep -q "$ROOT" "$out"; then
    echo "setup: compiling $src -> $out ($compiler)" >&2
    if ! "$VENV/bin/python" "$src" --no-pylint --datastore=local --metadata=local \
        dagster create "${extra[@]}" "$out" >"$VENV/compile.log" 2>&1; then
      cat "$VENV/compile.log" >&2
      exit 1
    fi
  fi
done
echo "$compiler" >examples/generated/.compiled-by
