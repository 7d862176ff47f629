"""`onnxtwin check --ray ADDRESS`: each model's matrix as a Ray task on a cluster.

Ray is imported inside the functions, so onnxtwin runs without it. One streaming task
per model runs orchestrator.check_model on whichever node Ray picks (one with a GPU when
a provider other than cpu runs), and yields its node, its progress steps and last its
result. The node exports into a folder of its own and sends the files back with the
result: they are written into OUT here, so OUT and report.json are what a local run
writes, wherever the tasks ran. What a node needs: onnxtwin and its dependencies as
here, and the user's files at the same absolute paths (a shared file system): the
--spec file and the modules, weights and ONNX files it names, --trained, --calibration.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue

from onnxtwin.builders.entries import EntrySpec
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.conformance.matrix import ModelResult
from onnxtwin.conformance.orchestrator import CheckOptions, OnModel, check_model, select_providers
from onnxtwin.runtime.cluster import check_address, import_ray, joining
from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.files import atomic_path, inside
from onnxtwin.runtime.providers import provider_name

THREADS = "OMP_NUM_THREADS"
"""Passed to every task as it is here, empty where unset (each library keeps its default,
as in a local run; libgomp logs the empty value as invalid). Ray would set it to the
task's CPUs, 1, and torch on one thread rounds differently: its float32 results would
differ from a local run's in the last bits. Set it here to bound each task's threads."""


@contextmanager
def connected(address: str, spec_file: Path | None) -> Iterator[RayRunner]:
    """Join the Ray cluster at `address` (HOST:PORT of its head, or auto) as a driver, and
    leave it on exit whatever happens; its tasks end with the connection."""
    ray = import_ray()
    check_address(address)
    with joining(address):
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        yield RayRunner(address, spec_file)
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class _FromFile:
    """A --spec file entry, read again on the node: its factories import only there."""

    file: Path
    name: str
    spec_hash: str


@dataclass
class RayRunner:
    """The Runner (orchestrator.Runner) of `check` on a Ray cluster joined by `connected`."""

    address: str
    spec_file: Path | None
    nodes: list[str] = field(default_factory=list)
    """After `run`, per spec: the node its task ran on (node id, IP), for the CLI to show."""

    def providers(self, requested: tuple[str, ...] | None) -> list[str]:
        """The requested providers (each checked on the node that runs a model), or cpu and,
        if the cluster has a GPU, cuda."""
        gpus = import_ray().cluster_resources().get("GPU", 0)
        if not requested:
            return ["cpu", "cuda"] if gpus else ["cpu"]
        aliases = list(dict.fromkeys(a.strip().lower() for a in requested))
        for alias in aliases:
            provider_name(alias)  # one line if unknown
        if not gpus and (on_gpu := [a for a in aliases if a != "cpu"]):
            raise OnnxtwinError(f"--provider {','.join(on_gpu)}: expected a Ray cluster with "
                                f"a GPU, got none at {self.address}")
        return aliases

    def run(self, specs: list[ModelSpec], out_dir: Path, ran_on: list[str],
            options: CheckOptions, on_model: OnModel) -> list[ModelResult]:
        """Submit one task per spec, show each one's progress as it comes, write its files
        into `out_dir` and return the results in spec order."""
        ray = import_ray()
        task = ray.remote(num_returns="streaming")(_model_task).options(
            num_gpus=1 if set(ran_on) - {"cpu"} else 0,
            runtime_env={"env_vars": {THREADS: os.environ.get(THREADS, "")}})
        shipped = dataclasses.replace(options, trained=_absolute(options.trained),
                                      calibration=_absolute(options.calibration))
        streams = [task.remote(self._shipped(s), ran_on, shipped) for s in specs]
        self.nodes = ["?"] * len(specs)
        steps: list = [None] * len(specs)
        results: list = [None] * len(specs)
        waiting = {id(stream): i for i, stream in enumerate(streams)}
        while waiting:
            ready, _ = ray.wait([streams[i] for i in waiting.values()], num_returns=1)
            i = waiting[id(ready[0])]
            try:
                kind, value = ray.get(next(streams[i]))
            except StopIteration:
                del waiting[id(ready[0])]
                continue
            except ray.exceptions.RayError as e:
                raise _task_error(specs[i], self.nodes[i], e) from None
            if kind == "node":
                self.nodes[i] = value
            elif kind == "steps":
                steps[i] = on_model(specs[i], value)
            elif kind == "step":
                steps[i](value)
            else:
                results[i] = _received(specs[i], *value, out_dir)
        return results

    def _shipped(self, spec: ModelSpec) -> ModelSpec | _FromFile:
        """A family variant as itself; a user's entry as its place in the spec file."""
        if not isinstance(spec, EntrySpec):
            return spec
        if self.spec_file is None:
            raise OnnxtwinError(f"--ray: expected model {spec.name!r} from a --spec file, got "
                                f"an entry made in Python (its factories cannot travel)")
        return _FromFile(self.spec_file.resolve(), spec.name, spec.spec_hash)


def _absolute(path: Path | None) -> Path | None:
    """`path` resolved here: a node's working folder is not this one."""
    return None if path is None else path.resolve()


def _task_error(spec: ModelSpec, node: str, error) -> Exception:
    """A task's failure: a usage error in one line with its node; a bug as it was raised."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause
        return OnnxtwinError(f"{cause} (Ray node {node})") \
            if isinstance(cause, OnnxtwinError) else error
    return OnnxtwinError(f"model {spec.name!r}: expected its Ray task to finish, got "
                         f"{type(error).__name__}: {first_line(error)}")


def _received(spec: ModelSpec, fields: dict, files: dict[str, bytes],
              out_dir: Path) -> ModelResult:
    """A task's result, its files written into `out_dir` and its paths moved there."""
    for name, data in files.items():
        with atomic_path(inside(out_dir, name)) as tmp:
            tmp.write_bytes(data)
    exports = tuple(dataclasses.replace(e, path=inside(out_dir, e.path.name))
                    for e in fields["exports"])
    reduced = fields["reduced"]
    if reduced is not None:
        reduced = dataclasses.replace(reduced, files=tuple(
            dataclasses.replace(f, source=inside(out_dir, f.source.name),
                                path=inside(out_dir, f.path.name)) for f in reduced.files))
    return ModelResult(spec, **{**fields, "exports": exports, "reduced": reduced})


def _model_task(shipped: ModelSpec | _FromFile, ran_on: list[str], options: CheckOptions):
    """On a node: yield ("node", where), then ("steps", count) and each ("step", text) as
    check_model reports them, then ("result", (the result's fields but its spec, the files
    it wrote)). The spec stays with the driver: a user's entry holds its factories."""
    import ray

    context = ray.get_runtime_context()
    yield "node", f"{context.get_node_id()[:8]} ({ray.util.get_node_ip_address()})"
    spec = _unshipped(shipped)
    select_providers(ran_on)  # each one usable on this node, or one line
    progress: SimpleQueue = SimpleQueue()

    def on_model(_, count):
        progress.put(("steps", count))
        return lambda text: progress.put(("step", text))

    with tempfile.TemporaryDirectory(prefix="onnxtwin-ray-") as folder, \
            ThreadPoolExecutor(1) as pool:
        work = pool.submit(check_model, spec, folder, ran_on, options, on_model)
        work.add_done_callback(lambda _: progress.put(None))
        while (item := progress.get()) is not None:
            yield item
        result = work.result()  # raises what check_model raised
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    yield "result", ({f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                      if f.name != "spec"}, files)


def _unshipped(shipped: ModelSpec | _FromFile) -> ModelSpec:
    """The spec on this node: a user's entry read from its spec file, as the driver read it."""
    if not isinstance(shipped, _FromFile):
        return shipped
    from onnxtwin.builders.registry import read_toml, toml_specs

    found = {s.name: s for s in toml_specs(read_toml(shipped.file), shipped.file)}
    spec = found.get(shipped.name)
    if spec is None or spec.spec_hash != shipped.spec_hash:
        raise OnnxtwinError(f"spec file {shipped.file}: expected model {shipped.name!r} as "
                            f"the driver read it, got {'none' if spec is None else 'another'} "
                            f"on this node")
    return spec
