"""The `onnxtwin` command line. Heavy imports (torch, TensorFlow) happen inside commands."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path, folder_lock

app = typer.Typer(
    help="Build a model twice (PyTorch and Keras) with the same weights, and prove they agree.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
console = Console(width=None if sys.stdout.isatty() else 120)  # logs: no truncated columns
errors = Console(stderr=True)

SpecOption = Annotated[Path | None, typer.Option(
    "--spec", help="TOML file of extra model variants (\\[models.NAME] tables).")]


class Source(StrEnum):
    torch = "torch"
    keras = "keras"


class Frameworks(StrEnum):
    torch = "torch"
    keras = "keras"
    both = "both"


def _selected_specs(models: list[str] | None, spec_file: Path | None) -> list:
    """The specs named by --model, else every built-in and every --spec variant."""
    from onnxtwin.builders import BUILTIN, get_spec, load_toml

    extra = load_toml(spec_file) if spec_file else []
    return [get_spec(n) for n in models] if models else [*BUILTIN, *extra]


@app.command()
def models(spec: SpecOption = None) -> None:
    """List the model variants: built-ins, and those of --spec."""
    from onnxtwin.builders import get_spec, names

    _selected_specs(None, spec)  # registers the file's variants
    table = Table("model", "family", "hyper-parameters", "signature")
    for name in names():
        s = get_spec(name)
        params = ", ".join(f"{k}={v}" for k, v in s.hyperparameters().items())
        sig = ", ".join(f"{t.name}:{t.dtype}{list(t.shape)}"
                        for t in (*s.signature.inputs, *s.signature.outputs))
        table.add_row(name, s.family, params, sig)
    console.print(table)


@app.command()
def build(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to build (repeatable). Default: every built-in model.")
    ] = None,
    spec: SpecOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the weight initialisation.")] = 0,
    source: Annotated[Source, typer.Option(
        help="Framework whose initialisation is transferred to the other.")] = Source.torch,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-build"),
) -> None:
    """Build twins, write both weight files, and check native parity (exit 1 if it fails).

    For each model: OUT/NAME/{spec.json, torch.safetensors, keras.weights.h5}, and
    OUT/parity.json with every comparison. Parity: torch vs Keras and each vs the
    float64 torch oracle, max abs error <= 1e-5, at batch 1 and 7 (and seq 1, 12, 50).
    """
    from onnxtwin.builders import build_twins
    from onnxtwin.conformance.native import PAIRS, native_parity

    selected = _selected_specs(model, spec)
    table = Table(title=f"native parity: max abs error over all shapes (tolerance 1e-5), "
                        f"seed {seed}")
    for column in ("model", "source", *(p.replace("_", " ") for p in PAIRS), "verdict"):
        table.add_column(column, no_wrap=True)
    results = []
    with console.status("") as status:
        for s in selected:
            status.update(f"building {s.name} ({source.value} init) ...")
            twins = build_twins(s, seed=seed, source=source.value)
            twins.save(out / s.name)
            status.update(f"checking {s.name} ...")
            parity = native_parity(twins)
            results.append(parity)
            table.add_row(s.name, source.value, *(f"{parity.worst(p):.2e}" for p in PAIRS),
                          "[green]pass" if parity.passed else "[red]FAIL")
    with atomic_path(out / "parity.json") as tmp:
        tmp.write_text(json.dumps({"seed": seed, "source": source.value,
                                   "models": [asdict(r) for r in results]}, indent=2) + "\n")
    console.print(table)
    console.print(f"wrote {out}/ ({len(results)} models, parity.json)")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command()
def export(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to export (repeatable). Default: every built-in model.")
    ] = None,
    framework: Annotated[Frameworks, typer.Option(help="Which twin to export.")] = Frameworks.both,
    opset: Annotated[int, typer.Option(
        help="ONNX opset: 17-20 for torch, 17-18 for keras (tf2onnx 1.17).")] = 18,
    spec: SpecOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the weight initialisation.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-export"),
    cache: Annotated[bool, typer.Option(help="Reuse accepted exports ($ONNXTWIN_CACHE).")] = True,
    optimized: Annotated[bool, typer.Option(
        help="Also write NAME.FRAMEWORK.opt.onnx: onnxruntime's portable (extended) graph "
             "optimisations saved for deployment, gated like the export.")] = False,
) -> None:
    """Export twins to OUT/NAME.FRAMEWORK.onnx, each accepted only after the gate.

    Gate: onnx.checker (full), the opset written, standard ops only, and onnxruntime CPU
    outputs within 1e-5 of the framework twin at batch 1 and 7 (seq 1, 12, 50). Both
    files carry the spec's input/output names, dtypes and `batch`/`seq` dims.
    OUT/export.json lists every file with its op histogram and gate errors.
    """
    from onnxtwin.builders import build_twins
    from onnxtwin.export import FRAMEWORKS, check_request, export_model, graph_differences
    from onnxtwin.export.optimize import optimize_offline

    frameworks = FRAMEWORKS if framework is Frameworks.both else (framework.value,)
    for fw in frameworks:
        check_request(fw, opset)
    selected = _selected_specs(model, spec)
    table = Table(title=f"ONNX exports, opset {opset} (gate: max abs error vs framework <= 1e-5)")
    for column in ("model", "framework", "gate max abs", "nodes", "cache", "seconds"):
        table.add_column(column, no_wrap=True)
    summary = []
    with console.status("") as status:
        for s in selected:
            status.update(f"building {s.name} ...")
            twins = build_twins(s, seed=seed)
            results = []
            for fw in frameworks:
                status.update(f"exporting {s.name} from {fw} ...")
                results.append(export_model(twins, fw, out, opset=opset, use_cache=cache))
            differences = graph_differences(results)
            files = [r.to_dict() for r in results]
            for r, record in zip(results, files, strict=True):
                table.add_row(s.name, r.framework, f"{r.max_abs:.2e}", str(sum(r.ops.values())),
                              "hit" if r.cache_hit else "miss", f"{r.seconds:.1f}")
                if optimized:
                    status.update(f"optimising {r.path.name} ...")
                    path, gate = optimize_offline(r.path, twins, r.framework)
                    worst = max(g.max_abs for g in gate)
                    record["optimized"] = {"path": path.name, "gate_max_abs": worst}
                    table.add_row(s.name, f"{r.framework} (opt)", f"{worst:.2e}", "", "", "")
            summary.append({"model": s.name, "differences": differences, "files": files})
    with atomic_path(out / "export.json") as tmp:
        tmp.write_text(json.dumps({"opset": opset, "seed": seed, "models": summary}, indent=2)
                       + "\n")
    console.print(table)
    for m in summary:
        if m["differences"]:
            console.print(f"{m['model']}: the graphs differ in kind: {'; '.join(m['differences'])}")
    count = sum(len(m["files"]) for m in summary) * (2 if optimized else 1)
    console.print(f"wrote {out}/ ({count} files, export.json)")


@app.command()
def check(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to check (repeatable). Default: every built-in model "
                              "and every --spec variant.")] = None,
    spec: SpecOption = None,
    provider: Annotated[str | None, typer.Option(
        help="Comma-separated providers, e.g. cpu,cuda. Default: every usable one.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset of both exports (17 or 18).")] = 18,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-report"),
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print report.json to stdout (progress goes to stderr).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the inputs.")] = 0,
    tolerance: Annotated[float | None, typer.Option(
        help="Default float32 tolerance (max abs). Per-model values: [tolerances] in --spec.")
    ] = None,
    cache: Annotated[bool, typer.Option(help="Reuse accepted exports ($ONNXTWIN_CACHE).")] = True,
    trained: Annotated[Path | None, typer.Option(
        help="Folder written by `onnxtwin train`: check its trained twins on real test "
             "samples, and every path's accuracy on the whole test set.")] = None,
) -> None:
    """Cross-check every path of every model; exit 0 if all pass, 1 if any fails, 2 on misuse.

    Paths: torch, keras, and onnxruntime on torch's and Keras' .onnx on each provider.
    Each is compared with the float64 torch oracle and with every other path, at batch 1
    and 7 (seq 1, 12, 50, 256 for token models). Weights are random (--seed) unless
    --trained is given. OUT gets report.json, report.md, report.html and the .onnx files.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxtwin.conformance import check as run_check
    from onnxtwin.conformance.render import (
        ACCURACY_COLUMNS,
        SUMMARY_COLUMNS,
        accuracy_rows,
        failures,
        summary_rows,
        write_reports,
    )
    from onnxtwin.conformance.report import select_providers
    from onnxtwin.conformance.tolerances import load_tolerances
    from onnxtwin.export import FRAMEWORKS, check_request

    for framework in FRAMEWORKS:
        check_request(framework, opset)
    tolerances = load_tolerances(spec)
    if tolerance is not None:
        tolerances = tolerances.with_default("float32", tolerance)
    selected = _selected_specs(model, spec)
    providers = select_providers(provider.split(",") if provider else None)
    shown = errors if json_out else console
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with folder_lock(out), Progress(*columns, console=shown,
                                    transient=shown.is_terminal) as progress:
        def on_model(s, steps):
            task = progress.add_task(s.name, total=steps)
            return lambda text: progress.update(task, advance=1, description=text)

        report = run_check(selected, out, providers, tolerances, opset, seed, cache,
                           on_model=on_model, trained=trained)
        document = report.to_dict()
        write_reports(document, out)
    if json_out:
        print(json.dumps(document, indent=2))
    else:
        console.print(_verdict_table(
            f"onnxtwin check: {document['summary']['comparisons']} comparisons on "
            f"{', '.join(report.ran_on)}, opset {opset}, seed {seed}",
            SUMMARY_COLUMNS, summary_rows(document)))
        if rows := accuracy_rows(document):
            console.print(_verdict_table(f"accuracy on the test set, trained weights from "
                                         f"{trained}", ACCURACY_COLUMNS, rows, no_wrap=False))
        for line in failures(document):
            console.print(line, markup=False, highlight=False)
        console.print(f"wrote {out}/ (report.json, report.md, report.html, "
                      f"{sum(len(m.exports) for m in report.models)} .onnx files)")
    if not report.passed:
        raise typer.Exit(1)


def _verdict_table(title: str, columns: list[str], rows: list[list[str]],
                   no_wrap: bool = True) -> Table:
    """A table of report rows whose last cell, "pass" or "FAIL", is coloured."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, no_wrap=no_wrap)
    for row in rows:
        table.add_row(*row[:-1], "[green]pass" if row[-1] == "pass" else "[red]FAIL")
    return table


@app.command()
def train(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to train (repeatable). Default: every built-in model.")
    ] = None,
    framework: Annotated[Source, typer.Option(
        help="Framework that trains; the other twin receives the weights.")] = Source.torch,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Epochs. Default: 5 for images, 20 for text.")] = None,
    data: Annotated[str | None, typer.Option(
        help="fashion-mnist, bbc-news, or PATH: a .npz of images and labels or a .csv with "
             "text and label columns. Default: fashion-mnist for the CNN, bbc-news otherwise.")
    ] = None,
    limit: Annotated[int | None, typer.Option(
        min=10, help="Train on at most this many samples (stratified), for a quick run; the "
                     "check still uses the whole test set.")] = None,
    spec: SpecOption = None,
    provider: Annotated[str | None, typer.Option(
        help="Comma-separated providers for the check, e.g. cpu. Default: every usable one.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, order and split.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-trained"),
) -> None:
    """Train twins on real data, then check every path on trained weights and the test set.

    Per model: OUT/NAME/ (spec.json, torch.safetensors, keras.weights.h5, training.json,
    tokenizer.json for text). Then `onnxtwin check --trained OUT` runs on them: OUT gets
    report.json/.md/.html with each path's test accuracy and agreement, and the .onnx
    files. Exit 1 if any path disagrees with another on one test sample or any logit
    differs by more than the tolerance.
    """
    from onnxtwin.conformance.report import select_providers

    selected = _selected_specs(model, spec)
    select_providers(provider.split(",") if provider else None)  # refuse early, not after hours
    with folder_lock(out):
        _train_each(selected, data, limit, epochs, framework.value, seed, out)
        console.print(f"wrote {len(selected)} trained model(s) to {out}/; checking them")
        check(model=[s.name for s in selected] if model else None, spec=spec,
              provider=provider, out=out, trained=out, seed=seed)


def _train_each(selected, data, limit, epochs, framework, seed, out) -> None:
    """Train every selected model on its data and save it to OUT/NAME, with progress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxtwin.builders.datasets import default_data, load_dataset
    from onnxtwin.builders.training import RECIPES
    from onnxtwin.builders.training import train as train_twins

    for s in selected:
        source = data or default_data(s)
        dataset = load_dataset(source, vocab=s.signature.inputs[0].vocab, seed=seed)
        if limit:
            dataset = dataset.subset(limit, len(dataset.y_test), seed)
        recipe = RECIPES[dataset.kind]
        if epochs:
            recipe = replace(recipe, epochs=epochs)
        console.print(f"[bold]{s.name}[/]: training the {framework} twin on {dataset.name} "
                      f"({len(dataset.y_train)} train / {len(dataset.y_test)} test samples, "
                      f"{len(dataset.classes)} classes), {recipe.epochs} epochs")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task(f"{s.name} epoch 1", total=None)

            def on_batch(done, total, task=task):
                progress.update(task, completed=done, total=total)

            def on_epoch(e, task=task, s=s, total=recipe.epochs):
                progress.console.print(f"  epoch {e.epoch}/{total}: loss {e.loss:.4f}, "
                                       f"train accuracy {e.accuracy:.2%}, {e.seconds:.1f} s",
                                       highlight=False)
                progress.update(task, description=f"{s.name} epoch {e.epoch + 1}", completed=0)

            trained = train_twins(s, dataset, framework, recipe, seed, on_batch, on_epoch)
        trained.save(out / s.name)


@app.command()
def bench(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to benchmark (repeatable). Default: every built-in.")
    ] = None,
    spec: SpecOption = None,
    batch: Annotated[list[int] | None, typer.Option(
        help="Batch size (repeatable). Default: 1 and 64.")] = None,
    seq: Annotated[int, typer.Option(help="Sequence length of token models.")] = 50,
    provider: Annotated[list[str] | None, typer.Option(
        help="onnxruntime provider (repeatable; those that cannot run are left out). "
             "Default: cpu.")] = None,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds.")] = 10,
    calls: Annotated[int, typer.Option(help="Timed calls per path and round.")] = 10,
    compile_torch: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="Include torch.compile (compiles once per shape).")
    ] = True,
    startup: Annotated[bool, typer.Option(
        help="Also time `onnxtwin --help`, `run` and `serve` to their first inference.")
    ] = True,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-bench"),
) -> None:
    """Latency and throughput of torch, torch.compile, Keras and onnxruntime, with targets.

    Interleaved rounds, so the ratios hold on a noisy machine; every path is compared with
    torch eager before its time counts. Writes OUT/bench.json, bench.md, bench.html. A
    missed target is reported (exit 0); exit 2 on misuse.
    """
    from onnxtwin.conformance.bench import BATCHES, run_bench
    from onnxtwin.conformance.bench_report import (
        TARGET_COLUMNS,
        headline,
        target_rows,
        write_bench_reports,
    )

    selected = _selected_specs(model, spec)
    if rounds < 1 or calls < 1 or seq < 1 or any(b < 1 for b in batch or ()):
        raise OnnxtwinError(f"expected --rounds, --calls, --seq and --batch >= 1, got "
                            f"{rounds}, {calls}, {seq}, {batch}")
    with folder_lock(out), console.status("benchmarking") as status:
        document = run_bench(selected, out, tuple(batch or BATCHES), seq,
                             tuple(provider or ("cpu",)), rounds, calls, compile_torch,
                             startup, on_step=lambda step: status.update(step))
        write_bench_reports(document, out)
    console.print(_verdict_table("onnxtwin bench: targets", TARGET_COLUMNS,
                                 target_rows(document)))
    console.print(headline(document), highlight=False)
    console.print(f"wrote {out}/ (bench.json, bench.md, bench.html)", highlight=False)


@app.command()
def providers() -> None:
    """Which onnxruntime execution providers run here, proven by creating a session on each."""
    from onnxtwin.runtime import providers as probe_all

    table = Table("provider", "onnxruntime name", "listed", "usable", "reason")
    for s in probe_all():
        table.add_row(s.alias, s.name, "yes" if s.listed else "no",
                      "[green]yes" if s.usable else "[red]no", s.reason)
    console.print(table)


@app.command()
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
) -> None:
    """Run an ONNX model on saved inputs (validated against its signature); write the outputs.

    Imports only onnxruntime and numpy. A provider that cannot run falls back to CPU with
    a warning (or fails with --strict); the provider that really ran is printed.
    """
    from onnxtwin.runtime.arrays import load_arrays, save_arrays

    session = _session(model, provider, strict, check_finite)
    arrays = load_arrays(input, [i.name for i in session.inputs])
    outputs = session.run(arrays)
    save_arrays(output, outputs)
    shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in outputs.items())
    console.print(f"ran {model.name} on {session.provider}: wrote {output} ({shapes})",
                  highlight=False)


@app.command()
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
    strict: Annotated[bool, typer.Option(
        help="Fail if the provider cannot run here, instead of falling back to CPU.")] = False,
) -> None:
    """Serve ONNX models over HTTP with the Open Inference Protocol v2 (KServe v2, Triton).

    Clients written for Triton (e.g. tritonclient.http) work unchanged. Imports only
    onnxruntime, numpy, Starlette and uvicorn. SIGINT or SIGTERM stops it after the
    requests in flight finish.
    """
    from onnxtwin.runtime.server import ServeOptions, model_names
    from onnxtwin.runtime.server import serve as run_server

    options = ServeOptions(max_batch, max_delay_ms, max_queue, int(max_request_mb * 2**20))
    sessions = {name: _session(path, provider, strict)
                for name, path in model_names(models).items()}
    run_server(sessions, host, port, options,
               announce=lambda line: console.print(line, highlight=False, soft_wrap=True))


class Target(StrEnum):
    triton = "triton"


@app.command()
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
) -> None:
    """Write a Triton model repository: OUT/NAME/config.pbtxt and OUT/NAME/1/model.onnx.

    The config is built and checked with Triton's model-config protobuf; names, dtypes
    and dims come from the model's signature.
    """
    from onnxtwin.runtime.triton import TritonOptions, write_repository

    folder = write_repository(model, out, name, TritonOptions(provider, max_batch, max_delay_us,
                                                              instances))
    console.print(f"wrote {folder}: start Triton with --model-repository={out.resolve()}",
                  highlight=False, soft_wrap=True)


def _session(path: Path, provider: str, strict: bool, check_finite: bool = False):
    """A runtime Session; a provider fallback warning is printed on one line."""
    import warnings

    from onnxtwin.runtime import ProviderFallbackWarning, Session

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        session = Session(path, provider, strict=strict, check_finite=check_finite)
    for w in caught:
        errors.print(f"warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
    return session


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
