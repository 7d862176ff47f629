#!/usr/bin/env bash
# Create ./.venv (Python >= 3.11) if needed and install onnxtwin into it, editable.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null; then python="$candidate"; break; fi
    done
fi
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || { echo "error: onnxtwin needs Python >= 3.11, got $("$python" --version)" >&2; exit 2; }

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
# pip's "Location ... is ignored" lines come from this machine's mirror config: noise only.
.venv/bin/python -m pip install --quiet --editable ".${1:+[$1]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
