"""Many models, one or both frameworks: `onnxtwin export` as a library call.

    from onnxtwin.builders import get_spec
    from onnxtwin.export.batch import export_all
    document = export_all([get_spec("gru")], ("torch", "keras"), "out/")   # + out/export.json
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from onnxtwin.builders import ModelSpec, build_twins, grids
from onnxtwin.export.exporter import DEFAULT_OPSET, check_request, export_model, graph_differences
from onnxtwin.runtime.files import folder_lock, write_json


def export_all(specs: Sequence[ModelSpec], frameworks: Sequence[str], out: str | Path, *,
               opset: int = DEFAULT_OPSET, seed: int = grids.WEIGHT_SEED, use_cache: bool = True,
               optimized: bool = False,
               on_step: Callable[[str], None] = lambda _: None) -> dict:
    """Build each spec's twins with `seed`, export them from every framework into OUT, and
    write OUT/export.json: the returned document.

    The document: {"opset", "seed", "models": [{"model", "differences", "files"}]} (and a
    "note" where a model has nothing to export: an ONNX file entry), each
    file an ExportResult.to_dict() with, if `optimized`, an "optimized" record of the
    NAME.FRAMEWORK.opt.onnx written beside it ({"path", "gate_max_abs"}). Every request
    is checked before any work; OUT is held (folder_lock) against a second writer, so two
    exports into one folder cannot each write an export.json that lists only its own
    models. `on_step` is told each step (for a progress display).
    """
    for framework in frameworks:
        check_request(framework, opset)
    out = Path(out)
    models = []
    with folder_lock(out):
        for spec in specs:
            wanted = [f for f in frameworks if f in spec.frameworks]
            if not wanted:  # an ONNX file, or an entry without the framework asked for
                models.append({"model": spec.name, "differences": [], "files": [],
                               "note": "an ONNX file: nothing to export" if not spec.frameworks
                               else f"has no {' or '.join(frameworks)} model"})
                continue
            on_step(f"building {spec.name} ...")
            twins = build_twins(spec, seed=seed)
            results = []
            for framework in wanted:
                on_step(f"exporting {spec.name} from {framework} ...")
                results.append(export_model(twins, framework, out, opset=opset,
                                            use_cache=use_cache))
            files = [r.to_dict() for r in results]
            if optimized:
                from onnxtwin.export.optimize import optimize_offline

                for r, record in zip(results, files, strict=True):
                    on_step(f"optimising {r.path.name} ...")
                    path, gate = optimize_offline(r.path, twins, r.framework)
                    record["optimized"] = {"path": path.name,
                                           "gate_max_abs": max(g.max_abs for g in gate)}
            models.append({"model": spec.name, "differences": graph_differences(results),
                           "files": files})
        document = {"opset": opset, "seed": seed, "models": models}
        write_json(out / "export.json", document)
    return document
