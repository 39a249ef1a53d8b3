#!/usr/bin/env bash
# Every GPU check of the project in one call; see bench/gpu_suite.py for what it measures.
#
#   bench/gpu_suite.sh --prepare    once, with network: timm 1.0.15 + faiss-cpu wheels into .whl/, the
#                                   official encoder (github Zch0414/hlip, MIT; or $HLIP_OFFICIAL_SRC, a checkout
#                                   or bare git folder) and the benchmark that measured it ($HLIP_OFFICIAL_BENCH)
#                                   into .ref/ (both folders git-ignored; about 21 MB)
#   bench/gpu_suite.sh --dry-run    the same code paths on CPU at tiny sizes (< 2 minutes; tests run it)
#   bench/gpu_suite.sh              on the GPU machine, with .whl/ and .ref/ copied beside the checkout
#     -> one JSON document on stdout and in $OUT/gpu_suite.json, in <= 8 minutes on one H200
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  --prepare)
    py="${PYTHON:-python3}"
    mkdir -p .whl .ref/hlip
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl timm==1.0.15 faiss-cpu
    src="${HLIP_OFFICIAL_SRC:-}"   # a checkout, or a bare git folder (then at ${HLIP_OFFICIAL_REV:-HEAD})
    if [ -z "$src" ]; then
      src="$(mktemp -d)/hlip"
      git clone -q --depth 1 https://github.com/Zch0414/hlip "$src"
    fi
    for f in visual_encoder.py patch_embed.py pos_embed.py; do
      if [ -f "$src/src/hlip/$f" ]; then cp "$src/src/hlip/$f" .ref/hlip/
      else git --git-dir "$src" show "${HLIP_OFFICIAL_REV:-HEAD}:src/hlip/$f" > ".ref/hlip/$f"; fi
    done
    : > .ref/hlip/__init__.py
    bench_src="${HLIP_OFFICIAL_BENCH:-../shared/anchors/official_bench.py}"
    if [ -f "$bench_src" ]; then cp "$bench_src" .ref/official_bench.py
    else echo "gpu_suite: no official benchmark at $bench_src (set HLIP_OFFICIAL_BENCH): the suite's" \
              "'official' section will record that it did not run" >&2; fi
    du -sh .whl .ref
    exit 0 ;;
  --dry-run)
    shift
    py="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
    exec "$py" bench/gpu_suite.py --dry-run "$@" ;;
esac

# on the device machine: carried wheels first on the path (timm 1.0.15 for the official code, faiss)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 REF_DIR="${REF_DIR:-$PWD/.ref}"
out="${OUT:-out}"
mkdir -p "$out"
# 470 s: the suite's 8-minute budget, with the wheels' install and Python's start inside it
timeout 470 "${PYTHON:-python3}" bench/gpu_suite.py --out "$out" "$@" 2> >(tee "$out/gpu_suite.log" >&2)
