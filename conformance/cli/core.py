"""The typer app, its consoles and shared options, and the entry point `main`.

Commands live in the sibling modules, one per group; each imports its library (and so
torch or TensorFlow) inside the command, so `onnxtwin --help` loads no framework.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table

from onnxtwin.runtime.errors import OnnxtwinError

app = typer.Typer(  # its help is the docstring of _root
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown")  # docstring paragraphs re-wrap to the terminal's width
# Logs (not a terminal, no COLUMNS) get wide tables instead of truncated columns.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)
errors = Console(stderr=True)

SpecOption = Annotated[Path | None, typer.Option(
    "--spec", help="TOML file of extra model variants (\\[models.NAME] tables).")]


class Source(StrEnum):
    torch = "torch"
    keras = "keras"


def selected_specs(models: list[str] | None, spec_file: Path | None) -> list:
    """The specs named by --model, else every built-in and every --spec variant."""
    from onnxtwin.builders import builtins, get_spec, load_toml

    extra = load_toml(spec_file) if spec_file else []
    return [get_spec(n) for n in models] if models else [*builtins(), *extra]


def result_table(title: str, columns: list[str], rows: list[list[str]]) -> Group:
    """A table of result rows; cells that read "pass" or "FAIL" are coloured.

    If the columns do not fit the console, the table is turned: one line per column and
    one column per row, as many rows side by side as fit, so that no cell is cut.
    """
    def mark(cell: str) -> str:
        return {"pass": "[green]pass", "FAIL": "[red]FAIL"}.get(cell, cell)

    def fits(table: Table) -> bool:
        wide = console.options.update_width(10_000)
        return Measurement.get(console, wide, table).maximum <= console.width

    def turned(part: list[list[str]], caption: str | None) -> Table:
        table = Table(title=caption, show_header=False,  # a title on one line if it can
                      min_width=min(len(caption or ""), console.width))
        table.add_column(style="bold", no_wrap=True)
        for _ in part:
            table.add_column(no_wrap=True)
        for i, column in enumerate(columns):
            table.add_row(column, *(mark(row[i]) for row in part))
        return table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*map(mark, row))
    if fits(table) or not rows:
        return Group(table)
    per_table = 1
    while per_table < len(rows) and fits(turned(rows[:per_table + 1], title)):
        per_table += 1
    return Group(*(turned(rows[i:i + per_table], title if i == 0 else None)
                   for i in range(0, len(rows), per_table)))


def session(path: Path, provider: str, strict: bool, check_finite: bool = False):
    """A runtime Session; a provider fallback warning is printed on one line."""
    import warnings

    from onnxtwin.runtime import ProviderFallbackWarning, Session

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        result = Session(path, provider, strict=strict, check_finite=check_finite)
    for w in caught:
        errors.print(f"warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
    return result


# TensorFlow's C++ libraries log these while they load, before absl::InitializeLog(): no
# environment variable reaches them (TF_CPP_MIN_LOG_LEVEL only governs later messages).
TENSORFLOW_NOISE = (b"All log messages before absl::InitializeLog() is called",
                    b"oneDNN custom operations are on")


@contextmanager
def filtered_stderr(drop: tuple[bytes, ...] = TENSORFLOW_NOISE) -> Iterator[None]:
    """Hold back what C code writes to file descriptor 2, then pass on all but the lines
    that contain one of `drop`. Python's own sys.stderr is flushed first and after."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held if not any(d in line for d in drop)]
            if kept:
                os.write(2, b"".join(kept))


def quiet_tensorflow() -> None:
    """Import TensorFlow now, with its load-time log lines left out of the terminal.

    Commands that build Keras twins call it first; TensorFlow itself is unchanged (oneDNN
    stays on, so results are those of a plain import).
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # CPU-feature notice and the like
    with filtered_stderr():
        import tensorflow  # noqa: F401


def _version(value: bool) -> None:
    if value:
        try:
            number = version("onnxtwin")
        except PackageNotFoundError:  # a source tree that was never installed
            number = "unknown"
        console.print(f"onnxtwin {number}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Build a model twice (PyTorch and Keras) with the same weights, and prove they agree."""


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback.

    SIGTERM exits with 143 through the `finally` blocks, so temporary files of unfinished
    writes are removed and the files they would have replaced stay intact.
    """
    terminated: list[int] = []

    def on_sigterm(signum, frame):
        terminated.append(signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        app()
    except OnnxtwinError as e:
        errors.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # a folder or file the user named cannot be made, read or written
        errors.print(f"error: {e.filename}: expected a path onnxtwin can read or write, got "
                     f"{e.strerror}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception:
        # The SystemExit of SIGTERM can surface as another error: raised while a C extension
        # module initialises, Python reports "ImportError: initialization failed" (measured
        # on a Keras export terminated as its gate imports onnxruntime's bindings).
        if terminated:
            sys.exit(128 + terminated[0])
        raise
