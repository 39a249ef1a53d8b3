#!/usr/bin/env bash
# The test command: set up .venv/ if needed (idempotent), lint, then the whole suite under a virtual X server.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-xcb}
.venv/bin/ruff check .
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -p no:cacheprovider "$@"
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
