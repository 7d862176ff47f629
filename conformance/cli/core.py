"""The typer app, its consoles and shared options, and the entry point `main`.

Commands live in the sibling modules, one per group; each imports its library (and so
torch or TensorFlow) inside the command, so `onnxtwin --help` loads no framework.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from onnxtwin.runtime.errors import OnnxtwinError, first_line

app = typer.Typer(  # its help is the docstring of _root
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown")  # docstring paragraphs re-wrap to the terminal's width
# Logs (not a terminal, no COLUMNS) get wide tables instead of truncated columns. No emoji
# codes anywhere: rich would turn a user's `:-1:` into a thumbs-down.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120,
                  emoji=False)
errors = Console(stderr=True, emoji=False)

MAX_SEED = 2**32 - 1  # numpy's and Keras's generators take no larger seed (builders.grids)
CalibrationOption = Annotated[Path | None, typer.Option(
    "--calibration", help="An .npz of input samples (batch axis first) for int8 static "
                          "quantization of random-weight models (graphs with a Conv).")]
GateOption = Annotated[list[str] | None, typer.Option(
    "--gate", help="Override a reduced-precision limit, e.g. int8.agreement=0.98 "
                   "(repeatable): accuracy_drop (points; defaults fp16 0.1, int8 0.5), "
                   "agreement (fp16 0.999, int8 0.99), relative_error (without labels only; "
                   "fp16 0.005, int8 0.1).")]
SpecOption = Annotated[Path | None, typer.Option(
    "--spec", help="TOML file of \\[models.NAME] tables: family variants, your own models "
                   "(torch/keras factories) and ONNX files (README: Your own models).")]


class Source(StrEnum):
    torch = "torch"
    keras = "keras"


def selected_specs(models: list[str] | None, spec_file: Path | None) -> list:
    """The specs named by --model, else every built-in and every --spec variant."""
    from onnxtwin.builders import builtins, get_spec, load_toml
    from onnxtwin.builders.registry import read_toml

    if spec_file and _has_factories(read_toml(spec_file)):
        quiet_tensorflow()  # a user's model file may import keras: before it does
    extra = load_toml(spec_file) if spec_file else []
    selected = [get_spec(n) for n in models] if models else [*builtins(), *extra]
    for spec in selected:  # a user's entry that cannot run is refused before any work
        spec.validate()
    return selected


def _has_factories(document: dict) -> bool:
    models = document.get("models")
    return isinstance(models, dict) and any(
        isinstance(t, dict) and ("torch" in t or "keras" in t) for t in models.values())


def verbatim(text: str) -> str:
    """`text` as given, on one line: control characters (a newline or a terminal escape in
    a file name) are shown as escapes, so a message stays one line and cannot drive the
    terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def say(out: Console, text: str) -> None:
    """Print a line that holds user-given text exactly: no markup, emoji or highlighting."""
    out.print(verbatim(text), markup=False, emoji=False, highlight=False, soft_wrap=True)


def status_line(status) -> Callable[[str], None]:
    """An `on_step` callback that shows each step on a rich status line, verbatim."""
    return lambda text: status.update(Text(verbatim(text)))


def bounded(name: str, value: float, low: float, high: float) -> float:
    """`value` if it lies in [low, high]; else one line. NaN and infinities never do, so an
    option is refused before anything is sized from it."""
    if low <= value <= high:
        return value
    expected = f">= {low}" if value < low else f"<= {high}" if value > high else \
        f"from {low} to {high}"
    raise OnnxtwinError(f"{name}: expected a number {expected}, got {value}")


def result_table(title: str, columns: list[str], rows: list[list[str]]) -> Group:
    """A table of result rows; cells that read "pass" or "FAIL" are coloured. The title and
    cells are printed as given (a path or name in them is never read as markup).

    If the columns do not fit the console, the table is turned: one line per column and
    one column per row, as many rows side by side as fit, so that no cell is cut.
    """
    def mark(cell: str) -> Text:
        return Text(verbatim(cell), style={"pass": "green", "FAIL": "red"}.get(cell, ""))

    def heading(text: str | None) -> Text | None:
        return None if text is None else Text(verbatim(text), style="table.title")

    def fits(table: Table) -> bool:
        wide = console.options.update_width(10_000)
        return Measurement.get(console, wide, table).maximum <= console.width

    def turned(part: list[list[str]], caption: str | None) -> Table:
        table = Table(title=heading(caption), show_header=False,  # a title on one line if it can
                      min_width=min(len(caption or ""), console.width))
        table.add_column(style="bold", no_wrap=True)
        for _ in part:
            table.add_column(no_wrap=True)
        for i, column in enumerate(columns):
            table.add_row(column, *(mark(row[i]) for row in part))
        return table

    table = Table(title=heading(title))
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


def session(path: Path, provider: str, strict: bool, **options):
    """A runtime Session (`options` go to it); a provider fallback, and ops whose memory
    its bound cannot see, are warned of on one line each."""
    import warnings

    from onnxtwin.runtime import ProviderFallbackWarning, Session

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        result = Session(path, provider, strict=strict, **options)
    for w in caught:
        say(errors, f"warning: {w.message}")
    if result.value_dependent:
        say(errors, f"warning: {path.name}: expected output sizes set by input shapes, got "
                    f"{len(result.value_dependent)} set by input values "
                    f"({', '.join(result.value_dependent[:3])}): the memory bound cannot "
                    f"cover them")
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


def os_error(e: OSError) -> str:
    """An OSError in one line: the path(s) when known (never "None"), and the reason."""
    reason = e.strerror or str(e) or type(e).__name__
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    if not paths:  # a full disk or a lost device, raised by a write with no name
        return f"expected the file system to read and write, got {reason}"
    return f"{paths}: expected a path onnxtwin can read or write, got {reason}"


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
        say(errors, f"error: {e}")
        sys.exit(2)
    except OSError as e:  # a folder or file the user named cannot be made, read or written
        say(errors, f"error: {os_error(e)}")
        sys.exit(2)
    except MemoryError as e:  # numpy's line says how much: data too large for this machine
        say(errors, f"error: expected data that fits in memory, got: {first_line(e)}")
        sys.exit(2)
    except Exception:
        # The SystemExit of SIGTERM can surface as another error: raised while a C extension
        # module initialises, Python reports "ImportError: initialization failed" (measured
        # on a Keras export terminated as its gate imports onnxruntime's bindings).
        if terminated:
            sys.exit(128 + terminated[0])
        raise
