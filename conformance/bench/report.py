"""Views of bench.json: bench.md, and bench.html with a plot of the ratios."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onnxtwin.conformance.bench.run import TARGET_ONNX_VS_NATIVE
from onnxtwin.conformance.render import figure, html_table, md_table, svg, write_texts

COLUMNS = ["model", "batch", "path", "settings", "p50 ms", "p90 ms", "samples/s",
           "vs fastest native", "max abs vs reference"]
TARGET_COLUMNS = ["model", "batch", "target", "measured", "limit", "met"]


def write_bench_reports(document: dict, out_dir: Path) -> list[Path]:
    """bench.json, bench.md and bench.html in `out_dir`, each written atomically."""
    return write_texts(out_dir, {"bench.json": json.dumps(document, indent=1) + "\n",
                                 "bench.md": markdown(document), "bench.html": page(document)})


def rows(document: dict) -> list[list[str]]:
    """One row per model, batch and contender."""
    return [[m["name"], str(m["batch"]), c["name"], _settings(c["settings"]),
             f"{c['p50_ms']:.3f}", f"{c['p90_ms']:.3f}", f"{c['throughput']:.0f}",
             f"{c['vs_fastest_native']:.2f}x", f"{c['max_abs_vs_torch']:.1e}"]
            for m in document["models"] for c in m["contenders"]]


def target_rows(document: dict) -> list[list[str]]:
    found = [(m["name"], str(m["batch"]), t) for m in document["models"] for t in m["targets"]]
    if document.get("startup"):
        found += [("(cli)", "", t) for t in document["startup"]["targets"]]
    return [[name, batch, t["target"], f"{t['value']:.3g}", f"{t['limit']:g}",
             "pass" if t["met"] else "FAIL"] for name, batch, t in found]


def headline(document: dict) -> str:
    s, m = document["summary"], document["machine"]
    return (f"{s['met']} of {s['targets']} targets met on {m['cpu']} ({m['cores']} cores); "
            f"float32 matmul peak {document['matmul_peak_gflops']:.1f} GFLOP/s.")


def markdown(document: dict) -> str:
    skipped = [f"- {m['name']} batch {m['batch']}: {k}: {v}" for m in document["models"]
               for k, v in m["skipped"].items()]
    return "\n".join(["# onnxtwin bench", "", headline(document), "", "## Targets", "",
                      md_table(TARGET_COLUMNS, target_rows(document)), "", "## Paths", "",
                      md_table(COLUMNS, rows(document)), "",
                      *(["## Not timed", "", *skipped, ""] if skipped else [])])


def page(document: dict) -> str:
    parts = ["<h1>onnxtwin bench</h1>", f"<p>{headline(document)}</p>",
             "<h2>Each path's p50 latency / the fastest native framework's</h2>",
             _ratio_plot(document), "<h2>Targets</h2>",
             html_table(TARGET_COLUMNS, target_rows(document)), "<h2>Paths</h2>",
             html_table(COLUMNS, rows(document)), "<h2>Machine</h2>",
             f"<pre>{json.dumps(document['machine'], indent=1)}</pre>"]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>onnxtwin bench</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-"
            "collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}.fail{color:#b00}"
            f".pass{{color:#070}}</style></head><body>{''.join(parts)}</body></html>\n")


def _ratio_plot(document: dict) -> str:
    groups = [f"{m['name']} b{m['batch']}" for m in document["models"]]
    names = list(dict.fromkeys(c["name"] for m in document["models"] for c in m["contenders"]))
    fig, ax = figure(len(groups))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ratios = [next((c["vs_fastest_native"] for c in m["contenders"] if c["name"] == name),
                       0.0) for m in document["models"]]
        ax.bar(np.arange(len(groups)) + i * width, ratios, width, label=name)
    ax.axhline(TARGET_ONNX_VS_NATIVE, color="#b00", linestyle="--",
               label=f"target {TARGET_ONNX_VS_NATIVE}")
    ax.set_yscale("log")
    ax.set_ylabel("p50 / fastest native p50")
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=30)
    ax.legend(fontsize="x-small", ncols=3)
    return svg(fig)


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "file")
