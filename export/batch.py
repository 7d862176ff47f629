"""Many models, one or both frameworks: `onnxtwin export` as a library call.

    from onnxtwin.builders import get_spec
    from onnxtwin.export.batch import export_all
    document = export_all([get_spec("gru")], ("torch", "keras"), "out/")   # + out/export.json
    export_all([get_spec("cnn")], ("torch",), "out/", precisions=("fp32", "int8"),
               trained="onnxtwin-trained")   # + cnn.torch.int8.onnx, gated on the test set
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from onnxtwin.builders import ModelSpec, build_twins, grids
from onnxtwin.export.exporter import DEFAULT_OPSET, check_request, export_model, graph_differences
from onnxtwin.export.precision import REDUCED, Limits, check_precision, reduced_options
from onnxtwin.runtime.files import folder_lock, inside, staging_folder, write_json


def export_all(specs: Sequence[ModelSpec], frameworks: Sequence[str], out: str | Path, *,
               opset: int = DEFAULT_OPSET, seed: int = grids.WEIGHT_SEED, use_cache: bool = True,
               optimized: bool = False, precisions: Sequence[str] = ("fp32",),
               trained: str | Path | None = None, calibration: str | Path | None = None,
               limits: dict[str, Limits] | None = None,
               on_step: Callable[[str], None] = lambda _: None) -> dict:
    """Build each spec's twins with `seed` (or load them from TRAINED/NAME, written by
    `onnxtwin train`), export them from every framework into OUT, and write
    OUT/export.json: the returned document.

    The document: {"opset", "seed", "models": [{"model", "differences", "files"}]} (and a
    "note" where a model has nothing to export: an ONNX file entry), each
    file an ExportResult.to_dict() with, if `optimized`, an "optimized" record of the
    NAME.FRAMEWORK.opt.onnx written beside it ({"path", "gate_max_abs"}), and a "reduced"
    list of ReducedResult.to_dict() for each of `precisions` other than fp32
    (NAME.FRAMEWORK.fp16.onnx, .int8.onnx): gated on the trained model's test set, or on
    the matrix inputs for random weights; int8 of a graph with a Conv calibrates on the
    training split, or on `calibration` (.npz).

    Every request is checked before any work, and the files are written to a staging
    folder and moved into OUT only when every one was accepted: a refusal leaves OUT as it
    was. OUT is held (folder_lock) against a second writer. `on_step` is told each step.
    """
    for framework in frameworks:
        check_request(framework, opset)
    for precision in precisions:
        check_precision(precision)
    reduced = [p for p in dict.fromkeys(precisions) if p in REDUCED]
    reduced_options(reduced, calibration, None)
    out = Path(out)
    models = []
    with folder_lock(out):
        staging = staging_folder(out)
        try:
            for spec in specs:
                models.append(_export_spec(spec, frameworks, staging, opset, seed, use_cache,
                                           optimized, reduced, trained, calibration, limits,
                                           on_step))
            for file in sorted(staging.glob("*.onnx")) if staging.exists() else ():
                file.replace(out / file.name)
            for record in (f for m in models for f in m["files"]):
                record["path"] = str(out / Path(record["path"]).name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        document = {"opset": opset, "seed": seed, "trained": None if trained is None
                    else str(trained), "models": models}
        write_json(out / "export.json", document)
    return document


def _export_spec(spec, frameworks, out: Path, opset, seed, use_cache, optimized, reduced,
                 trained, calibration, limits, on_step) -> dict:
    wanted = [f for f in frameworks if f in spec.frameworks]
    if not wanted:  # an ONNX file, or an entry without the framework asked for
        return {"model": spec.name, "differences": [], "files": [],
                "note": "an ONNX file: nothing to export" if not spec.frameworks
                else f"has no {' or '.join(frameworks)} model"}
    data = None
    if trained is not None:
        from onnxtwin.builders.training import load_trained

        on_step(f"loading trained {spec.name} and its data ...")
        loaded = load_trained(inside(trained, spec.name))
        twins, data = loaded.twins, loaded.dataset() if reduced else None
    else:
        on_step(f"building {spec.name} ...")
        twins = build_twins(spec, seed=seed)
    results = []
    for framework in wanted:
        on_step(f"exporting {spec.name} from {framework} ...")
        results.append(export_model(twins, framework, out, opset=opset, use_cache=use_cache))
    files = [r.to_dict() for r in results]
    for r, record in zip(results, files, strict=True):
        if optimized:
            from onnxtwin.export.optimize import optimize_offline

            on_step(f"optimising {r.path.name} ...")
            path, gate = optimize_offline(r.path, twins, r.framework)
            record["optimized"] = {"path": path.name,
                                   "gate_max_abs": max(g.max_abs for g in gate)}
        if reduced:
            record["reduced"] = [
                result.to_dict() for result in reduce_file(
                    r.path, reduced, twins.spec, data, calibration, limits, on_step)]
    return {"model": spec.name, "differences": graph_differences(results), "files": files}


def reduce_file(path: Path, precisions: Sequence[str], spec: ModelSpec, data, calibration,
                limits: dict[str, Limits] | None, on_step: Callable[[str], None] = lambda _: None,
                seed: int = grids.MATRIX_SEED) -> list:
    """The reduced files of one float32 export, each gated (see export_all)."""
    from onnxtwin.export.precision import LIMITS, reduce_precision
    from onnxtwin.export.precision_data import dataset_calibration, file_calibration, gate_data

    gate = gate_data(spec, data, seed)
    samples = (file_calibration(calibration, path) if calibration is not None
               else dataset_calibration(spec, data, seed) if data is not None else None)
    found = []
    for precision in precisions:
        on_step(f"{precision} of {path.name} ...")
        found.append(reduce_precision(path, precision, gate, samples,
                                      (limits or LIMITS)[precision]))
    return found
