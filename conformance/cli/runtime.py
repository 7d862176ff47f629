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
from onnxtwin.runtime.errors import OnnxtwinError

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
    header_timeout: Annotated[float | None, typer.Option(
        help="Seconds for a request's headers to arrive; the connection closes after "
             "(default 10; not with --ray).")] = None,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds for a request's body to arrive; HTTP 408 after.")] = 60.0,
    idle_timeout: Annotated[float | None, typer.Option(
        help="Seconds an idle keep-alive connection stays open (default 5; not with "
             "--ray).")] = None,
    max_connections: Annotated[int | None, typer.Option(
        help="Open connections; one more is closed as soon as it is accepted (default "
             "1000; not with --ray).")] = None,
    strict: Annotated[bool, typer.Option(
        help="Fail if the provider cannot run here, instead of falling back to CPU (Ray "
             "replicas always fail).")] = False,
    settings: SettingsOption = None,
    ray: Annotated[str | None, typer.Option(
        help="Serve on the Ray cluster at this address (HOST:PORT of its head) with Ray "
             "Serve instead of in this process: the app `deploy --to ray` writes. Needs "
             "onnxtwin[ray] on every node.", rich_help_panel="Ray")] = None,
    replicas: Annotated[int | None, typer.Option(
        help="With --ray: replicas of each model (default 1).", rich_help_panel="Ray")] = None,
    replica_cpus: Annotated[float | None, typer.Option(
        help="With --ray: CPUs Ray reserves for each replica (default 1).",
        rich_help_panel="Ray")] = None,
) -> None:
    """Serve ONNX models over HTTP with the Open Inference Protocol v2 (KServe v2, Triton).

    Clients written for Triton (e.g. tritonclient.http) work unchanged. Imports only
    onnxruntime, onnx, numpy, Starlette and uvicorn (and Ray with --ray). SIGINT or SIGTERM
    stops it after the requests in flight finish; with --ray it deletes the application
    from the cluster.
    """
    from onnxtwin.runtime.serve.server import ServeOptions, model_names
    from onnxtwin.runtime.serve.server import serve as run_server

    connections = {name: value for name, value in (
        ("header_timeout", header_timeout), ("idle_timeout", idle_timeout),
        ("max_connections", max_connections)) if value is not None}
    if ray is not None and connections:
        raise OnnxtwinError(f"--{next(iter(connections)).replace('_', '-')}: expected it only "
                            f"without --ray (Ray's HTTP proxies hold the connections), got "
                            f"--ray")
    defaults = ServeOptions()
    options = ServeOptions(
        max_batch=int(bounded("max_batch", max_batch, 0, 65536)),
        max_delay_ms=bounded("max_delay_ms", max_delay_ms, 0, 60_000),
        max_queue=int(bounded("max_queue", max_queue, 1, 65536)),
        max_request_bytes=mebibytes("max_request_mb", max_request_mb, high=1024),
        max_run_bytes=mebibytes("max_run_mb", max_run_mb),
        max_run_s=bounded("max_run_s", max_run_s, 0.001, 86_400),
        max_inflight_bytes=None if max_inflight_mb is None else
        mebibytes("max_inflight_mb", max_inflight_mb),
        header_timeout_s=bounded("header_timeout", connections.get(
            "header_timeout", defaults.header_timeout_s), 0.001, 3600),
        body_timeout_s=bounded("body_timeout", body_timeout, 0.001, 3600),
        idle_timeout_s=bounded("idle_timeout", connections.get(
            "idle_timeout", defaults.idle_timeout_s), 0.001, 3600),
        max_connections=int(bounded("max_connections", connections.get(
            "max_connections", defaults.max_connections), 1, 2**20)))
    chosen = session_settings(settings, models)
    if ray is not None:
        from onnxtwin.runtime.serve.ray_config import RayOptions, serve_on_cluster

        serve_on_cluster(models, ray, RayOptions(
            provider, replicas=1 if replicas is None else replicas,
            replica_cpus=1.0 if replica_cpus is None else replica_cpus,
            max_batch=options.max_batch, max_delay_ms=options.max_delay_ms, host=host,
            port=port, serve=options), chosen, announce=lambda line: say(console, line))
        return
    for option, value in (("--replicas", replicas), ("--replica-cpus", replica_cpus)):
        if value is not None:
            raise OnnxtwinError(f"{option} {value}: expected it only with --ray (one process "
                                f"serves here), got no --ray")
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
    ray = "ray"


TRITON_ONLY = ("name", "instances")
RAY_ONLY = ("replicas", "max_replicas", "replicas_per_node", "replica_cpus", "max_ongoing",
            "host", "port", "max_request_mb", "max_run_mb")


@app.command(rich_help_panel=PANEL)
def deploy(
    models: Annotated[list[Path], typer.Argument(help="The .onnx files to deploy.")],
    out: Annotated[Path, typer.Option(
        help="Triton: the model repository (created if missing). Ray: the application "
             "folder (must not exist).")],
    to: Annotated[Target, typer.Option(help="Serving engine.")] = Target.triton,
    provider: Annotated[str, typer.Option(help="cpu or cuda: where it runs.")] = "cpu",
    max_batch: Annotated[int, typer.Option(help="Rows per run when batching; 0: none.")] = 64,
    max_delay_us: Annotated[int, typer.Option(
        help="How long a batch waits for company, in microseconds.")] = 0,
    settings: SettingsOption = None,
    name: Annotated[str | None, typer.Option(
        help="Model name (one model only). Default: the file name without .onnx, dots as "
             "underscores.", rich_help_panel="Triton")] = None,
    instances: Annotated[int | None, typer.Option(
        help="Model instances (default 1).", rich_help_panel="Triton")] = None,
    replicas: Annotated[int | None, typer.Option(
        help="Replicas of each model (default 1); the lower bound with --max-replicas.",
        rich_help_panel="Ray")] = None,
    max_replicas: Annotated[int | None, typer.Option(
        help="Autoscale each model between --replicas and this.", rich_help_panel="Ray")
    ] = None,
    replicas_per_node: Annotated[int | None, typer.Option(
        help="Most replicas of a model on one node (1: each on its own node).",
        rich_help_panel="Ray")] = None,
    replica_cpus: Annotated[float | None, typer.Option(
        help="CPUs Ray reserves for each replica (default 1).", rich_help_panel="Ray")
    ] = None,
    max_ongoing: Annotated[int | None, typer.Option(
        help="Requests a replica holds at once (default 64).", rich_help_panel="Ray")] = None,
    host: Annotated[str | None, typer.Option(
        help="Where Ray's HTTP proxies listen (default 127.0.0.1).", rich_help_panel="Ray")
    ] = None,
    port: Annotated[int | None, typer.Option(
        help="Their port (default 8000).", rich_help_panel="Ray")] = None,
    max_request_mb: Annotated[float | None, typer.Option(
        help="Largest request body; larger gets HTTP 413 (default 64).",
        rich_help_panel="Ray")] = None,
    max_run_mb: Annotated[float | None, typer.Option(
        help="Most memory one run may need; more gets HTTP 413 (default 1024).",
        rich_help_panel="Ray")] = None,
) -> None:
    """Write a Triton model repository, or a Ray Serve application.

    Triton: OUT/NAME/config.pbtxt and OUT/NAME/1/model.onnx per file, built and checked
    with Triton's model-config protobuf; with --settings, the benchmark's threads and
    optimisation level go into it (Triton's onnxruntime backend has no setting for idle
    threads' spinning: that one is said, not written).

    Ray: OUT/serve_config.yaml (checked with Ray Serve's own schema), OUT/onnxtwin_app.py
    and OUT/models/; the same protocol as `onnxtwin serve`, each model a deployment with
    its replicas. Run it with the `serve run` line it prints.
    """
    given = {k: v for k, v in locals().items() if k in TRITON_ONLY + RAY_ONLY and v is not None}
    if wrong := [k for k in given if k not in (RAY_ONLY if to is Target.ray else TRITON_ONLY)]:
        option = "--" + wrong[0].replace("_", "-")
        raise OnnxtwinError(f"{option}: expected it only with --to "
                            f"{'triton' if to is Target.ray else 'ray'}, got --to {to}")
    chosen = session_settings(settings, models)
    if to is Target.ray:
        deploy_ray(models, out, provider, max_batch, max_delay_us, chosen, given)
        return
    if len(models) > 1:
        raise OnnxtwinError(f"--to triton: expected one model file (deploy each into the "
                            f"same --out), got {len(models)}")
    from onnxtwin.runtime.serve.triton import TritonOptions, write_repository

    model = models[0]
    keywords = {k: v for k, v in chosen.get(model, {}).items() if k != "spinning"}
    folder = write_repository(model, out, name, TritonOptions(
        provider, max_batch, max_delay_us, instances or 1, **keywords))
    say(console, f"wrote {folder}: start Triton with --model-repository={out.resolve()}")
    if chosen.get(model, {}).get("spinning") is False:
        say(console, "note: --settings asks for idle onnxruntime threads not to spin; "
                     "Triton's onnxruntime backend cannot be told so (its config has no "
                     "such parameter)")


def deploy_ray(models: list[Path], out: Path, provider: str, max_batch: int,
               max_delay_us: int, chosen: dict[Path, dict], given: dict) -> None:
    """`deploy --to ray`: the application folder, and how to run it."""
    from onnxtwin.runtime.serve.ray_config import CONFIG, RayOptions, write_app
    from onnxtwin.runtime.serve.server import ServeOptions

    bounds = {f"max_{k}_bytes": mebibytes(f"max_{k}_mb", given.pop(f"max_{k}_mb"))
              for k in ("request", "run") if f"max_{k}_mb" in given}
    write_app(models, out, RayOptions(
        provider, max_batch=int(bounded("max_batch", max_batch, 0, 65536)),
        max_delay_ms=bounded("max_delay_us", max_delay_us, 0, 60_000_000) / 1000,
        serve=ServeOptions(**bounds), **given), chosen)
    say(console, f"wrote {out}; run it on a Ray cluster with:")
    say(console, f"  serve run {out / CONFIG} --working-dir {out} --address HEAD:6379")
