#!/usr/bin/env bash
# The main command: set up .venv/ if needed (idempotent), then run the HLIP Explorer demo (`hlip demo`).
# Extra arguments go to `hlip demo` (e.g. ./run.sh --evaluate, ./run.sh --gui). Without a display the demo
# runs headless and writes its pictures to demo-output/.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/hlip demo "$@"
