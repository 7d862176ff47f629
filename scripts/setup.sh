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

# Fashion-MNIST (for `onnxtwin train` and the tests) is Debian's dataset-fashion-mnist.
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
    if command -v apt-get >/dev/null; then
        as_root=(); [[ "$(id -u)" == 0 ]] || as_root=(sudo)
        "${as_root[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
            || { "${as_root[@]}" apt-get update -qq >/dev/null \
                 && "${as_root[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
            || echo "warning: could not install Debian's dataset-fashion-mnist; training the" \
                    "CNN (and its tests) need it" >&2
    else
        echo "note: no apt-get here; set ONNXTWIN_FASHION_MNIST to a folder with the" \
             "Fashion-MNIST idx .gz files to train the CNN" >&2
    fi
fi

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
# pip's "Location ... is ignored" lines come from this machine's mirror config: noise only.
.venv/bin/python -m pip install --quiet --editable ".${1:+[$1]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
