#!/usr/bin/env bash
# Set up ./.venv and run the main job: the conformance check of every built-in model (CPU).
# Extra arguments go to `onnxtwin check` (see `onnxtwin check --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/onnxtwin check --provider cpu "$@"  # a later --provider wins
