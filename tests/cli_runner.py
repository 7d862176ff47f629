"""Run `onnxtwin` as a user does: a fresh Python process calling the entry point's main()."""

from __future__ import annotations

import os
import subprocess
import sys

CLI = [sys.executable, "-c", "from onnxtwin.conformance.cli import main; main()"]


def onnxtwin(*args: str, cwd=None, timeout: float = 600,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`onnxtwin ARGS` with its output captured as text; `env` is added to the environment."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, **(env or {})})
