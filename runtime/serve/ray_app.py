"""The Open Inference Protocol v2 on a Ray Serve cluster (`onnxtwin deploy --to ray`).

One ingress deployment speaks the protocol over HTTP: the routes, codec, request bounds
and error mapping of `onnxtwin serve` (server.protocol_app). It hands each request's
arrays to its model's deployment, which holds one onnxruntime session per replica and
groups concurrent requests into one run with Ray Serve's own `@serve.batch` (rows
counted, not requests). Replicas, autoscaling, `max_ongoing_requests` and resources are
the Serve config's (ray_config writes it); batching, provider and bounds are the
application's arguments. Like the rest of onnxtwin.runtime, this imports neither torch nor
TensorFlow: only onnxruntime, numpy, Starlette and Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)

from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.serve.batching import (
    Unavailable,
    as_unavailable,
    batch_dim,
    batch_invariant,
    row_count,
    run_batch,
)
from onnxtwin.runtime.serve.server import ServeOptions, check_servable, protocol_app
from onnxtwin.runtime.session import Session, TensorInfo

APP = INGRESS = "onnxtwin"
"""The application's and its ingress deployment's name (a model deployment is named after
its model)."""


@serve.deployment
class OnnxModel:
    """One ONNX file: a session per replica; requests' rows batched up to `max_batch`, one
    run at a time (as `onnxtwin serve` runs them: `max_run_bytes` bounds the replica's
    memory, not each of up to `max_ongoing_requests` concurrent runs)."""

    def __init__(self, name: str, file: str, provider: str, max_batch: int,
                 max_delay_ms: float, settings: dict[str, Any], options: dict[str, Any]) -> None:
        bounds = ServeOptions(**options).session_bounds
        self.session = Session(file, provider, strict=True, **settings, **bounds)
        check_servable(name, self.session)
        unbatched = not batch_dim(self.session) or batch_invariant(self.session)
        self.max_batch = 0 if unbatched else max_batch
        self._one_run = asyncio.Lock()
        if self.max_batch:
            self._batched.set_max_batch_size(self.max_batch)
            self._batched.set_batch_wait_timeout_s(max_delay_ms / 1000)

    def signature(self) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        return self.session.inputs, self.session.outputs

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | Exception:
        """One request's outputs, or the error it gets (returned, not raised: Ray would log
        a bad request as the replica's failure, traceback and all). Its inputs are
        validated before it joins a batch, so that a bad request fails alone."""
        try:
            arrays = self.session.validate(inputs)
        except OnnxtwinError as e:
            return e
        if not self.max_batch or row_count(arrays) > self.max_batch:
            result = (await self._run([arrays]))[0]
        else:
            result = await self._batched(arrays)
        return as_unavailable(result) if isinstance(result, Exception) else result

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0,
                 batch_size_fn=lambda requests: sum(map(row_count, requests)))
    async def _batched(self, requests: list[dict[str, np.ndarray]]) -> list:
        return await self._run(requests, self.max_batch)

    async def _run(self, requests: list[dict[str, np.ndarray]],
                   max_rows: int | None = None) -> list:
        async with self._one_run:
            return await asyncio.to_thread(run_batch, self.session, requests, max_rows)


class _RemoteModel:
    """server.Model over a model deployment's handle: Ray's failures become the
    protocol's (the request's own errors as they were raised, a lost or busy replica 503)."""

    def __init__(self, name: str, handle: Any, signature: tuple) -> None:
        self.name, self.handle = name, handle
        self.inputs, self.outputs = signature

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = await self.handle.infer.remote(inputs)
        except RayTaskError as e:
            cause = e.cause
            raise cause if isinstance(cause, OnnxtwinError) else \
                Unavailable(f"model {self.name!r}: expected a result, got "
                            f"{first_line(cause or e)}") from None
        except (RayError, BackPressureError, DeploymentUnavailableError,
                ReplicaUnavailableError) as e:  # a lost actor or object, a cancel, a full queue
            raise Unavailable(f"model {self.name!r}: expected a replica to answer, got "
                              f"{type(e).__name__} (retry)") from None
        if isinstance(result, Exception):
            raise result
        return result


@serve.deployment
@serve.ingress()
class Ingress:
    """The protocol's HTTP routes over the model deployments, by model name."""

    def __init__(self, models: dict[str, Any], options: dict[str, Any]) -> None:
        self.handles, self.options = models, ServeOptions(**options)

    def __serve_build_asgi_app__(self) -> Any:
        @asynccontextmanager
        async def remote() -> AsyncIterator[dict[str, _RemoteModel]]:
            signatures = await asyncio.gather(*(h.signature.remote()
                                                for h in self.handles.values()))
            yield {name: _RemoteModel(name, handle, signature) for (name, handle), signature
                   in zip(self.handles.items(), signatures, strict=True)}

        return protocol_app(remote, self.options)


def build(args: dict[str, Any]) -> Any:
    """The application from the Serve config's `args` (ray_config.application_args):
    {"models": {name: {"file", "provider", "max_batch", "max_delay_ms", "settings"}},
    "options": ServeOptions' fields}; "settings" are runtime.Session's keywords (threads,
    optimization, spinning) chosen by `onnxtwin bench`."""
    options = args["options"]
    models = {name: OnnxModel.options(name=name).bind(
        name, m["file"], m["provider"], m["max_batch"], m["max_delay_ms"], m["settings"],
        options) for name, m in args["models"].items()}
    return Ingress.options(name=INGRESS).bind(models, options)
