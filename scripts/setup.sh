#!/usr/bin/env bash
# Idempotent set-up: .venv/ in the repo root with the project installed (editable) and its test tools.
# Installs torch's CPU build first when no torch is present and no GPU is visible, so a CPU machine
# never pulls a multi-GB CUDA build; installs the Debian packages napari needs to render headless.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.hlip-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)

# Debian libraries for Qt (xcb) and Mesa under Xvfb; a real PACS (Orthanc + DICOMweb) and the reference
# DIMSE tools (dcmtk) for the PACS tests, which start and stop their own servers on loopback; libxtst6 for
# bench/gui_latency.py's pointer (XTest).
DEB_PKGS="xvfb dicom3tools xauth libgl1 libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0
 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1 libx11-xcb1 libxtst6
 orthanc orthanc-dicomweb dcmtk"
missing=""
for p in $DEB_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: napari needs these Debian packages to render headless; please install them:" >&2
    echo "  sudo apt-get install$missing" >&2
  fi
fi

if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip >/dev/null
if ! $VPY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU visible: installing torch from PyPI (CUDA build)"
    $VPY -m pip install -q "torch>=2.4"
  else
    echo "setup: no GPU visible: installing torch's CPU build"
    # A local CPU wheel (pip's find-links) first; else PyTorch's CPU index.
    $VPY -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || $VPY -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "setup: installing hlip-napari and its test tools into .venv/"
$VPY -m pip install -q -e ".[engine,test,pyqt6]"
rm -f .venv/.hlip-setup-*
touch "$stamp"

# The plugin tests also run on the lowest napari the plugin declares (pyproject: napari>=...): a second
# environment with that napari (and what it needs) first on the path, then .venv's packages (torch, the
# engine) through a .pth file. ./test.sh runs tests/napari in it.
NAPARI_LOW=$(.venv/bin/python -c "import re,tomllib;d=tomllib.load(open('pyproject.toml','rb'));print(next(re.search(r'>=([0-9.]+)',x).group(1) for x in d['project']['dependencies'] if x.startswith('napari')))")
low_stamp=.venv-napari-low/.hlip-napari-$NAPARI_LOW-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$low_stamp" ]; then
  echo "setup: a second environment with napari $NAPARI_LOW for the plugin tests (.venv-napari-low/)"
  rm -rf .venv-napari-low
  "$PY" -m venv .venv-napari-low
  .venv-napari-low/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv-napari-low/bin/python -m pip install -q "napari==$NAPARI_LOW" "PyQt6>=6.5" pytest pytest-qt hypothesis \
    pytest-timeout imageio
  low_site=$(.venv-napari-low/bin/python -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
  .venv/bin/python -c "import sysconfig;print(sysconfig.get_paths()['purelib'])" > "$low_site/zz_hlip_main_venv.pth"
  pwd >> "$low_site/zz_hlip_main_venv.pth"
  touch "$low_stamp"
fi
