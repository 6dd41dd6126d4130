#!/usr/bin/env bash
# Install napari-cdinn into ./.venv on a fresh Debian-like machine.
#   bash scripts/install.sh          # the plugin, the CLI and a Qt binding (PyQt6)
#   bash scripts/install.sh --test   # ... plus the test tools and, as root, Xvfb for viewer tests
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

# System libraries that Qt/napari need for a (virtual) display; only as root, only if missing.
display_packages=(xvfb xauth libgl1-mesa-dri libegl1 libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
  libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)
if [[ $with_tests == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${display_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# a venv whose creation failed half-way (python but no pip: python3-venv missing) is made again
[[ -x .venv/bin/pip ]] || python3 -m venv --clear .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
# (On a GPU machine, install the CUDA build of torch you want before running this script.)
# pip's exit status is kept; only its noise about unused local index folders is dropped
quiet_pip() { pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
python -c "import torch" 2>/dev/null || quiet_pip "torch==2.13.0"
extras="qt"
[[ $with_tests == 1 ]] && extras="qt,test"
quiet_pip -e ".[${extras}]"
python -c "import napari_cdinn, torch; print('napari-cdinn', napari_cdinn.__version__, '| torch', torch.__version__)"
