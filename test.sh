#!/usr/bin/env bash
# The test command: set up .venv/ if needed (idempotent), lint, then the whole suite under a virtual X server.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-xcb}
.venv/bin/ruff check .
# the whole suite on the highest napari (.venv), then the plugin tests on the lowest (.venv-napari-low)
run() { if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
          xvfb-run -a -s "-screen 0 1600x1000x24" "$@"; else "$@"; fi; }
run .venv/bin/python -m pytest -p no:cacheprovider "$@"
if [ -z "${HLIP_SKIP_NAPARI_LOW:-}" ]; then
  echo "test.sh: the plugin tests on the lowest napari the plugin declares:"
  run .venv-napari-low/bin/python -m pytest -p no:cacheprovider tests/napari "$@"
fi
