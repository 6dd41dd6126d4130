#!/usr/bin/env bash
# Run every check: lint, import contracts, the napari manifest, then all tests (core and viewer)
# in one pytest run under a virtual display.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests benchmarks scripts training
ruff format --check src tests benchmarks scripts training
lint-imports
npe2 validate --imports napari-cdinn
if [[ -n "${DISPLAY:-}" ]]; then
  python -m pytest tests "$@"
else
  xvfb-run -a -s "-screen 0 1400x900x24" python -m pytest tests "$@"
fi
