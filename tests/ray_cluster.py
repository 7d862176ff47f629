"""A real Ray cluster on this machine for the tests: a head and more nodes, each a
separate `ray start --block` process, shut down whatever happens, with a check that no
Ray process is left behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Cluster:
    address: str  # host:port of the head's GCS, for `ray.init` and `ray start --address`
    dashboard: str  # http://host:port: Ray's state API and `serve deploy`
    temp_dir: Path
    metrics: tuple[str, ...]  # each node's Prometheus endpoint (http://host:port/metrics)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pids: set[int]) -> set[int]:
    """`pids` and every process below them, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ray_processes(temp_dir: Path) -> list[int]:
    """Live processes that belong to the cluster under `temp_dir`: any whose command line
    or environment names it (Ray's workers rename themselves, but keep the environment)."""
    mine = []
    needle = str(temp_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() or \
                    needle in (entry / "environ").read_bytes():
                mine.append(int(entry.name))
        except OSError:
            continue
    return [p for p in mine if _alive(p)]


@contextmanager
def local_cluster(worker_nodes: int = 1, cpus: float = 2, worker_resources: str = "") \
        -> Iterator[Cluster]:
    """A head and `worker_nodes` more nodes, each `ray start --block` in its own session;
    on exit every process they started is killed, and the exit fails if one survives."""
    temp_dir = Path(tempfile.mkdtemp(prefix="otray-", dir="/tmp"))  # short: socket paths
    port, dashboard = free_port(), free_port()
    metrics = [free_port() for _ in range(1 + worker_nodes)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ONNXTWIN_RAY_TEST": str(temp_dir)}
    common = ["--block", "--disable-usage-stats", f"--num-cpus={cpus}"]
    starts = [[RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--ray-client-server-port={free_port()}", *common]]
    starts += [[RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                *([f"--resources={worker_resources}"] if worker_resources else []), *common]
               for _ in range(worker_nodes)]
    for command, metrics_port in zip(starts, metrics, strict=True):
        command.append(f"--metrics-export-port={metrics_port}")
    nodes: list[subprocess.Popen] = []
    try:
        for i, command in enumerate(starts):
            with open(temp_dir / f"node{i}.log", "wb") as log:  # the node keeps its own fd
                nodes.append(subprocess.Popen(command, env=env, stdout=log, stderr=log,
                                              start_new_session=True))
            _wait_for_nodes(f"127.0.0.1:{port}", i + 1, nodes, temp_dir)
        yield Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", temp_dir,
                      tuple(f"http://127.0.0.1:{m}/metrics" for m in metrics))
    finally:
        _stop(nodes, temp_dir)


def _wait_for_nodes(address: str, count: int, nodes: list[subprocess.Popen],
                    temp_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for i, node in enumerate(nodes):
            if node.poll() is not None:
                raise RuntimeError(f"ray node {i} exited with {node.returncode}: "
                                   f"{(temp_dir / f'node{i}.log').read_text()[-2000:]}")
        try:
            status = subprocess.run([RAY, "status", f"--address={address}"], text=True,
                                    capture_output=True, timeout=START_TIMEOUT_S,
                                    env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        except subprocess.TimeoutExpired:
            continue
        if status.returncode == 0 and status.stdout.count(" node_") >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"ray cluster at {address}: expected {count} nodes within "
                       f"{START_TIMEOUT_S} s, got fewer")


def _stop(nodes: list[subprocess.Popen], temp_dir: Path) -> None:
    """Kill every process of the cluster: the nodes' process trees and anything else that
    names the cluster's folder; fail if one is still alive after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        pids = _descendants({n.pid for n in nodes}) | set(ray_processes(temp_dir))
        pids = {p for p in pids if _alive(p)}
        if not pids:
            break
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in nodes:
            with suppress(subprocess.TimeoutExpired):
                node.wait(timeout=0.1)
        if time.monotonic() > deadline:
            raise RuntimeError(f"ray cluster: expected no process left, got {sorted(pids)}")
        time.sleep(0.2)
    for node in nodes:
        node.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)
