"""`onnxtwin serve`: the Open Inference Protocol v2 over HTTP (Starlette on uvicorn).

Routes (Triton's and KServe's v2 REST API; `/versions/1` may follow a model name):
    GET  /v2                       server metadata
    GET  /v2/health/live           200 while the process serves
    GET  /v2/health/ready          200 if every model runs a probe input, else 503
    GET  /v2/models/NAME           model metadata from the ONNX signature
    GET  /v2/models/NAME/ready     200 if the model runs a probe input, else 503
    POST /v2/models/NAME/infer     inference, JSON or binary tensor data
Request errors are the protocol's {"error": "..."} with HTTP 400 (404: no such model or
route, 413: request too large, 503: queue full or shutting down).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.serve.batching import Overloaded, Scheduler
from onnxtwin.runtime.serve.oip import (
    HEADER_LENGTH,
    error_body,
    infer_response,
    model_metadata,
    parse_infer_request,
)
from onnxtwin.runtime.session import Session, TensorInfo

MODEL_VERSION = "1"


@dataclass(frozen=True)
class ServeOptions:
    """Batching and the bounds that keep an overloaded server's memory flat."""

    max_batch: int = 64  # rows per onnxruntime run; 0 turns dynamic batching off
    max_delay_ms: float = 0.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting per model; one more gets 503
    max_request_bytes: int = 64 * 2**20  # a larger body gets 413 before it is read
    probe_timeout_s: float = 10.0  # a readiness probe slower than this fails

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_delay_ms", "max_queue", "max_request_bytes"):
            low = 0 if name in ("max_batch", "max_delay_ms") else 1
            if getattr(self, name) < low:
                raise OnnxtwinError(f"{name}: expected a number >= {low}, got "
                                    f"{getattr(self, name)}")


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(sessions: Mapping[str, Session], options: ServeOptions = ServeOptions(),
               on_ready: Callable[[], None] = lambda: None) -> Any:
    """The ASGI application serving `sessions` by model name; `on_ready` runs at startup."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    schedulers: dict[str, Scheduler] = {}

    def error(status: int, message: str) -> Response:
        return Response(error_body(message), status, media_type="application/json")

    def scheduler(request: Request) -> Scheduler:
        name, wanted = request.path_params["model"], request.path_params.get("version")
        if name not in schedulers:
            raise _HttpError(404, f"model: expected one of {sorted(schedulers)}, got {name!r}")
        if wanted not in (None, MODEL_VERSION):
            raise _HttpError(404, f"model {name!r}: expected version {MODEL_VERSION}, got "
                                  f"{wanted!r}")
        return schedulers[name]

    async def guarded(handler, request: Request) -> Response:
        try:
            return await handler(request)
        except _HttpError as e:
            return error(e.status, str(e))
        except Overloaded as e:
            return error(503, str(e))
        except OnnxtwinError as e:
            return error(400, str(e))

    async def probe(s: Scheduler) -> str | None:
        """None if the model runs a probe input now, else why not."""
        try:
            await asyncio.wait_for(s.submit(probe_inputs(s.session.inputs)),
                                   options.probe_timeout_s)
        except TimeoutError:
            return f"{s.session.path.name}: expected a probe run within " \
                   f"{options.probe_timeout_s} s, got none"
        except Exception as e:  # whatever stops the session is the answer
            return first_line(e)
        return None

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "onnxtwin", "version": version("onnxtwin"),
                             "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        failures = [f for f in await asyncio.gather(*map(probe, schedulers.values())) if f]
        return error(503, "; ".join(failures)) if failures else Response(status_code=200)

    async def model_ready(request: Request) -> Response:
        failure = await probe(scheduler(request))
        return error(503, failure) if failure else Response(status_code=200)

    async def metadata(request: Request) -> Response:
        s = scheduler(request)
        return JSONResponse(model_metadata(request.path_params["model"], MODEL_VERSION,
                                           s.session.inputs, s.session.outputs))

    async def infer(request: Request) -> Response:
        s = scheduler(request)
        body = await read_bounded(request, options.max_request_bytes)
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        outputs = await s.submit(parsed.inputs)
        content, headers = infer_response(request.path_params["model"], MODEL_VERSION, parsed,
                                          outputs)
        return Response(content, 200, headers=headers)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, f"{request.method} {request.url.path}: expected a v2 "
                                      f"route ({exc.detail})")

    def routes(path: str, handler, methods=("GET",)) -> list[Route]:
        async def endpoint(request: Request) -> Response:
            return await guarded(handler, request)
        paths = [path] if "{model}" not in path else [
            path, path.replace("{model}", "{model}/versions/{version}")]
        return [Route(p, endpoint, methods=list(methods)) for p in paths]

    @asynccontextmanager
    async def lifespan(app):
        for name, session in sessions.items():
            schedulers[name] = Scheduler(session, options.max_batch,
                                         options.max_delay_ms / 1000, options.max_queue)
            schedulers[name].start()
        on_ready()
        try:
            yield
        finally:  # uvicorn gets here after in-flight requests finished
            await asyncio.gather(*(s.stop() for s in schedulers.values()))

    app = Starlette(routes=[
        *routes("/v2", server_metadata), *routes("/v2/health/live", live),
        *routes("/v2/health/ready", ready), *routes("/v2/models/{model}", metadata),
        *routes("/v2/models/{model}/ready", model_ready),
        *routes("/v2/models/{model}/infer", infer, methods=("POST",)),
    ], exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    return app


async def read_bounded(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _HttpError(413, f"request: expected at most {limit} bytes, got {declared}")
    if request.headers.get("content-encoding", "identity") != "identity":
        raise _HttpError(400, f"request: expected an uncompressed body, got Content-Encoding "
                              f"{request.headers['content-encoding']}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, f"request: expected at most {limit} bytes, got more")
        chunks.append(chunk)
    return b"".join(chunks)


def probe_inputs(inputs: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    """The smallest valid inputs: zeros, every dynamic dim 1."""
    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], i.dtype)
            for i in inputs}


def model_names(paths: list[Any]) -> dict[str, Any]:
    """Model name (the file name without .onnx) -> path; names must differ."""
    named: dict[str, Any] = {}
    for path in paths:
        name = path.name.removesuffix(".onnx")
        if name in named:
            raise OnnxtwinError(f"{path}: expected model files with different names, got "
                                f"{name!r} twice ({named[name]})")
        named[name] = path
    return named


def serve(sessions: Mapping[str, Session], host: str, port: int, options: ServeOptions,
          announce=print) -> None:
    """Serve until SIGINT or SIGTERM; in-flight requests finish first."""
    import uvicorn

    listener = listen(host, port)
    bound = listener.getsockname()[1]
    line = (f"serving {', '.join(sessions)} at http://{host}:{bound}/v2 "
            f"(max batch {options.max_batch}, queue {options.max_queue})")
    # Announced from the app's startup: by then uvicorn handles SIGINT and SIGTERM.
    app = create_app(sessions, options, on_ready=lambda: announce(line))
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[listener])


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the socket says so; without it Nagle's algorithm holds each response body back
    # for the client's delayed ACK (measured: 44 ms per request instead of 0.5 ms).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except (OSError, OverflowError) as e:
        listener.close()
        raise OnnxtwinError(f"{host}:{port}: expected an address to listen on, got "
                            f"{getattr(e, 'strerror', None) or e}") from None
    listener.listen(2048)
    return listener
