#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv: the CPU build of torch
# first, so that pip does not pull a multi-GB CUDA build, then the package with its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,bench]"
# The browser tests (tests/ui) drive Debian's Chromium, not a browser that Playwright
# downloads (no network for that in CI). Installed only when missing; needs root or sudo.
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
fi
