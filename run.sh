#!/usr/bin/env bash
# The main command: set up .venv/ if needed (idempotent), then run the HLIP Explorer demo (`hlip demo`).
# Extra arguments go to `hlip demo` (e.g. ./run.sh --gui, ./run.sh --evaluate).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
  # No screen: napari still renders (for the demo's screenshot) on a virtual one.
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/hlip demo "$@"
fi
exec .venv/bin/hlip demo "$@"
