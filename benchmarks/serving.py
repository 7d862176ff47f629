"""Benchmark: `onnxtwin serve` under load, with and without dynamic batching.

    .venv/bin/python benchmarks/serving.py [--seconds 5] [--out benchmarks/results/serving.json]

A real `onnxtwin serve` process per setting; a closed-loop load generator on loopback
(C client threads, each with its own keep-alive connection, sending one-row requests in
the binary tensor format that tritonclient uses, encoded and decoded with tritonclient's
own functions) measures throughput and p50/p99 latency at 1, 8 and 64 clients. Every
response is checked bit for bit against the runtime's unbatched result. The load generator
shares the machine's cores with the server: on 2 cores the absolute numbers are lower
bounds, the batching/no-batching ratio is the result.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CLIENTS = (1, 8, 64)
MODES = {"batching": ["--max-batch", "64"],  # the default: no waiting for company
         "batching, 2 ms delay": ["--max-batch", "64", "--max-delay-ms", "2"],
         "no batching": ["--max-batch", "0"]}


def request_body(name: str, array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    import tritonclient.http as triton

    tensor = triton.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32
                               else "INT64")
    tensor.set_data_from_numpy(array, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=[triton.InferRequestedOutput("logits", binary_data=True)])
    return body, {"Inference-Header-Content-Length": str(json_size),
                  "Content-Type": "application/octet-stream"}


def load(port: int, model: str, requests: list[tuple[bytes, dict]], expected: list[bytes],
         clients: int, seconds: float) -> dict:
    """`clients` closed loops for `seconds`; latencies of the requests answered with 200
    (`wrong`: those whose logits differ), `errors`: those answered otherwise or not at all
    (the client then reconnects)."""
    import tritonclient.http as triton

    latencies: list[float] = []
    wrong, errors = [0], [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def connect() -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.connect()  # no Nagle: http.client sends headers and body separately
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def client(c: int) -> None:
        connection, mine, bad, failed, k = None, [], 0, 0, c
        while time.perf_counter() < stop:
            body, headers = requests[k % len(requests)]
            start = time.perf_counter()
            try:
                connection = connection or connect()
                connection.request("POST", f"/v2/models/{model}/infer", body, headers)
                response = connection.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException):
                failed += 1
                if connection:
                    connection.close()
                connection = None
                continue
            if response.status != 200:
                failed += 1
            else:
                mine.append(time.perf_counter() - start)
                length = response.getheader("Inference-Header-Content-Length")
                result = triton.InferenceServerClient.parse_response_body(
                    content, header_length=int(length) if length else None)
                bad += result.as_numpy("logits").tobytes() != expected[k % len(requests)]
            k += clients
        if connection:
            connection.close()
        with lock:
            latencies.extend(mine)
            wrong[0] += bad
            errors[0] += failed

    begin = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    ms = np.array(latencies) * 1000
    p50, p99 = (round(float(np.percentile(ms, q)), 3) for q in (50, 99)) if latencies \
        else (None, None)
    return {"clients": clients, "requests": len(latencies), "wrong": wrong[0],
            "errors": errors[0], "throughput_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": p50, "p99_ms": p99}


def serve(paths: list[Path], extra: list[str]) -> tuple[subprocess.Popen, int]:
    cli = [sys.executable, "-c", "from onnxtwin.conformance.cli import main; main()"]
    process = subprocess.Popen([*cli, "serve", *map(str, paths), "--port", "0", *extra],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    return process, int(line.split("http://")[1].split("/")[0].split(":")[1])


def workload(name: str, out: str) -> tuple[Path, list[tuple[bytes, dict]], list[bytes]]:
    """Built-in `name`'s torch file exported into `out`, 256 one-row request bodies (seq 50
    for text) and each one's expected logits: Session.run of that row alone."""
    from onnxtwin.builders import build_twins, sample_inputs
    from onnxtwin.export import export_model
    from onnxtwin.runtime import Session

    twins = build_twins(name)
    path = export_model(twins, "torch", out).path
    session = Session(path)
    rows = [sample_inputs(twins.spec, batch=1, seq=50, seed=i) for i in range(256)]
    (input_name,) = rows[0]
    return (path, [request_body(input_name, r[input_name]) for r in rows],
            [session.run(r)["logits"].tobytes() for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as out:
        for name in ("cnn", "transformer"):
            path, requests, expected = workload(name, out)
            model = path.name.removesuffix(".onnx")
            for mode, extra in MODES.items():
                process, port = serve([path], extra)
                try:
                    for clients in CLIENTS:
                        point = {"model": name, "mode": mode,
                                 **load(port, model, requests, expected, clients, args.seconds)}
                        results.append(point)
                        print(f"{name:12} {mode:20} {clients:3} clients: "
                              f"{point['throughput_per_s']:8.1f}/s  p50 {point['p50_ms']:7.2f}"
                              f" ms  p99 {point['p99_ms']:7.2f} ms  wrong {point['wrong']}"
                              f"  errors {point['errors']}",
                              flush=True)
                finally:
                    process.terminate()
                    process.wait(60)
    document = {"benchmark": "serving", "machine": {"platform": platform.platform(),
                                                    "cpus": os.cpu_count()},
                "seconds_per_point": args.seconds, "request_rows": 1, "seq": 50,
                "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
