#!/usr/bin/env bash
# Set up ./.venv and run the main job: build every built-in twin pair and check native parity.
# Extra arguments go to `onnxtwin build` (see `onnxtwin build --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/onnxtwin build "$@"
