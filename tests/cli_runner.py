"""Run `onnxtwin` as a user does: a fresh Python process calling the entry point's main()."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-c", "from onnxtwin.conformance.cli import main; main()"]


def onnxtwin(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`onnxtwin ARGS` with its output captured as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
