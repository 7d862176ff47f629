"""Views of bench.json: bench.md, and bench.html with a plot of the ratios; and deploy.json,
the session settings the benchmark chose and confirmed, for `serve` and `deploy --settings`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onnxtwin.conformance.bench.run import TARGET_ONNX_VS_NATIVE, deploy_settings
from onnxtwin.conformance.render import figure, html_table, md_table, svg, write_texts

COLUMNS = ["model", "batch", "path", "settings", "p50 ms", "p90 ms", "samples/s",
           "vs fastest native", "vs float32 file", "max abs vs reference"]
TARGET_COLUMNS = ["model", "batch", "target", "measured", "limit", "met"]
DEPLOY_COLUMNS = ["model", "deployed", "settings", "exploration geomean", "batch",
                  "confirmed p50 ms", "fastest native", "confirmed vs fastest native"]
REDUCED_COLUMNS = ["model", "file", "method", "error / scale", "agreement", "calibration"]


def write_bench_reports(document: dict, out_dir: Path) -> list[Path]:
    """bench.json, bench.md, bench.html and deploy.json in `out_dir`, each written
    atomically."""
    return write_texts(out_dir, {"bench.json": json.dumps(document, indent=1) + "\n",
                                 "bench.md": markdown(document), "bench.html": page(document),
                                 "deploy.json": json.dumps(deploy_settings(document),
                                                           indent=1) + "\n"})


def rows(document: dict) -> list[list[str]]:
    """One row per model, batch and contender."""
    return [[m["name"], str(m["batch"]), c["name"], _settings(c["settings"]),
             f"{c['p50_ms']:.3f}", f"{c['p90_ms']:.3f}", f"{c['throughput']:.0f}",
             f"{c['vs_fastest_native']:.2f}x", _ratio(c.get("vs_float32_file")),
             f"{c['max_abs_vs_torch']:.1e}"]
            for m in document["models"] for c in m["contenders"]]


def deploy_rows(document: dict) -> list[list[str]]:
    """Per model and batch: the deploy choice and its confirmation pass."""
    found = []
    for name, d in document.get("deploy", {}).items():
        for c in d["confirmed"]:
            confirmed = [f"{c['p50_ms']:.3f}", f"{c['fastest_native']} "
                         f"{c['fastest_native_p50_ms']:.3f} ms",
                         _ratio(c["vs_fastest_native"])] if "p50_ms" in c else \
                ["", "", f"not timed: {c['skipped']}"]
            found.append([name, d["contender"], _settings(d["settings"]),
                          _ratio(d["exploration_geomean_vs_fastest_native"]),
                          str(c["batch"]), *confirmed])
    return found


def reduced_rows(document: dict) -> list[list[str]]:
    """How each reduced file was made, or why it was refused (and did not race)."""
    return [[r["model"], r["file"], r["method"] or f"refused: {r['refused']}",
             "" if r["relative_error"] is None else f"{r['relative_error']:.2g}",
             "" if r["agreement"] is None else f"{r['agreement']:.2%}",
             r["calibration"] or ""] for r in document.get("reduced", [])]


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
    reduced = reduced_rows(document)
    return "\n".join(["# onnxtwin bench", "", headline(document), "", "## Targets", "",
                      md_table(TARGET_COLUMNS, target_rows(document)), "", "## Deploy", "",
                      DEPLOY_NOTE, "", md_table(DEPLOY_COLUMNS, deploy_rows(document)), "",
                      *(["## Reduced files", "", md_table(REDUCED_COLUMNS, reduced), ""]
                        if reduced else []),
                      "## Paths (exploration)", "", md_table(COLUMNS, rows(document)), "",
                      *(["## Not timed", "", *skipped, ""] if skipped else [])])


DEPLOY_NOTE = ("Per model, the one CPU file and settings onnxtwin deploys (lowest geometric "
               "mean of the exploration's ratios over the batches), re-measured in a fresh "
               "session interleaved against the natives: the confirmed ratio is the headline "
               "target. `serve` and `deploy` take these settings from deploy.json "
               "(`--settings`).")


def page(document: dict) -> str:
    parts = ["<h1>onnxtwin bench</h1>", f"<p>{headline(document)}</p>",
             "<h2>Each path's p50 latency / the fastest native framework's</h2>",
             _ratio_plot(document), "<h2>Targets</h2>",
             html_table(TARGET_COLUMNS, target_rows(document)), "<h2>Deploy</h2>",
             f"<p>{DEPLOY_NOTE}</p>", html_table(DEPLOY_COLUMNS, deploy_rows(document)),
             *(["<h2>Reduced files</h2>", html_table(REDUCED_COLUMNS, reduced_rows(document))]
               if document.get("reduced") else []),
             "<h2>Paths (exploration)</h2>", html_table(COLUMNS, rows(document)),
             "<h2>Machine</h2>",
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
    confirmed = [(m.get("confirmed") or {}).get("vs_fastest_native") for m in document["models"]]
    ax.scatter([x + 0.4 - width / 2 for x, r in zip(range(len(groups)), confirmed, strict=True)
                if r], [r for r in confirmed if r], marker="D", color="black", zorder=3,
               label="deploy choice, confirmed")
    ax.axhline(TARGET_ONNX_VS_NATIVE, color="#b00", linestyle="--",
               label=f"target {TARGET_ONNX_VS_NATIVE}")
    ax.set_yscale("log")
    ax.set_ylabel("p50 / fastest native p50")
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=30)
    ax.legend(fontsize="x-small", ncols=3)
    return svg(fig)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "file")
