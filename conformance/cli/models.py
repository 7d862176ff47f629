"""Commands that make models: `models` (list), `build` (twins and native parity), `export`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from onnxtwin.conformance.cli.core import (
    MAX_SEED,
    CalibrationOption,
    GateOption,
    Source,
    SpecOption,
    app,
    console,
    quiet_tensorflow,
    result_table,
    say,
    selected_specs,
    status_line,
)
from onnxtwin.runtime.errors import OnnxtwinError

PANEL = "Models"


class Frameworks(StrEnum):
    torch = "torch"
    keras = "keras"
    both = "both"


@app.command(rich_help_panel=PANEL)
def models(spec: SpecOption = None) -> None:
    """List the model variants: built-ins, and those of --spec."""
    from onnxtwin.builders import get_spec, names

    selected_specs(None, spec)  # registers the file's variants
    table = Table("model", "family", "hyper-parameters", "signature")
    for name in names():
        s = get_spec(name)
        params = s.described()
        sig = ", ".join(f"{t.name}:{t.dtype}{list(t.shape)}"
                        for t in (*s.signature.inputs, *s.signature.outputs))
        table.add_row(*map(Text, (name, s.family, params, sig)))
    console.print(table)


@app.command(rich_help_panel=PANEL)
def build(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to build (repeatable). Default: every built-in model.")
    ] = None,
    spec: SpecOption = None,
    seed: Annotated[int, typer.Option(
        min=0, max=MAX_SEED, help="Seed of the weight initialisation.")] = 0,
    source: Annotated[Source | None, typer.Option(
        help="Framework whose initialisation is transferred to the other. Default: torch, "
             "or a user entry's `source`.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-build"),
) -> None:
    """Build twins, write both weight files, and check native parity (exit 1 if it fails).

    For each model: OUT/NAME/{spec.json, torch.safetensors, keras.weights.h5}, and
    OUT/parity.json with every comparison. Parity: torch vs Keras and each vs the
    float64 torch oracle, max abs error <= 1e-5, at batch 1 and 7 (and seq 1, 12, 50).
    """
    selected = selected_specs(model, spec)
    quiet_tensorflow()
    from onnxtwin.conformance.build import build_all
    from onnxtwin.conformance.native import PAIRS

    with console.status("") as status:
        results = build_all(selected, seed, source and source.value, out,
                            on_step=status_line(status))
    rows = [[r.model, r.source, *("-" if r.worst(p) is None else f"{r.worst(p):.2e}"
                                  for p in PAIRS), "pass" if r.passed else "FAIL"]
            for r in results]
    console.print(result_table(
        f"native parity: max abs error over all shapes (tolerance 1e-5), seed {seed}",
        ["model", "source", *(p.replace("_", " ") for p in PAIRS), "verdict"], rows))
    for s in selected:
        if not s.frameworks:
            say(console, f"{s.name}: an ONNX file has no twins to build (check it with "
                         "`onnxtwin check`)")
    say(console, f"wrote {out}/ ({len(results)} models, parity.json)")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command(rich_help_panel=PANEL)
def export(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Variant to export (repeatable). Default: every built-in model.")
    ] = None,
    framework: Annotated[Frameworks, typer.Option(help="Which twin to export.")] = Frameworks.both,
    opset: Annotated[int, typer.Option(
        help="ONNX opset: 17-20 for torch, 17-18 for keras (tf2onnx 1.17).")] = 18,
    spec: SpecOption = None,
    seed: Annotated[int, typer.Option(
        min=0, max=MAX_SEED, help="Seed of the weight initialisation.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-export"),
    cache: Annotated[bool, typer.Option(help="Reuse accepted exports ($ONNXTWIN_CACHE).")] = True,
    optimized: Annotated[bool, typer.Option(
        help="Also save onnxruntime's portable (extended) graph optimisations of each file "
             "beside it, as .opt.onnx for deployment, gated like the export.")] = False,
    precision: Annotated[list[str] | None, typer.Option(
        help="fp32, fp16 or int8 (repeatable). An fp16 or int8 file goes beside its float32 "
             "file, with the precision in its name, only if it passes the accuracy gate against "
             "float32. Default: fp32.")] = None,
    trained: Annotated[Path | None, typer.Option(
        help="Folder written by `onnxtwin train`: export its trained twins; reduced files "
             "are gated on the whole test set and int8 calibrates on training samples.")
    ] = None,
    calibration: CalibrationOption = None,
    gate: GateOption = None,
) -> None:
    """Export twins to OUT/NAME.FRAMEWORK.onnx, each accepted only after the gate.

    Gate: onnx.checker (full), the opset written, standard ops only, and onnxruntime CPU
    outputs within 1e-5 of the framework twin at batch 1 and 7 (seq 1, 12, 50). Both
    files carry the spec's input/output names, dtypes and `batch`/`seq` dims.
    OUT/export.json lists every file with its op histogram and gate errors.

    Reduced precision (--precision fp16/int8) is gated against the float32 file: on a
    trained model's whole test set, accuracy within 0.1 points (fp16) / 0.5 points (int8)
    and argmax agreement >= 99.9% / 99%; on random weights, the outputs' error over their
    scale on the matrix inputs. A refusal writes nothing (exit 2, the figures in one line).
    """
    from onnxtwin.export import FRAMEWORKS, check_request
    from onnxtwin.export.precision import check_precision, limits_with, reduced_options

    frameworks = FRAMEWORKS if framework is Frameworks.both else (framework.value,)
    for fw in frameworks:
        check_request(fw, opset)
    precisions = [check_precision(p) for p in precision or ["fp32"]]
    limits = limits_with(gate or [])
    reduced_options(precisions, calibration, gate)
    if trained is not None and not trained.is_dir():
        raise OnnxtwinError(f"--trained: expected a folder written by `onnxtwin train`, got "
                            f"{trained}")
    selected = selected_specs(model, spec)
    quiet_tensorflow()
    from onnxtwin.export.batch import export_all

    with console.status("") as status:
        document = export_all(selected, frameworks, out, opset=opset, seed=seed,
                              use_cache=cache, optimized=optimized, precisions=precisions,
                              trained=trained, calibration=calibration, limits=limits,
                              on_step=status_line(status))
    rows = []
    for m in document["models"]:
        for f in m["files"]:
            rows.append([m["model"], f["framework"], f"{max(c['max_abs'] for c in f['gate']):.2e}",
                         str(sum(f["ops"].values())), "hit" if f["cache_hit"] else "miss",
                         f"{f['seconds']:.1f}"])
            if opt := f.get("optimized"):
                rows.append([m["model"], f"{f['framework']} (opt)", f"{opt['gate_max_abs']:.2e}",
                             "", "", ""])
    console.print(result_table(
        f"ONNX exports, opset {opset} (gate: max abs error vs framework <= 1e-5)",
        ["model", "framework", "gate max abs", "nodes", "cache", "seconds"], rows))
    for m in document["models"]:
        if "note" in m:
            say(console, f"{m['model']}: {m['note']}")
        if m["differences"]:
            say(console, f"{m['model']}: the graphs differ in kind: "
                         f"{'; '.join(m['differences'])}")
    reduced = [r for m in document["models"] for f in m["files"] for r in f.get("reduced", ())]
    if reduced:
        console.print(result_table("reduced precision, gated against the float32 file",
                                   REDUCED_COLUMNS, [_reduced_row(r) for r in reduced]))
        from onnxtwin.conformance.render import reduced_note

        for r in reduced:
            say(console, reduced_note(r))
    count = sum(len(m["files"]) for m in document["models"]) * (2 if optimized else 1)
    say(console, f"wrote {out}/ ({count + len(reduced)} files, export.json)")


REDUCED_COLUMNS = ["file", "test accuracy", "vs fp32 (points)", "agreement", "error / scale",
                   "size vs fp32", "data"]


def _reduced_row(r: dict) -> list[str]:
    g = r["gate"]
    accuracy = "-" if g["accuracy"] is None else f"{g['accuracy']:.2%}"
    drop = "-" if g["drop_points"] is None else f"{-g['drop_points']:+.2f}"
    agreement = "-" if g["agreement"] is None else f"{g['agreement']:.2%}"
    error = "inf" if g["relative_error"] is None else f"{g['relative_error']:.2e}"
    return [r["path"], accuracy, drop, agreement, error, f"{r['size'] / r['source_size']:.2f}",
            f"{g['samples']} samples"]
