#!/usr/bin/env bash
# Set up ./.venv with the dev and ray extras, lint, and run the tests (fast tier unless `-m slow` is given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,ray
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
