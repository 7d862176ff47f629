"""`onnxtwin deploy --to ray`: a Ray Serve application folder for ONNX files.

    OUT/onnxtwin_app.py      the application module (`import_path: onnxtwin_app:build`)
    OUT/serve_config.yaml    Ray Serve's config: replicas or autoscaling bounds,
                             max_ongoing_requests and resources per model deployment;
                             batching, provider and request bounds as the app's args
    OUT/models/NAME/FILE     each file (and its external data, which may share names
                             with another model's), served as NAME

OUT is Ray's working directory (`serve run OUT/serve_config.yaml --working-dir OUT`): Ray
ships it to every node. The config is checked with Ray Serve's own schema, and the
application built from it, before the folder is renamed into place; an existing OUT is
refused.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxtwin.runtime.cluster import check_address, import_ray, joining
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import temporary_name
from onnxtwin.runtime.serve.server import ServeOptions, check_servable, model_names
from onnxtwin.runtime.serve.triton import external_data
from onnxtwin.runtime.session import Session

CONFIG = "serve_config.yaml"
MODULE = "onnxtwin_app"
PROVIDERS = {"cpu": 0, "cuda": 1}  # provider -> GPUs each replica asks Ray for
MODULE_TEXT = '''"""The onnxtwin application for Ray Serve: written by `onnxtwin deploy --to ray`.

Run it on a cluster from this folder's parent:
    serve run {folder}/serve_config.yaml --working-dir {folder} --address HEAD:6379
Every node needs onnxtwin[ray] installed; Ray ships this folder to each of them.
"""

from onnxtwin.runtime.serve.ray_app import build

__all__ = ["build"]
'''


@dataclass(frozen=True)
class RayOptions:
    """The Serve config's settings beyond the files; checked when made, before any write."""

    provider: str = "cpu"
    replicas: int = 1  # per model; the lower bound when autoscaling
    max_replicas: int | None = None  # autoscale between `replicas` and this; None: fixed
    replicas_per_node: int | None = None  # Ray's max_replicas_per_node; None: no bound
    replica_cpus: float = 1.0  # CPUs Ray reserves for each model replica
    max_ongoing: int = 64  # requests a replica holds at once (max_ongoing_requests)
    max_batch: int = 64  # rows per onnxruntime run; 0: no batching
    max_delay_ms: float = 0.0  # how long a batch waits for company (batch_wait_timeout_s)
    host: str = "127.0.0.1"  # where Ray's HTTP proxies listen
    port: int = 8000
    serve: ServeOptions = field(default_factory=ServeOptions)  # the request bounds

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise OnnxtwinError(f"provider: expected one of {list(PROVIDERS)} for Ray, got "
                                f"{self.provider!r}")
        low_replicas = self.replicas
        for name, value, low, high in (
                ("replicas", self.replicas, 1, 4096),
                ("max_replicas", self.max_replicas, low_replicas, 4096),
                ("replicas_per_node", self.replicas_per_node, 1, 4096),
                ("replica_cpus", self.replica_cpus, 0, 1024),
                ("max_ongoing", self.max_ongoing, 1, 2**20),
                ("max_batch", self.max_batch, 0, 65536),
                ("max_delay_ms", self.max_delay_ms, 0, 60_000),
                ("port", self.port, 1, 65535)):
            if value is not None and not (low <= value <= high and math.isfinite(value)):
                raise OnnxtwinError(f"{name}: expected a number from {low} to {high}, got "
                                    f"{value}")

    def deployment(self, name: str) -> dict[str, Any]:
        """A model's entry in the config's `deployments`."""
        scale = {"num_replicas": self.replicas} if self.max_replicas is None else {
            "autoscaling_config": {"min_replicas": self.replicas,
                                   "max_replicas": self.max_replicas}}
        spread = {} if self.replicas_per_node is None else {
            "max_replicas_per_node": self.replicas_per_node}
        return {"name": name, **scale, **spread, "max_ongoing_requests": self.max_ongoing,
                "max_queued_requests": self.serve.max_queue,
                "ray_actor_options": {"num_cpus": self.replica_cpus,
                                      "num_gpus": PROVIDERS[self.provider]}}


def serve_config(files: dict[str, str], options: RayOptions,
                 settings: dict[str, dict] | None = None) -> dict[str, Any]:
    """Ray Serve's config (`serve run`/`serve deploy` format) for model name -> file
    (relative to the working directory); `settings`: runtime.Session keywords by name."""
    from onnxtwin.runtime.serve.ray_app import APP, INGRESS

    models = {name: {"file": file, "provider": options.provider,
                     "max_batch": options.max_batch, "max_delay_ms": options.max_delay_ms,
                     "settings": (settings or {}).get(name, {})}
              for name, file in files.items()}
    return {"proxy_location": "EveryNode",
            "http_options": {"host": options.host, "port": options.port},
            "applications": [{
                "name": APP, "route_prefix": "/", "import_path": f"{MODULE}:build",
                "args": {"models": models, "options": asdict(options.serve)},
                "deployments": [
                    {"name": INGRESS, "num_replicas": 1, "max_ongoing_requests": 1024,
                     "ray_actor_options": {"num_cpus": 0.5}},
                    *(options.deployment(name) for name in files)]}]}


def check_config(config: dict[str, Any]) -> None:
    """Refuse, in one line, a config Ray Serve's own schema refuses or whose application
    cannot be built from its args."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from onnxtwin.runtime.serve.ray_app import build

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        raise OnnxtwinError(f"{CONFIG}: expected a config Ray Serve accepts, got "
                            f"{' '.join(str(e).split())}") from None
    for application in config["applications"]:
        build(application["args"])


def write_app(models: list[Path], out: Path, options: RayOptions,
              settings: dict[Path, dict] | None = None) -> dict[str, Any]:
    """Write OUT (see the module's docstring) and return its Serve config. Every file is
    opened with onnxruntime first (an ONNX file the protocol can serve), and OUT must not
    exist: nothing is written otherwise. `settings`: runtime.Session keywords by file."""
    import yaml

    import_ray("--to ray")  # one line if missing: the config is checked with Ray's schema
    if out.exists() or out.is_symlink():
        raise OnnxtwinError(f"--out {out}: expected a folder that does not exist yet, got "
                            f"an existing one (remove it or choose another)")
    named = model_names(models)
    for name, path in named.items():
        check_servable(name, Session(path, "cpu"))
    data = {name: external_data(path) for name, path in named.items()}
    config = serve_config({name: f"models/{name}/{path.name}" for name, path in named.items()},
                          options, {name: (settings or {}).get(path, {})
                                    for name, path in named.items()})
    check_config(config)
    if not out.parent.is_dir():
        raise OnnxtwinError(f"--out {out}: expected a folder inside an existing one, got "
                            f"no folder {out.parent}")
    staging = out.parent / temporary_name(out.name)
    try:
        for name, path in named.items():
            folder = staging / "models" / name
            folder.mkdir(parents=True)
            shutil.copyfile(path, folder / path.name)
            for location in data[name]:
                (folder / location).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path.parent / location, folder / location)
        (staging / f"{MODULE}.py").write_text(MODULE_TEXT.format(folder=out.name))
        (staging / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        check_config(yaml.safe_load((staging / CONFIG).read_text()))
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return config


def serve_on_cluster(models: list[Path], address: str, options: RayOptions,
                     settings: dict[Path, dict] | None = None, announce=print,
                     timeout_s: float = 600) -> None:
    """Serve `models` on the Ray cluster at `address` until SIGINT or SIGTERM, then delete
    the application: `write_app` into a temporary folder, then Ray's own `serve run` of
    its config with the folder as working directory (Ray ships it to the nodes)."""
    import tempfile

    ray = import_ray()
    check_address(address)
    from ray import serve
    from ray.serve.scripts import run

    from onnxtwin.runtime.serve.ray_app import APP

    with tempfile.TemporaryDirectory(prefix="onnxtwin-ray-") as folder:
        out = Path(folder) / "app"
        write_app(models, out, options, settings)
        with joining(address):  # `serve run` calls ray.init
            run.main([str(out / CONFIG), "--working-dir", str(out), "--address", address,
                      "--non-blocking"], standalone_mode=False)
        try:
            with _stopped_by_signals():
                _wait_running(address, timeout_s, announce)
                announce(f"serving {', '.join(model_names(models))} at "
                         f"http://{options.host}:{options.port}/v2 on the Ray cluster "
                         f"{address} ({options.replicas} replica(s) each; stop with Ctrl-C)")
                while True:  # short: a signal that lands on one of Ray's threads runs
                    time.sleep(0.5)  # its Python handler only once this thread wakes
        finally:
            serve.delete(APP)
            ray.shutdown()


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """Leave the block at SIGINT or SIGTERM; a second one while the application is being
    deleted ends the process at once. Set after `serve run` connected: ray.init installs
    its own SIGTERM handler (and Ray's C++ core its failure handler), which would end the
    process before the application is deleted."""
    stops = (signal.SIGINT, signal.SIGTERM)

    def stop(signum, frame) -> None:
        raise _Stop

    for s in stops:
        signal.signal(s, stop)
    try:
        with suppress(_Stop):
            yield
    finally:
        for s in stops:
            signal.signal(s, signal.SIG_DFL)


def _wait_running(address: str, timeout_s: float, announce) -> None:
    """Return once the application runs; say what it waits for every 30 s (a replica that
    cannot be scheduled waits for resources for ever: Ray's message names them); refuse
    a failed deployment, or one not running after `timeout_s`."""
    from ray import serve

    from onnxtwin.runtime.serve.ray_app import APP

    start = said = time.monotonic()
    while (state := serve.status().applications[APP]).status != "RUNNING":
        why = " ".join(" ".join([state.message, *(d.message for d in state.deployments.values()
                                                  if d.message)]).split())
        if state.status == "DEPLOY_FAILED" or time.monotonic() > start + timeout_s:
            raise OnnxtwinError(f"--ray {address}: expected the application running within "
                                f"{timeout_s:.0f} s, got {state.status}: {why[:400]}")
        if time.monotonic() > said + 30:
            announce(f"waiting for the application ({state.status}): {why[:400]}")
            said = time.monotonic()
        time.sleep(0.5)
