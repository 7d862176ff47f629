"""`onnxtwin bench`: latency and throughput of every path, against the project's targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxtwin.conformance.cli.core import (
    SpecOption,
    app,
    bounded,
    console,
    quiet_tensorflow,
    result_table,
    say,
    selected_specs,
    status_line,
)
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import folder_lock

PANEL = "Conformance"


@app.command(rich_help_panel=PANEL)
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
    precision: Annotated[list[str] | None, typer.Option(
        help="Reduced-precision copies of each float32 export that race too, judged against "
             "their float32 file (repeatable: fp16, int8; fp32 alone: none). Default: fp16 "
             "and int8.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("onnxtwin-bench"),
) -> None:
    """Latency and throughput of torch, torch.compile, Keras and onnxruntime, with targets.

    Interleaved rounds, so the ratios hold on a noisy machine; every path is compared with
    torch eager before its time counts. Per model, the file and settings onnxtwin would
    deploy are chosen and re-measured in a confirmation pass: the headline. Writes
    OUT/bench.json, bench.md, bench.html and deploy.json (for `serve`/`deploy --settings`).
    A missed target is reported (exit 0); exit 2 on misuse.
    """
    selected = selected_specs(model, spec)
    if rounds < 1 or calls < 1 or seq < 1 or any(b < 1 for b in batch or ()):
        raise OnnxtwinError(f"expected --rounds, --calls, --seq and --batch >= 1, got "
                            f"{rounds}, {calls}, {seq}, {batch}")
    for name, value, high in (("rounds", rounds, 1000), ("calls", calls, 10_000),
                              ("seq", seq, 65_536), *(("batch", b, 65_536) for b in batch or ())):
        bounded(name, value, 1, high)  # before any input is sized from it
    quiet_tensorflow()
    from onnxtwin.conformance.bench.report import (
        DEPLOY_COLUMNS,
        TARGET_COLUMNS,
        deploy_rows,
        headline,
        target_rows,
        write_bench_reports,
    )
    from onnxtwin.conformance.bench.run import BATCHES, REDUCED, BenchOptions, run_bench
    from onnxtwin.export.precision import check_precision

    asked = [check_precision(p) for p in precision or REDUCED]  # fp32: the exports alone
    precisions = tuple(p for p in dict.fromkeys(asked) if p != "fp32")
    options = BenchOptions(tuple(batch or BATCHES), seq, tuple(provider or ("cpu",)), rounds,
                           calls, compile_torch, startup, precisions)
    with folder_lock(out), console.status("benchmarking") as status:
        document = run_bench(selected, out, options, on_step=status_line(status))
        write_bench_reports(document, out)
    console.print(result_table("onnxtwin bench: targets", TARGET_COLUMNS,
                               target_rows(document)))
    console.print(result_table("onnxtwin bench: deploy choice, confirmed", DEPLOY_COLUMNS,
                               deploy_rows(document)))
    console.print(headline(document), highlight=False)
    say(console, f"wrote {out}/ (bench.json, bench.md, bench.html, deploy.json)")
