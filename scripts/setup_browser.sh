#!/usr/bin/env bash
# Set-up of the browser test (tests/e2e/test_browser.py): headless Chromium and its driver from
# Debian's packages, and the selenium bindings in .venv. Nothing downloads a browser build:
# selenium is given /usr/bin/chromium and /usr/bin/chromedriver and never fetches its own.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_browser: /usr/bin/chromium or /usr/bin/chromedriver is missing; as root run:" >&2
    echo "  apt-get update && apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  echo "setup_browser: installing Debian's chromium and chromium-driver (log: .venv/apt.log)" >&2
  # With no package lists (a fresh image) or stale ones the install fails: refresh, try again.
  install_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >>.venv/apt.log 2>&1; }
  if ! install_chromium && ! { apt-get update >>.venv/apt.log 2>&1 && install_chromium; }; then
    tail -n 40 .venv/apt.log >&2
    exit 1
  fi
fi

if ! .venv/bin/python -c "import selenium" 2>/dev/null; then
  echo "setup_browser: installing selenium into .venv" >&2
  .venv/bin/python -m pip install "selenium>=4.20,<5" >>.venv/install.log 2>&1 \
    || { tail -n 20 .venv/install.log >&2; exit 1; }
fi
