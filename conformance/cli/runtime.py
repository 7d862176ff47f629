"""Commands for deployment, which import only onnxruntime, onnx and numpy (and, to serve,
Starlette and uvicorn): `providers`, `run`, `serve`, `deploy`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from onnxtwin.conformance.cli.core import app, bounded, console, say, session

PANEL = "Deployment (onnxruntime only)"
MAX_RUN_MB = 1024.0  # runtime.session.DEFAULT_MEMORY_LIMIT, which would import onnxruntime
SettingsOption = Annotated[Path | None, typer.Option(
    "--settings", help="deploy.json written by `onnxtwin bench`: the onnxruntime session "
                       "settings (threads, optimization, spinning) it chose and confirmed "
                       "for each file. Every model given must be a file it names.")]


@app.command(rich_help_panel=PANEL)
def providers() -> None:
    """Which onnxruntime execution providers run here, proven by creating a session on each."""
    from onnxtwin.runtime import providers as probe_all

    table = Table("provider", "onnxruntime name", "listed", "usable", "reason")
    for s in probe_all():
        table.add_row(s.alias, s.name, "yes" if s.listed else "no",
                      "[green]yes" if s.usable else "[red]no", Text(s.reason))
    console.print(table)


@app.command(rich_help_panel=PANEL)
def run(
    model: Annotated[Path, typer.Argument(help="The .onnx file to run.")],
    input: Annotated[Path, typer.Option(
        "--input", "-i", help=".npz with one array per input name, or .npy for a "
                              "single-input model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npz to write the outputs to.")],
    provider: Annotated[str, typer.Option(help="cpu, cuda or tensorrt.")] = "cpu",
    strict: Annotated[bool, typer.Option(
        help="Fail if the provider cannot run here, instead of falling back to CPU.")] = False,
    check_finite: Annotated[bool, typer.Option(help="Reject NaN/Inf in float inputs.")] = False,
    max_run_mb: Annotated[float, typer.Option(
        help="Most memory the run may need, estimated from the model's shapes before it "
             "runs; more is refused.")] = MAX_RUN_MB,
) -> None:
    """Run an ONNX model on saved inputs (validated against its signature); write the outputs.

    Imports only onnxruntime, onnx and numpy. A provider that cannot run falls back to CPU with
    a warning (or fails with --strict); the provider that really ran is printed.
    """
    from onnxtwin.runtime.arrays import load_arrays, save_arrays

    opened = session(model, provider, strict, check_finite=check_finite,
                     memory_limit=mebibytes("max_run_mb", max_run_mb), arena=False)
    arrays = load_arrays(input, [i.name for i in opened.inputs])
    outputs = opened.run(arrays)
    save_arrays(output, outputs)
    shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in outputs.items())
    say(console, f"ran {model.name} on {opened.provider}: wrote {output} ({shapes})")


@app.command(rich_help_panel=PANEL)
def serve(
    models: Annotated[list[Path], typer.Argument(
        help="The .onnx files to serve; each is named by its file name without .onnx.")],
    provider: Annotated[str, typer.Option(help="cpu, cuda or tensorrt.")] = "cpu",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).")] = 8000,
    max_batch: Annotated[int, typer.Option(
        help="Rows per onnxruntime run when grouping concurrent requests; 0: no batching.")
    ] = 64,
    max_delay_ms: Annotated[float, typer.Option(
        help="How long a request waits for others to batch with (0: batch only those "
             "that queued while the previous run ran).")] = 0.0,
    max_queue: Annotated[int, typer.Option(
        help="Requests waiting per model; more get HTTP 503.")] = 256,
    max_request_mb: Annotated[float, typer.Option(
        help="Largest request body; larger gets HTTP 413.")] = 64.0,
    max_run_mb: Annotated[float, typer.Option(
        help="Most memory one run (a request or a batch) may need, estimated from the "
             "model's shapes before it runs; more gets HTTP 413.")] = MAX_RUN_MB,
    max_run_s: Annotated[float, typer.Option(
        help="Seconds one run (a request or a batch) may take; it is stopped after, "
             "HTTP 413.")] = 60.0,
    max_inflight_mb: Annotated[float | None, typer.Option(
        help="Request bodies held at once over all connections; more gets HTTP 503. "
             "Default: 4 x --max-request-mb.")] = None,
    header_timeout: Annotated[float, typer.Option(
        help="Seconds for a request's headers to arrive; the connection closes after.")
    ] = 10.0,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds for a request's body to arrive; HTTP 408 after.")] = 60.0,
    idle_timeout: Annotated[float, typer.Option(
        help="Seconds an idle keep-alive connection stays open.")] = 5.0,
    max_connections: Annotated[int, typer.Option(
        help="Open connections; one more is closed as soon as it is accepted.")] = 1000,
    strict: Annotated[bool, typer.Option(
        help="Fail if the provider cannot run here, instead of falling back to CPU.")] = False,
    settings: SettingsOption = None,
) -> None:
    """Serve ONNX models over HTTP with the Open Inference Protocol v2 (KServe v2, Triton).

    Clients written for Triton (e.g. tritonclient.http) work unchanged. Imports only
    onnxruntime, onnx, numpy, Starlette and uvicorn. SIGINT or SIGTERM stops it after the
    requests in flight finish.
    """
    from onnxtwin.runtime.serve.server import ServeOptions, model_names
    from onnxtwin.runtime.serve.server import serve as run_server

    options = ServeOptions(
        max_batch=int(bounded("max_batch", max_batch, 0, 65536)),
        max_delay_ms=bounded("max_delay_ms", max_delay_ms, 0, 60_000),
        max_queue=int(bounded("max_queue", max_queue, 1, 65536)),
        max_request_bytes=mebibytes("max_request_mb", max_request_mb, high=1024),
        max_run_bytes=mebibytes("max_run_mb", max_run_mb),
        max_run_s=bounded("max_run_s", max_run_s, 0.001, 86_400),
        max_inflight_bytes=None if max_inflight_mb is None else
        mebibytes("max_inflight_mb", max_inflight_mb),
        header_timeout_s=bounded("header_timeout", header_timeout, 0.001, 3600),
        body_timeout_s=bounded("body_timeout", body_timeout, 0.001, 3600),
        idle_timeout_s=bounded("idle_timeout", idle_timeout, 0.001, 3600),
        max_connections=int(bounded("max_connections", max_connections, 1, 2**20)))
    chosen = session_settings(settings, models)
    sessions = {name: session(path, provider, strict, **options.session_bounds,
                              **chosen.get(path, {}))
                for name, path in model_names(models).items()}
    run_server(sessions, host, port, options, announce=lambda line: say(console, line))


def session_settings(path: Path | None, models: list[Path]) -> dict[Path, dict]:
    """Per model file, the session settings ({"threads", "optimization", "spinning"}) that
    `path` (OUT/deploy.json of `onnxtwin bench`) holds for the file of its name; {} without
    --settings. A file it does not name is refused: serving it with defaults would not be
    what the benchmark measured."""
    import json

    from onnxtwin.runtime.errors import OnnxtwinError
    from onnxtwin.runtime.session import OPTIMIZATION_LEVELS

    if path is None:
        return {}
    expected = (f"--settings {path}: expected deploy.json of `onnxtwin bench` ({{\"models\": "
                f"{{MODEL: {{\"file\", \"settings\": {{\"threads\": int >= 0, \"optimization\": "
                f"one of {list(OPTIMIZATION_LEVELS)}, \"spinning\": bool}}}}}}}})")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["models"].values()
        by_file = {e["file"]: e["settings"] for e in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OnnxtwinError(f"{expected}, got {type(e).__name__}: {e}".splitlines()[0]) \
            from None
    for file, chosen in by_file.items():
        threads = chosen.get("threads") if isinstance(chosen, dict) else None
        if not isinstance(file, str) or not isinstance(chosen, dict) or \
                set(chosen) != {"threads", "optimization", "spinning"} or \
                not isinstance(threads, int) or isinstance(threads, bool) or \
                not 0 <= threads <= 1024 or \
                chosen["optimization"] not in OPTIMIZATION_LEVELS or \
                not isinstance(chosen["spinning"], bool):
            raise OnnxtwinError(f"{expected}, got {file!r}: {chosen!r}")
    if missing := [m.name for m in models if m.name not in by_file]:
        raise OnnxtwinError(f"--settings {path}: expected settings for {missing}, got "
                            f"settings for {sorted(by_file)}")
    return {m: by_file[m.name] for m in models}


def mebibytes(name: str, value: float, high: float = 2**20) -> int:
    """An option in MiB as bytes, from 1 KiB to `high` MiB (NaN and infinities refused)."""
    return int(bounded(name, value, 2**-10, high) * 2**20)


class Target(StrEnum):
    triton = "triton"


@app.command(rich_help_panel=PANEL)
def deploy(
    model: Annotated[Path, typer.Argument(help="The .onnx file to deploy.")],
    out: Annotated[Path, typer.Option(help="Model repository folder (created if missing).")],
    to: Annotated[Target, typer.Option(help="Serving engine.")] = Target.triton,
    name: Annotated[str | None, typer.Option(
        help="Model name. Default: the file name without .onnx, dots as underscores.")
    ] = None,
    provider: Annotated[str, typer.Option(help="cpu or cuda: where Triton runs it.")] = "cpu",
    max_batch: Annotated[int, typer.Option(help="max_batch_size; 0: no batching.")] = 64,
    max_delay_us: Annotated[int, typer.Option(
        help="Dynamic batching's max_queue_delay_microseconds.")] = 0,
    instances: Annotated[int, typer.Option(help="Model instances.")] = 1,
    settings: SettingsOption = None,
) -> None:
    """Write a Triton model repository: OUT/NAME/config.pbtxt and OUT/NAME/1/model.onnx.

    The config is built and checked with Triton's model-config protobuf; names, dtypes
    and dims come from the model's signature. With --settings, the benchmark's threads and
    optimisation level go into it (Triton's onnxruntime backend has no setting for idle
    threads' spinning: that one is said, not written).
    """
    from onnxtwin.runtime.serve.triton import TritonOptions, write_repository

    chosen = session_settings(settings, [model]).get(model, {})
    session_keywords = {k: v for k, v in chosen.items() if k != "spinning"}
    folder = write_repository(model, out, name, TritonOptions(
        provider, max_batch, max_delay_us, instances, **session_keywords))
    say(console, f"wrote {folder}: start Triton with --model-repository={out.resolve()}")
    if chosen.get("spinning") is False:
        say(console, "note: --settings asks for idle onnxruntime threads not to spin; "
                     "Triton's onnxruntime backend cannot be told so (its config has no "
                     "such parameter)")
