"""Benchmark: `onnxtwin serve` against the same files on Ray Serve, 1 and 2 replicas a model.

    .venv/bin/python benchmarks/ray_serving.py [--seconds 4] [--rounds 3] [--out JSON]

(JSON: benchmarks/results/ray_serving.json by default; a Markdown table goes beside it.)

Three servers of the cnn and transformer torch exports, both files in each: a real
`onnxtwin serve` process (default batching), and the application `onnxtwin deploy --to ray`
writes (ray_config.write_app), run with Ray's `serve run` on a local two-node cluster (a head
and a worker node, tests/ray_cluster.py) with 1 replica per model, then 2 (one per node).
The load is serving.py's generator: one-row binary requests, every response checked bit for
bit against the runtime's result for that row alone. A cluster has one Serve HTTP port, so
the two Ray settings are deployed in turn, alternating over the rounds (1 2 | 2 1 | 1 2 ..);
in each deployment, for each client count and model, `onnxtwin serve` runs just before Ray,
and the ratios are medians over rounds of Ray / that point. `onnxtwin serve` runs while the
idle cluster is up (its CPU use is reported). On a 2-core machine the nodes, replicas,
`onnxtwin serve` and the load generator share the same cores: this measures Ray Serve's
overhead, not what a second node adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from itertools import product
from pathlib import Path

import numpy as np
from serving import CLIENTS, load, serve, workload

from onnxtwin.runtime.files import atomic_path
from onnxtwin.runtime.serve.ray_app import APP, INGRESS

ROOT = Path(__file__).resolve().parents[1]
SERVE = str(Path(sys.executable).with_name("serve"))
SETTINGS = {"ray, 1 replica": 1, "ray, 2 replicas": 2}  # replicas per model
ONNXTWIN = "onnxtwin serve"


def deploy(folder: Path, log: Path, address: str, env: dict[str, str]) -> subprocess.Popen:
    """Ray's own `serve run` of the folder write_app wrote; it blocks until SIGINT."""
    with open(log, "wb") as file:  # the child keeps its own copy
        return subprocess.Popen([SERVE, "run", str(folder / "serve_config.yaml"),
                                 "--working-dir", str(folder), "--address", address],
                                stdout=file, stderr=file, env=env, start_new_session=True)


def stop(process: subprocess.Popen | None) -> None:
    """SIGINT: `serve run` then shuts Serve down (its controller, proxies and replicas);
    SIGKILL if it has not exited within 60 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def applications(dashboard: str) -> dict:
    """Serve's applications on the cluster, from the dashboard's REST API."""
    with urllib.request.urlopen(f"{dashboard}/api/serve/applications/", timeout=10) as r:
        return json.load(r).get("applications") or {}


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10) as r:
            return r.status == 200
    except OSError:  # refused, or an HTTP error status
        return False


def wait_running(process: subprocess.Popen, log: Path, dashboard: str, port: int,
                 replicas: int, timeout_s: float = 240) -> dict[str, list[str]]:
    """Deployment -> node ids of its replicas, once every model has `replicas` running
    replicas on as many nodes and the protocol's readiness probe answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited with {process.returncode}: "
                               f"{log.read_text()[-3000:]}")
        app = applications(dashboard).get(APP, {})
        nodes = {name: sorted(r["node_id"] for r in d["replicas"] if r["state"] == "RUNNING")
                 for name, d in app.get("deployments", {}).items()}
        models = [n for name, n in nodes.items() if name != INGRESS]
        if app.get("status") == "RUNNING" and models and \
                all(len(set(n)) == len(n) == replicas for n in models) and ready(port):
            return nodes
        time.sleep(1)
    raise RuntimeError(f"serve run: expected {replicas} replica(s) per model on as many nodes "
                       f"within {timeout_s:.0f} s, got {applications(dashboard)}")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(round_: int, server: str, port: int, name: str, model: tuple, clients: int,
            seconds: float) -> dict:
    point = {"round": round_, "server": server, "model": name,
             **load(port, *model, clients, seconds)}
    print(f"round {round_} {name:12} {server:16} {clients:3} clients: "
          f"{point['throughput_per_s']:8.1f}/s  p50 {point['p50_ms']} ms  p99 "
          f"{point['p99_ms']} ms  wrong {point['wrong']}  errors {point['errors']}", flush=True)
    return point


def median(points: list[dict], key: str) -> float | None:
    values = [p[key] for p in points if p[key] is not None]
    return round(float(np.median(values)), 3) if values else None


def summarize(points: list[dict], pairs: list[tuple[dict, dict]]) -> tuple[list, list]:
    """Per server, model and client count: medians over rounds, requests, wrong and errors
    summed; per Ray setting: medians over rounds of Ray / the onnxtwin point before it."""
    summary, ratios = [], []
    for clients in CLIENTS:
        for model in dict.fromkeys(p["model"] for p in points):
            for server in (ONNXTWIN, *SETTINGS):
                mine = [p for p in points if (p["server"], p["model"], p["clients"]) ==
                        (server, model, clients)]
                summary.append({"server": server, "model": model, "clients": clients,
                                "points": len(mine),
                                **{k: sum(p[k] for p in mine) for k in
                                   ("requests", "wrong", "errors")},
                                **{k: median(mine, k) for k in
                                   ("throughput_per_s", "p50_ms", "p99_ms")}})
                if server == ONNXTWIN:
                    continue
                mine = [(a, b) for a, b in pairs if (b["server"], b["model"], b["clients"]) ==
                        (server, model, clients)]
                ratios.append({"server": server, "model": model, "clients": clients, **{
                    f"{k}_ratio": round(float(np.median([b[k] / a[k] for a, b in mine])), 3)
                    if all(a[k] and b[k] for a, b in mine) else None
                    for k in ("throughput_per_s", "p50_ms", "p99_ms")}})
    return summary, ratios


def markdown(document: dict) -> str:
    lines = ["# Ray Serve against `onnxtwin serve`", "",
             f"{document['note']}", "",
             f"{document['seconds_per_point']} s per point, {document['rounds']} rounds, "
             f"medians over rounds; ratios: {document['ratios_are']}. The idle cluster used "
             f"{document['ray_cluster_cpu_cores_while_onnxtwin_serve_ran']} cores while "
             f"`onnxtwin serve` ran; the run took {document['wall_s']} s.", "",
             "| model | clients | server | req/s | p50 ms | p99 ms | wrong | errors |"
             " Ray/onnxtwin req/s | p50 | p99 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = {(r["server"], r["model"], r["clients"]): r for r in document["ratios"]}
    for s in document["summary"]:
        r = ratios.get((s["server"], s["model"], s["clients"]), {})
        cells = [s["model"], s["clients"], s["server"], s["throughput_per_s"], s["p50_ms"],
                 s["p99_ms"], s["wrong"], s["errors"],
                 *(r.get(f"{k}_ratio", "") for k in ("throughput_per_s", "p50_ms", "p99_ms"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def rounds(cluster, folders: dict[str, Path], port: int, server_port: int, models: dict,
           args: argparse.Namespace, out: Path) -> tuple[list, list, list, list]:
    """The measured points and (onnxtwin, Ray) pairs, each deployment's timings and
    placement, and the cluster's CPU use while `onnxtwin serve` ran (cores, per point)."""
    from tests.ray_cluster import ray_processes

    points, pairs, deploys, idle = [], [], [], []
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "ONNXTWIN_RAY_TEST": str(cluster.temp_dir)}  # so the cluster's exit kills it too
    running, deployed = None, None
    try:
        for round_ in range(args.rounds):
            for setting in list(SETTINGS)[::-1 if round_ % 2 else 1]:
                if setting != deployed:
                    start = time.perf_counter()
                    stop(running)
                    stopped = time.perf_counter()
                    print(f"deploying {setting}", flush=True)
                    log = out / f"{folders[setting].name}.log"
                    running, deployed = deploy(folders[setting], log, cluster.address,
                                               env), setting
                    nodes = wait_running(running, log, cluster.dashboard, port,
                                         SETTINGS[setting])
                    deploys.append({"round": round_, "setting": setting,
                                    "stop_previous_s": round(stopped - start, 1),
                                    "running_s": round(time.perf_counter() - stopped, 1),
                                    "node_ids": nodes})
                    for model in models.values():  # warm-up, not measured
                        load(port, *model, 8, 1)
                for clients, (name, model) in product(CLIENTS, models.items()):
                    pids = ray_processes(cluster.temp_dir)
                    cpu, start = cpu_seconds(pids), time.perf_counter()
                    ours = measure(round_, ONNXTWIN, server_port, name, model, clients,
                                   args.seconds)
                    idle.append((cpu_seconds(pids) - cpu) / (time.perf_counter() - start))
                    ray = measure(round_, setting, port, name, model, clients, args.seconds)
                    points += [ours, ray]
                    pairs.append((ours, ray))
    finally:
        if running:  # no graceful shutdown: the cluster's exit, next, ends the rest
            running.kill()
            running.wait()
    return points, pairs, deploys, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/ray_serving.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally blocks run
    sys.path.insert(0, str(ROOT))  # tests.ray_cluster
    from onnxtwin.runtime.serve.ray_config import RayOptions, write_app
    from tests.ray_cluster import free_port, local_cluster

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        models, paths = {}, []
        for name in ("cnn", "transformer"):
            path, requests, expected = workload(name, out)
            models[name] = (path.name.removesuffix(".onnx"), requests, expected)
            paths.append(path)
        port = free_port()
        folders = {}
        for setting, replicas in SETTINGS.items():
            folders[setting] = Path(out) / f"app{replicas}"
            write_app(paths, folders[setting], RayOptions(
                replicas=replicas, replicas_per_node=1, replica_cpus=0.5, port=port))
        server, server_port = serve(paths, [])
        try:
            for model in models.values():  # warm-up, not measured
                load(server_port, *model, 8, 1)
            with local_cluster(worker_nodes=1, cpus=2) as cluster:
                points, pairs, deploys, idle = rounds(cluster, folders, port, server_port,
                                                      models, args, Path(out))
        finally:
            server.terminate()
            server.wait(60)
    summary, ratios = summarize(points, pairs)
    cpus = os.cpu_count()
    document = {
        "benchmark": "ray_serving",
        "machine": {"platform": platform.platform(), "cpus": cpus},
        "note": f"{cpus} cores for everything: both Ray nodes (4 logical CPUs declared), "
                "their replicas, `onnxtwin serve` and the load generator share them, so 2 "
                "replicas on 2 nodes cannot be faster here; the ratios show Ray Serve's "
                "per-request overhead (HTTP proxy, ingress replica, a handle call to the "
                "model replica) against `onnxtwin serve` in one process.",
        "seconds_per_point": args.seconds, "rounds": args.rounds, "request_rows": 1,
        "seq": 50,
        "servers": {
            ONNXTWIN: "one `onnxtwin serve` process with both files, default batching "
                      "(--max-batch 64, no delay), up for the whole run",
            **{s: f"`serve run` of ray_config.write_app(both files, RayOptions(replicas="
                  f"{n}, replicas_per_node=1, replica_cpus=0.5)) on a head and a worker "
                  "node (2 logical CPUs each); the settings are redeployed in turn (one "
                  "Serve HTTP port per cluster)" for s, n in SETTINGS.items()}},
        "deploys": deploys,
        "ray_cluster_cpu_cores_while_onnxtwin_serve_ran": round(float(np.median(idle)), 3),
        "ratios_are": "median over rounds of Ray / the onnxtwin serve point measured just "
                      "before it (same model and clients)",
        "wall_s": round(time.perf_counter() - begin, 1),
        "summary": summary, "ratios": ratios, "points": points}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((args.out, json.dumps(document, indent=1) + "\n"),
                       (args.out.with_suffix(".md"), markdown(document))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(markdown(document))


if __name__ == "__main__":
    main()
