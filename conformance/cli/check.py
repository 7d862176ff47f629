"""Commands that prove: `check` (every path of every model) and `train` (then check)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from onnxtwin.conformance.cli.core import (
    MAX_SEED,
    CalibrationOption,
    GateOption,
    Source,
    SpecOption,
    app,
    console,
    errors,
    quiet_tensorflow,
    result_table,
    say,
    selected_specs,
)
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import folder_lock, inside


def _progress(shown):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=shown, transient=shown.is_terminal)


def run_and_report(selected: list, out: Path, options, json_out: bool = False,
                   runner=None) -> None:
    """Check `selected` with CheckOptions `options`, write OUT/report.{json,md,html}, and
    show the result: tables and failures, or report.json on stdout with `json_out`.
    Exit 1 if any comparison fails. The caller holds OUT's lock. `runner`: a
    cluster.RayRunner that runs the models (None: here)."""
    from onnxtwin.conformance.orchestrator import check as run_check
    from onnxtwin.conformance.render import (
        ACCURACY_COLUMNS,
        REDUCED_COLUMNS,
        SUMMARY_COLUMNS,
        accuracy_rows,
        failures,
        reduced_notes,
        reduced_rows,
        summary_rows,
        write_reports,
    )

    shown = errors if json_out else console
    with _progress(shown) as progress:
        def on_model(s, steps):
            task = progress.add_task(s.name, total=steps)
            return lambda text: progress.update(task, advance=1, description=text)

        report = run_check(selected, out, options, on_model=on_model, runner=runner)
        document = report.to_dict()
        write_reports(document, out)
    if runner is not None:
        say(shown, f"ran on the Ray cluster at {runner.address}: " + ", ".join(
            f"{s.name} on node {node}" for s, node in zip(selected, runner.nodes, strict=True)))
    if json_out:
        print(json.dumps(document, indent=2))
    else:
        console.print(result_table(
            f"onnxtwin check: {document['summary']['comparisons']} comparisons on "
            f"{', '.join(report.ran_on)}, opset {options.opset}, seed {options.seed}",
            SUMMARY_COLUMNS, summary_rows(document)))
        if rows := accuracy_rows(document):
            console.print(result_table(f"accuracy on the test set, trained weights from "
                                       f"{options.trained}", ACCURACY_COLUMNS, rows))
        if rows := reduced_rows(document):
            console.print(result_table("reduced precision: gate against float32, paths against "
                                       "the oracle", REDUCED_COLUMNS, rows))
            for line in reduced_notes(document):
                say(console, line)
        for line in failures(document):
            say(console, line)
        say(console, f"wrote {out}/ (report.json, report.md, report.html, "
                     f"{sum(len(m.exports) for m in report.models)} .onnx files)")
    if not report.passed:
        raise typer.Exit(1)


def _providers(provider: str | None) -> tuple[str, ...]:
    """--provider's comma-separated list, each proven usable here (a usage error if not)."""
    from onnxtwin.conformance.orchestrator import select_providers

    return tuple(select_providers(provider.split(",") if provider else None))

PANEL = "Conformance"


@app.command(rich_help_panel=PANEL)
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
    seed: Annotated[int, typer.Option(
        min=0, max=MAX_SEED, help="Seed of the weights and of the inputs.")] = 0,
    tolerance: Annotated[float | None, typer.Option(
        help="Default float32 tolerance (max abs). Per-model values: \\[tolerances] in --spec.")
    ] = None,
    cache: Annotated[bool, typer.Option(help="Reuse accepted exports ($ONNXTWIN_CACHE).")] = True,
    trained: Annotated[Path | None, typer.Option(
        help="Folder written by `onnxtwin train`: check its trained twins on real test "
             "samples, and every path's accuracy on the whole test set.")] = None,
    precision: Annotated[list[str] | None, typer.Option(
        help="Also make each file's fp16 / int8 copy (repeatable), gated as `export "
             "--precision` does, and run it as a path of its own "
             "against the oracle within a fraction of the output scale (fp16 0.01, int8 0.5)."
             )] = None,
    calibration: CalibrationOption = None,
    gate: GateOption = None,
    ray: Annotated[str | None, typer.Option(
        metavar="ADDRESS", help="Run each model as a task on the Ray cluster whose head is "
                                "at ADDRESS (HOST:PORT, or auto); the files come back to OUT.")
    ] = None,
) -> None:
    """Cross-check every path of every model; exit 0 if all pass, 1 if any fails, 2 on misuse.

    Paths: torch, keras, and onnxruntime on torch's and Keras' .onnx on each provider.
    Each is compared with the float64 torch oracle and with every other path, at batch 1
    and 7 (seq 1, 12, 50, 256 for token models). Weights are random (--seed) unless
    --trained is given. OUT gets report.json, report.md, report.html and the .onnx files.

    --spec entries of your own run at their `dims`: a pair's weights move from its
    `source` first; one framework is checked against its own float64 run; an ONNX file
    runs with optimisation off and on against onnx.reference.

    --ray runs each model as a Ray task on a node of the cluster (one with a GPU for a
    provider other than cpu; by default cpu, and cuda if the cluster has a GPU) and
    writes OUT here: the files and report.json of a local run, but for timings and the
    command line. Each node needs onnxtwin, and your files at the same paths.
    """
    from onnxtwin.conformance.cluster import connected
    from onnxtwin.conformance.orchestrator import CheckOptions
    from onnxtwin.conformance.tolerances import load_tolerances
    from onnxtwin.export import FRAMEWORKS, check_request
    from onnxtwin.export.precision import REDUCED, check_precision, limits_with, reduced_options

    for framework in FRAMEWORKS:
        check_request(framework, opset)
    precisions = tuple(dict.fromkeys(check_precision(p) for p in precision or ()))
    if "fp32" in precisions:
        raise OnnxtwinError(f"--precision: expected {list(REDUCED)} (float32 always runs), "
                            f"got {list(precisions)}")
    reduced_options(precisions, calibration, gate)
    selected = selected_specs(model, spec)
    if precisions and (files := [s.name for s in selected if not s.frameworks]):
        raise OnnxtwinError(f"--precision: expected models that onnxtwin exports (it reduces "
                            f"its own float32 exports), got ONNX file entries {files}")
    tolerances = load_tolerances(spec)
    if tolerance is not None:
        tolerances = tolerances.with_default("float32", tolerance)
    requested = tuple(provider.split(",")) if provider else None  # --ray: usable on a node
    options = CheckOptions(providers=requested if ray else _providers(provider),
                           tolerances=tolerances, opset=opset, seed=seed, use_cache=cache,
                           trained=trained, precisions=precisions, calibration=calibration,
                           limits=limits_with(gate or []))
    if not ray:
        quiet_tensorflow()  # the twins are built here
    with (connected(ray, spec) if ray else nullcontext()) as runner, folder_lock(out):
        run_and_report(selected, out, options, json_out, runner)


@app.command(rich_help_panel=PANEL)
def train(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to train (repeatable). Default: every built-in model.")
    ] = None,
    framework: Annotated[Source, typer.Option(
        help="Framework that trains; the other twin receives the weights.")] = Source.torch,
    epochs: Annotated[int | None, typer.Option(
        min=1, max=10_000, help="Epochs. Default: 5 for images, 20 for text.")] = None,
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
    seed: Annotated[int, typer.Option(
        min=0, max=MAX_SEED, help="Seed of the initialisation, order and split.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-trained"),
) -> None:
    """Train twins on real data, then check every path on trained weights and the test set.

    Per model: OUT/NAME/ (spec.json, torch.safetensors, keras.weights.h5, training.json,
    tokenizer.json for text). Then `onnxtwin check --trained OUT` runs on them: OUT gets
    report.json/.md/.html with each path's test accuracy and agreement, and the .onnx
    files. Exit 1 if any path disagrees with another on one test sample or any logit
    differs by more than the tolerance.
    """
    from onnxtwin.conformance.orchestrator import CheckOptions
    from onnxtwin.conformance.tolerances import load_tolerances

    selected = selected_specs(model, spec)
    for s in selected:
        if s.family in ("user", "onnx"):
            raise OnnxtwinError(f"model {s.name!r}: expected a family variant to train, got a "
                                f"{s.family} entry (train it in its own code, then give "
                                "its weights file as `weights` and run `onnxtwin check`)")
    options = CheckOptions(providers=_providers(provider),  # refuse early, not after hours
                           tolerances=load_tolerances(spec), seed=seed, trained=out)
    quiet_tensorflow()
    with folder_lock(out):
        _train_each(selected, data, limit, epochs, framework.value, seed, out)
        say(console, f"wrote {len(selected)} trained model(s) to {out}/; checking them")
        run_and_report(selected, out, options)


def _train_each(selected, data, limit, epochs, framework, seed, out) -> None:
    """Train every selected model on its data and save it to OUT/NAME, with progress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxtwin.builders.training import prepare
    from onnxtwin.builders.training import train as train_twins

    for s in selected:
        dataset, recipe = prepare(s, data, limit, epochs, seed)
        say(console, f"{s.name}: training the {framework} twin on {dataset.name} "
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
        trained.save(inside(out, s.name))
