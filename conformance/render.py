"""Views of report.json: report.md for CI logs and pull requests, report.html with plots."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import numpy as np

from onnxtwin.runtime.comparison import describe
from onnxtwin.runtime.files import atomic_path

LOCALISED_NODES = 10
"""Node localisation rows shown: the nodes up to the first divergent one, at most this many."""


def write_reports(document: dict, out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and report.html into `out_dir`, each atomically."""
    return write_texts(Path(out_dir), {"report.json": json.dumps(document, indent=2) + "\n",
                                       "report.md": markdown(document),
                                       "report.html": page(document)})


def write_texts(out_dir: Path, texts: dict[str, str]) -> list[Path]:
    """Write each named text into `out_dir` atomically; returns the paths."""
    for name, text in texts.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return [out_dir / name for name in texts]


def summary_rows(document: dict) -> list[list[str]]:
    """One row per model: the numbers the terminal, Markdown and HTML summaries share."""
    rows = []
    for m in document["models"]:
        oracle = [c for c in m["comparisons"] if c["expected"] == m["reference"]]
        pairs = [c for c in m["comparisons"] if c["expected"] != m["reference"]]
        rows.append([m["name"], str(len(m["paths"])), str(len(m["comparisons"])),
                     _worst(oracle), _worst(pairs),
                     ", ".join(f"{_e(v)}" for v in m["min_passing_tolerance"].values()),
                     ", ".join(f"{v:g}" for v in m["tolerance"].values()),
                     "pass" if m["passed"] else "FAIL"])
    return rows


SUMMARY_COLUMNS = ["model", "paths", "comparisons", "worst vs oracle", "worst pair",
                   "min passing tolerance", "tolerance", "verdict"]


ACCURACY_COLUMNS = ["model", "data", "test samples", "accuracy", "agreement",
                    "worst vs oracle", "worst ulps", "over tolerance", "unexplained",
                    "sensitive (max)", "verdict"]


def accuracy_rows(document: dict) -> list[list[str]]:
    """One row per model checked on its test set (trained weights): accuracy parity."""
    rows = []
    for m in document["models"]:
        if not (a := m["accuracy"]):
            continue
        scores = {p["path"]: p["accuracy"] for p in a["paths"]}
        accuracy = (f"{next(iter(scores.values())):.2%} (all {len(scores)})"
                    if len(set(scores.values())) == 1
                    else ", ".join(f"{k} {v:.2%}" for k, v in scores.items()))
        rows.append([m["name"], a["data"], str(a["samples"]), accuracy,
                     f"{min(p['agreement'] for p in a['pairs']):.2%}",
                     _worst([{"max_abs": p["max_abs_vs_oracle"]} for p in a["paths"]]),
                     _ulps(max(p["max_ulps"] if p["max_ulps"] is not None else np.inf
                               for p in a["paths"])),
                     str(max(p["over_tolerance"] for p in a["paths"])),
                     str(max(p["unexplained"] for p in a["paths"])),
                     f"{a['sensitive_samples']} ({_e(a['max_sensitivity'])})",
                     "pass" if a["passed"] else "FAIL"])
    return rows


REDUCED_COLUMNS = ["file", "provider", "test accuracy", "vs fp32 (points)", "agreement",
                   "worst vs oracle / scale", "tolerance / scale", "size vs fp32", "verdict"]


def reduced_rows(document: dict) -> list[list[str]]:
    """One row per reduced file and provider (check --precision): its gate against float32
    and its worst error against the oracle over the scale the tolerance uses,
    max(1, max |oracle|)."""
    rows = []
    for m in document["models"]:
        if not (r := m["reduced"]):
            continue
        for f in r["files"]:
            g = f["gate"]
            for provider in dict.fromkeys(c["actual"].rpartition("@")[2]
                                          for c in r["comparisons"]
                                          if c["actual"].startswith(f["path"] + "@")):
                own = [c for c in r["comparisons"] if c["actual"] == f"{f['path']}@{provider}"]
                fraction = r["tolerances"][f["precision"]]  # tolerance = fraction x scale
                worst = max(_over_scale(c, fraction) for c in own)
                rows.append([f["path"], provider,
                             "-" if g["accuracy"] is None else f"{g['accuracy']:.2%}",
                             "-" if g["drop_points"] is None else f"{-g['drop_points']:+.2f}",
                             "-" if g["agreement"] is None else f"{g['agreement']:.2%}",
                             _e(worst), f"{r['tolerances'][f['precision']]:g}",
                             f"{f['size'] / f['source_size']:.2f}",
                             "pass" if all(c["passed"] for c in own) else "FAIL"])
    return rows


def _over_scale(check: dict, fraction: float) -> float:
    """A reduced path's error over the scale its tolerance was made from (tolerance =
    fraction x max(1, max |oracle|)); an integer output's tolerance is 0: exact or inf."""
    if check["max_abs"] is None:
        return np.inf
    if check["tolerance"] == 0:
        return 0.0 if check["max_abs"] == 0 else np.inf
    return check["max_abs"] * fraction / check["tolerance"]


def reduced_notes(document: dict) -> list[str]:
    """How each reduced file was made and where its error grows most, as text lines."""
    return [reduced_note(f) for m in document["models"]
            for f in (m["reduced"] or {"files": []})["files"]]


def reduced_note(f: dict) -> str:
    """One reduced file (a ReducedResult record, in export.json or report.json) in a line:
    how it was made, what runs reduced and what stayed float32 (why), the calibration
    methods' held-out figures, and where its error grows most."""
    ops = ", ".join(f"{op} x{n}" for op, n in f["reduced_ops"].items()) or "none"
    parts = [f"{f['path']}: {f['method']}; reduced: {ops}",
             *(f"float32 {op}: {why}" for op, why in f["kept_ops"].items())]
    if f["calibration"]:
        scores = ", ".join(f"{m} failed" if "failed" in s else
                           f"{m} {s['agreement']:.2%} / {s['relative_error']:.3g}"
                           for m, s in f["calibration"]["methods"].items())
        parts.append(f"calibration on {f['calibration']['data']}, held-out agreement / "
                     f"error: {scores}")
    if f["divergence"]:
        parts.append("error grows most at " + ", ".join(
            f"{t['tensor']!r} ({t['op']}, {t['layer']}) {t['error']:.2g}"
            for t in f["divergence"]))
    return "; ".join(parts)


def failures(document: dict, limit: int = 20) -> list[str]:
    """Failed comparisons, worst first, and where the twins part ways, as text lines."""
    lines = []
    for m in document["models"]:
        reduced = m["reduced"] or {"comparisons": [], "refused": []}
        lines += [f"{m['name']}: {refusal}" for refusal in reduced["refused"]]
        failed = sorted((c for c in [*m["comparisons"], *reduced["comparisons"]]
                         if not c["passed"]),
                        key=lambda c: -(c["max_abs"] if c["max_abs"] is not None else 1e300))
        for c in failed[:limit]:
            lines.append(f"{m['name']}: {c['actual']} vs {c['expected']} at {_shape(c, m)}: "
                         f"max abs {_e(c['max_abs'])} > {c['tolerance']:g}, argmax agreement "
                         f"{c['argmax_agreement']:.0%}")
        if len(failed) > limit:
            lines.append(f"{m['name']}: ... and {len(failed) - limit} more failed comparisons")
        accuracy = m["accuracy"] or {"pairs": [], "paths": []}
        for p in accuracy["pairs"]:
            if p["disagreements"]:
                lines.append(f"{m['name']}: {p['a']} and {p['b']} classify {p['disagreements']} "
                             f"of {accuracy['samples']} test samples differently")
        for p in accuracy["paths"]:
            if p["unexplained"]:
                lines.append(f"{m['name']}: {p['path']} is beyond the tolerance on "
                             f"{p['unexplained']} test samples, more than their logit scale or "
                             f"sensitivity explains (max abs {_e(p['max_abs_vs_oracle'])})")
        if m["localisation"]:
            first = m["localisation"]["first_divergent"]
            compared = [r for r in m["localisation"]["layers"] if r["max_abs"] is not None]
            last = f" ({compared[-1]['torch']} / {compared[-1]['keras']})" if compared else ""
            lines.append(f"{m['name']}: the twins first diverge at layer {first}" if first else
                         f"{m['name']}: every matched layer agrees, yet the outputs differ: "
                         f"the cause is outside the matched layers, after the last{last} or "
                         "between them (an activation, a pooling, a reshape, an op in forward)")
        if nodes := m["node_localisation"]:
            pair, where = f"{nodes['actual']} and {nodes['expected']}", _shape(nodes["dims"], m)
            lines.append(f"{m['name']}: {pair} first differ at {nodes['first_divergent']} "
                         f"({where})" if nodes["first_divergent"] else
                         f"{m['name']}: no node of {pair} differs beyond the tolerance with "
                         f"every node output kept ({where}), which prevents onnxruntime's "
                         f"fusions")
    return lines


def localisation_tables(document: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows) per localisation: the twins' layers, or a file's nodes up to
    the first divergent one (the LOCALISED_NODES largest errors when none diverges)."""
    tables = []
    for m in document["models"]:
        if layers := m["localisation"]:
            tables.append((f"{m['name']}: torch vs keras, layer by layer",
                           ["torch layer", "keras layer", "max abs", "diverged"],
                           [[x["torch"], x["keras"], _e(x["max_abs"]), _yes(x["diverged"])]
                            for x in layers["layers"]]))
        if nodes := m["node_localisation"]:
            shown = nodes["nodes"]
            end = next((i for i, x in enumerate(shown) if x["diverged"]), None)
            shown = (shown[max(0, end + 1 - LOCALISED_NODES):end + 1] if end is not None else
                     sorted(shown, key=lambda x: -(x["max_abs"] if x["max_abs"] is not None
                                                   else np.inf))[:LOCALISED_NODES])
            tables.append((f"{m['name']}: {nodes['actual']} vs {nodes['expected']}, node by "
                           f"node at {_shape(nodes['dims'], m)}",
                           ["node", "op", "origin", "max abs", "diverged"],
                           [[x["node"], x["op"], x["origin"] or "", _e(x["max_abs"]),
                             _yes(x["diverged"])] for x in shown]))
    return tables


def markdown(document: dict) -> str:
    s, trained = document["summary"], document["settings"]["trained"]
    ran = [p["name"] for p in document["providers"] if p["ran"]]
    out = [f"# onnxtwin conformance: {'PASS' if s['passed'] else 'FAIL'}", "",
           f"{s['models']} models, {s['comparisons']} comparisons, {s['failed']} failed, "
           f"{s['seconds']:.1f} s. Providers that ran: {', '.join(ran)}. "
           f"Opset {document['settings']['opset']}, seed {document['settings']['seed']}.", "",
           md_table(SUMMARY_COLUMNS, summary_rows(document)), ""]
    if rows := accuracy_rows(document):
        out += [f"## Accuracy on the test set (trained weights from {trained})", "",
                md_table(ACCURACY_COLUMNS, rows), ""]
    if rows := reduced_rows(document):
        out += ["## Reduced precision", "", md_table(REDUCED_COLUMNS, rows), "",
                *(f"- {line}" for line in reduced_notes(document)), ""]
    if not s["passed"]:
        out += ["## Failures", "", *(f"- {line}" for line in failures(document)), ""]
    for title, columns, rows in localisation_tables(document):
        out += [f"## Localisation of {title}", "", md_table(columns, rows), ""]
    out += ["## Latency (ms)", "", md_table(LATENCY_COLUMNS, _latency_rows(document)), "",
            "Errors are max abs differences of the outputs; *vs oracle* is against the torch "
            "twin run in float64 (for an ONNX file: onnx.reference). *min passing tolerance* "
            "is the largest error seen, the tightest tolerance every comparison would have "
            "passed.", ""]
    return "\n".join(out)


def page(document: dict) -> str:
    """A self-contained HTML page: summary, failures, per-model tables and inline SVG plots."""
    s = document["summary"]
    verdict = "PASS" if s["passed"] else "FAIL"
    parts = [f"<h1>onnxtwin conformance: <span class='{verdict.lower()}'>{verdict}</span></h1>",
             f"<p>{s['models']} models, {s['comparisons']} comparisons, {s['failed']} failed, "
             f"{s['seconds']:.1f} s.</p>",
             "<h2>Summary</h2>", html_table(SUMMARY_COLUMNS, summary_rows(document))]
    if rows := accuracy_rows(document):
        parts += [f"<h2>Accuracy on the test set (trained weights from "
                  f"{html.escape(document['settings']['trained'])})</h2>",
                  html_table(ACCURACY_COLUMNS, rows)]
    if rows := reduced_rows(document):
        parts += ["<h2>Reduced precision</h2>", html_table(REDUCED_COLUMNS, rows), "<ul>",
                  *(f"<li>{html.escape(x)}</li>" for x in reduced_notes(document)), "</ul>"]
    if not s["passed"]:
        parts += ["<h2>Failures</h2><ul>", *(f"<li>{html.escape(x)}</li>"
                                             for x in failures(document)), "</ul>"]
    for title, columns, rows in localisation_tables(document):
        parts += [f"<h2>Localisation of {html.escape(title)}</h2>", html_table(columns, rows)]
    parts += ["<h2>Error of each path against the float64 oracle (for an ONNX file: "
              "onnx.reference)</h2>", _error_plot(document),
              "<h2>Latency per path and provider</h2>", _latency_plot(document),
              html_table(LATENCY_COLUMNS, _latency_rows(document)),
              "<h2>Providers</h2>",
              html_table(["provider", "usable", "ran", "reason"],
                          [[p["name"], str(p["usable"]), str(p["ran"]), p["reason"]]
                           for p in document["providers"]]),
              "<h2>Exports</h2>",
              html_table(["model", "file", "opset", "nodes", "gate max abs", "graph differences"],
                          [[m["name"], e["path"], str(e["opset"]), str(sum(e["ops"].values())),
                            _e(max(g["max_abs"] for g in e["gate"])),
                            "; ".join(m["graph_differences"])]
                           for m in document["models"] for e in m["exports"]]),
              "<h2>Versions</h2>",
              html_table(["tool", "version"], [[k, v] for k, v in document["versions"].items()])]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>onnxtwin report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.pass{color:#070}.fail{color:#b00}")


LATENCY_COLUMNS = ["model", "path", "at", "p50", "p90", "p99", "samples/s"]


def _latency_rows(document: dict) -> list[list[str]]:
    return [[m["name"], t["path"], describe(t["dims"]), f"{t['p50_ms']:.3f}", f"{t['p90_ms']:.3f}",
             f"{t['p99_ms']:.3f}", f"{t['throughput']:.0f}"]
            for m in document["models"] for t in m["latency"]]


def _error_plot(document: dict) -> str:
    """Per model, each path's worst max abs error vs its reference.

    NaN/Inf is drawn at 1; the floor 1e-12 keeps an exact agreement visible on a log axis.
    """
    worst: dict[tuple[str, str], float] = {}
    for m in document["models"]:
        for c in m["comparisons"]:
            if c["expected"] == m["reference"]:
                key = (m["name"], c["actual"])
                error = c["max_abs"] if c["max_abs"] is not None else 1.0
                worst[key] = max(worst.get(key, 1e-12), error)
    tolerance = document["settings"]["tolerances"]["defaults"]["float32"]
    return _grouped_bars(document, worst, "max abs error vs oracle", tolerance)


def _latency_plot(document: dict) -> str:
    p50 = {(m["name"], t["path"]): t["p50_ms"] for m in document["models"] for t in m["latency"]}
    return _grouped_bars(document, p50, "p50 latency (ms)")


def _grouped_bars(document: dict, values: dict[tuple[str, str], float], label: str,
                  tolerance: float | None = None) -> str:
    """An inline SVG bar chart, log scale: one group per model, one bar per path."""
    import numpy as np

    models = [m["name"] for m in document["models"]]
    paths = list(dict.fromkeys(p for m in document["models"] for p in
                               [*(c["actual"] for c in m["comparisons"]),
                                *(t["path"] for t in m["latency"])]))
    paths = [p for p in paths if any((m, p) in values for m in models)]
    fig, ax = figure(len(models))
    width = 0.8 / max(1, len(paths))
    for i, p in enumerate(paths):
        ax.bar(np.arange(len(models)) + i * width,
               [values.get((m, p), 0.0) for m in models], width, label=p)
    if tolerance is not None:
        ax.axhline(tolerance, color="#b00", linestyle="--", label=f"tolerance {tolerance:g}")
    ax.set_yscale("log")
    ax.set_ylabel(label)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
    ax.legend(fontsize="small", ncols=2)
    return svg(fig)


def figure(groups: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(max(6.0, 1.6 * groups), 3.6))


def svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def html_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: str) -> str:
    css = {"pass": " class='pass'", "FAIL": " class='fail'"}.get(value, "")
    return f"<td{css}>{html.escape(value)}</td>"


def _worst(checks: list[dict]) -> str:
    if any(c["max_abs"] is None for c in checks):
        return "nan/inf"
    return _e(max((c["max_abs"] for c in checks), default=0.0))


def _ulps(value: float) -> str:
    return f"{value:.1f}" if np.isfinite(value) else "nan/inf"


def _e(value: float | None) -> str:
    return "nan/inf" if value is None else f"{value:.2e}"


def _yes(value: bool) -> str:
    return "yes" if value else ""


def _shape(point: dict, model: dict) -> str:
    """A comparison's (or localisation's) point over its model's dims: 'batch 7, seq 12'."""
    return describe({d: point[d] for d in model["dims"]})
