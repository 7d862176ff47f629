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
) -> None:
    """Export twins to OUT/NAME.FRAMEWORK.onnx, each accepted only after the gate.

    Gate: onnx.checker (full), the opset written, standard ops only, and onnxruntime CPU
    outputs within 1e-5 of the framework twin at batch 1 and 7 (seq 1, 12, 50). Both
    files carry the spec's input/output names, dtypes and `batch`/`seq` dims.
    OUT/export.json lists every file with its op histogram and gate errors.
    """
    from onnxtwin.export import FRAMEWORKS, check_request

    frameworks = FRAMEWORKS if framework is Frameworks.both else (framework.value,)
    for fw in frameworks:
        check_request(fw, opset)
    selected = selected_specs(model, spec)
    quiet_tensorflow()
    from onnxtwin.export.batch import export_all

    with console.status("") as status:
        document = export_all(selected, frameworks, out, opset=opset, seed=seed,
                              use_cache=cache, optimized=optimized, on_step=status_line(status))
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
    count = sum(len(m["files"]) for m in document["models"]) * (2 if optimized else 1)
    say(console, f"wrote {out}/ ({count} files, export.json)")
