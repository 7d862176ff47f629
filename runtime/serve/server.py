"""`onnxtwin serve`: the Open Inference Protocol v2 over HTTP (Starlette on uvicorn).

Routes (Triton's and KServe's v2 REST API; `/versions/1` may follow a model name):
    GET  /v2                       server metadata
    GET  /v2/health/live           200 while the process serves
    GET  /v2/health/ready          200 if every model runs a probe input, else 503
    GET  /v2/models/NAME           model metadata from the ONNX signature
    GET  /v2/models/NAME/ready     200 if the model runs a probe input, else 503
    POST /v2/models/NAME/infer     inference, JSON or binary tensor data
Request errors are the protocol's {"error": "..."} with HTTP 400 (404: no such model or
route, 408: body too slow, 413: request too large or a run over the memory bound, 503:
queue full, request bodies over their budget, or shutting down).

What bounds a hostile or careless client: the body's size, the time to send the headers
(per request) and the body, the bytes of bodies held at once across connections, each
run's estimated memory (the sessions' own `memory_limit`: `serve` insists on one, a test
or an embedding application may pass sessions without), and the queue. Large bodies are
decoded, and large outputs encoded, on one worker thread: the event loop answers health
checks between their steps (Python's JSON parser still holds the GIL while it parses), and
one thread bounds the memory decoding takes at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from typing import Any, Protocol

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError, ResourceLimit, first_line
from onnxtwin.runtime.files import safe_name
from onnxtwin.runtime.serve.batching import (
    Scheduler,
    Unavailable,
    batch_dim,
    batch_invariant,
)
from onnxtwin.runtime.serve.oip import (
    DATATYPES,
    HEADER_LENGTH,
    byte_count,
    error_body,
    infer_response,
    model_metadata,
    parse_infer_request,
    protocol_datatype,
    wanted_outputs,
)
from onnxtwin.runtime.session import DEFAULT_MEMORY_LIMIT, Session, TensorInfo

MODEL_VERSION = "1"
INLINE_BYTES = 2**16
"""Bodies and outputs up to this size are decoded and encoded on the event loop (well
under a millisecond); larger ones on the server's worker thread."""


@dataclass(frozen=True)
class ServeOptions:
    """Batching and the bounds that keep a server's memory and connections flat whatever
    clients send."""

    max_batch: int = 64  # rows per onnxruntime run; 0 turns dynamic batching off
    max_delay_ms: float = 0.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting per model; one more gets 503
    max_request_bytes: int = 64 * 2**20  # a larger body gets 413 before it is read
    probe_timeout_s: float = 10.0  # a readiness probe slower than this fails
    max_run_bytes: int = DEFAULT_MEMORY_LIMIT  # estimated peak memory of one run; over: 413
    max_inflight_bytes: int | None = None  # bodies held at once (None: 4 x max_request_bytes)
    header_timeout_s: float = 10.0  # a request's headers must arrive within this
    body_timeout_s: float = 60.0  # its body within this of its headers; else 408
    idle_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # open connections; one more is closed at once
    max_run_s: float = 60.0  # a run (a request or a batch) is stopped after this; 413

    def __post_init__(self) -> None:
        lows = {"max_batch": 0, "max_delay_ms": 0, "max_queue": 1, "max_request_bytes": 1,
                "max_run_bytes": 1, "max_inflight_bytes": self.max_request_bytes,
                "max_connections": 1}
        for name, low in lows.items():
            value = getattr(self, name)
            if value is not None and not value >= low:  # NaN too
                raise OnnxtwinError(f"{name}: expected a number >= {low}, got {value}")
        for name in ("probe_timeout_s", "header_timeout_s", "body_timeout_s",
                     "idle_timeout_s", "max_run_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise OnnxtwinError(f"{name}: expected a number of seconds > 0, got "
                                    f"{getattr(self, name)}")

    @property
    def inflight_budget(self) -> int:
        """Bytes of request bodies the server holds at once, across all connections, from
        the first byte to the response (queued requests included)."""
        return self.max_inflight_bytes or 4 * self.max_request_bytes

    @property
    def session_bounds(self) -> dict[str, Any]:
        """Session keywords for a served model: each run bounded by `max_run_bytes` and
        `max_run_s` (a request cannot hold a model for ever), and onnxruntime's CPU arena
        off, so that a large run's memory goes back to the system afterwards instead of
        staying with the process."""
        return {"memory_limit": self.max_run_bytes, "arena": False,
                "time_limit_s": self.max_run_s}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.close = status, close


class _Budget:
    """Bytes of request bodies held at once; a claim over it is refused with 503."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    @contextmanager
    def claim(self) -> Iterator[Callable[[int], None]]:
        """A function that raises this claim to n bytes, released when the block ends."""
        mine = 0

        def grow(n: int) -> None:
            nonlocal mine
            if self.held - mine + n > self.limit:
                raise _HttpError(503, f"server: expected request bodies in flight to total at "
                                      f"most {self.limit} bytes, got {self.held} held and "
                                      f"{n - mine} more asked (retry later)", close=True)
            self.held += n - mine
            mine = n

        try:
            yield grow
        finally:
            self.held -= mine


class Model(Protocol):
    """What the protocol's routes need of a served model: its signature, and a way to run
    a request (validated there; onnxtwin's errors map to HTTP statuses)."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


Models = Callable[[], AbstractAsyncContextManager[Mapping[str, Model]]]
"""Opens the served models by name when the application starts, closes them when it stops."""


def create_app(sessions: Mapping[str, Session], options: ServeOptions = ServeOptions(),
               on_ready: Callable[[], None] = lambda: None,
               unbatched: Collection[str] = ()) -> Any:
    """The ASGI application serving `sessions` by model name in this process; `on_ready`
    runs at startup. The models named in `unbatched` run each request alone.

    Each run is bounded by its session's own `memory_limit` (413 over it, and no batch
    grows past it). Models the protocol cannot serve (a name that is no URL path part,
    an input or output type it has no datatype for) are refused here, in one line.
    """
    for name, session in sessions.items():
        check_servable(name, session)

    @asynccontextmanager
    async def schedulers() -> AsyncIterator[dict[str, Scheduler]]:
        running = {name: Scheduler(session, 0 if name in unbatched else options.max_batch,
                                   options.max_delay_ms / 1000, options.max_queue)
                   for name, session in sessions.items()}
        for s in running.values():
            s.start()
        try:
            yield running
        finally:  # uvicorn gets here after in-flight requests finished
            await asyncio.gather(*(s.stop() for s in running.values()))

    return protocol_app(schedulers, options, on_ready)


def protocol_app(models: Models, options: ServeOptions,
                 on_ready: Callable[[], None] = lambda: None) -> Any:
    """The Open Inference Protocol's routes (Starlette) over `models`: those of this
    process (`create_app`) or of a Ray Serve cluster (`ray_app`). The request bounds of
    `options` apply here; the runs' own bounds are the models'."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    served: dict[str, Model] = {}
    bodies = _Budget(options.inflight_budget)
    worker: list[ThreadPoolExecutor] = []  # one thread, created at startup
    log = logging.getLogger("uvicorn.error")

    def error(status: int, message: str, close: bool = False) -> Response:
        return Response(error_body(message), status, media_type="application/json",
                        headers={"connection": "close"} if close else None)

    def model(request: Request) -> Model:
        name, wanted = request.path_params["model"], request.path_params.get("version")
        if name not in served:
            raise _HttpError(404, f"model: expected one of {sorted(served)}, got {name!r}")
        if wanted not in (None, MODEL_VERSION):
            raise _HttpError(404, f"model {name!r}: expected version {MODEL_VERSION}, got "
                                  f"{wanted!r}")
        return served[name]

    async def guarded(handler, request: Request) -> Response:
        try:
            return await handler(request)
        except _HttpError as e:
            return error(e.status, str(e), e.close)
        except ResourceLimit as e:
            return error(413, str(e))
        except Unavailable as e:
            return error(503, str(e))
        except OnnxtwinError as e:
            return error(400, str(e))
        except ClientDisconnect:
            return error(400, "request: expected a whole body, got a closed connection")
        except Exception as e:  # a bug: no request should get here (the tests try hard)
            log.exception("%s %s", request.method, request.scope["path"])
            return error(500, f"server: expected to answer, got {first_line(e)}")

    async def offload(size: int, function: Callable, *args: Any) -> Any:
        """`function(*args)` here if its data is small, else on the worker thread, so that
        the event loop is not held for the whole of a large body's decoding; one thread
        bounds the memory decoding takes at once."""
        if size <= INLINE_BYTES:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(worker[0],
                                                                partial(function, *args))

    async def probe(name: str) -> str | None:
        """None if the model runs a probe input now, else why not."""
        try:
            await asyncio.wait_for(served[name].submit(probe_inputs(served[name].inputs)),
                                   options.probe_timeout_s)
        except TimeoutError:
            return f"model {name!r}: expected a probe run within {options.probe_timeout_s} " \
                   f"s, got none"
        except Exception as e:  # whatever stops the session is the answer
            return first_line(e)
        return None

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "onnxtwin", "version": version("onnxtwin"),
                             "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        failures = [f for f in await asyncio.gather(*map(probe, served)) if f]
        return error(503, "; ".join(failures)) if failures else Response(status_code=200)

    async def model_ready(request: Request) -> Response:
        model(request)  # 404 for an unknown one
        failure = await probe(request.path_params["model"])
        return error(503, failure) if failure else Response(status_code=200)

    async def metadata(request: Request) -> Response:
        m = model(request)
        return JSONResponse(model_metadata(request.path_params["model"], MODEL_VERSION,
                                           m.inputs, m.outputs))

    async def infer(request: Request) -> Response:
        m = model(request)
        with bodies.claim() as claim:
            body = await read_bounded(request, options, claim)
            parsed = await offload(len(body), parse_infer_request, body,
                                   request.headers.get(HEADER_LENGTH))
            wanted_outputs(parsed, [o.name for o in m.outputs])
            outputs = await m.submit(parsed.inputs)
            content, headers = await offload(sum(v.nbytes for v in outputs.values()),
                                             infer_response, request.path_params["model"],
                                             MODEL_VERSION, parsed, outputs)
        return Response(content, 200, headers=headers)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, f"{request.method} {request.scope['path']}: expected "
                                      f"a v2 route ({exc.detail})")

    def routes(path: str, handler, methods=("GET",)) -> list[Route]:
        async def endpoint(request: Request) -> Response:
            return await guarded(handler, request)
        paths = [path] if "{model}" not in path else [
            path, path.replace("{model}", "{model}/versions/{version}")]
        return [Route(p, endpoint, methods=list(methods)) for p in paths]

    @asynccontextmanager
    async def lifespan(app):
        worker.append(ThreadPoolExecutor(1, thread_name_prefix="onnxtwin-serve"))
        try:
            async with models() as opened:
                served.update(opened)
                on_ready()
                yield
        finally:
            worker.pop().shutdown()

    app = Starlette(routes=[
        *routes("/v2", server_metadata), *routes("/v2/health/live", live),
        *routes("/v2/health/ready", ready), *routes("/v2/models/{model}", metadata),
        *routes("/v2/models/{model}/ready", model_ready),
        *routes("/v2/models/{model}/infer", infer, methods=("POST",)),
    ], exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    return app


async def read_bounded(request: Any, options: ServeOptions,
                       claim: Callable[[int], None]) -> bytes:
    """The request body, refused as soon as it exceeds `max_request_bytes` (413), takes
    longer than `body_timeout_s` (408), or would take the bodies in flight over their
    budget (503: `claim` grows to what the body declares, or has brought so far). The
    connection closes after each of these, so that a client stops uploading into a
    refused request."""
    limit = options.max_request_bytes
    expected = declared_length(request.headers, limit)
    claim(expected)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(options.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _HttpError(413, f"request: expected at most {limit} bytes, got "
                                          f"more", close=True)
                claim(max(size, expected))
                chunks.append(chunk)
    except TimeoutError:
        raise _HttpError(408, f"request: expected the body within {options.body_timeout_s} "
                              f"s, got {size} bytes by then", close=True) from None
    return b"".join(chunks)


def declared_length(headers: Mapping[str, str], limit: int) -> int:
    """The body's length from Content-Length (0 if chunked); a length over `limit`, a body
    framed both ways, or a compressed one is refused."""
    declared = headers.get("content-length")
    expected = 0 if declared is None else byte_count("Content-Length", declared)
    if expected > limit:
        raise _HttpError(413, f"request: expected at most {limit} bytes, got {expected}",
                         close=True)
    if declared is not None and "transfer-encoding" in headers:
        # A proxy in front may frame the body by the other header: request smuggling.
        raise _HttpError(400, "request: expected Content-Length or Transfer-Encoding, got "
                              "both", close=True)
    if headers.get("content-encoding", "identity") != "identity":
        raise _HttpError(400, f"request: expected an uncompressed body, got Content-Encoding "
                              f"{headers['content-encoding']!r}", close=True)
    return expected


def probe_inputs(inputs: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    """The smallest valid inputs: zeros (False), every dynamic dim 1; a scalar is 0-d."""
    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], i.dtype)
            for i in inputs}


def check_servable(name: str, session: Session) -> None:
    """Refuse, in one line, a model the protocol cannot serve."""
    safe_name(name, "model name")  # a URL path part
    for info in session.inputs:
        if info.dtype not in DATATYPES.values():
            raise OnnxtwinError(f"model {name!r}: expected inputs of the protocol's datatypes "
                                f"{list(DATATYPES)}, got {info.name!r} of {info.dtype}")
    for info in session.outputs:
        if protocol_datatype(info) is None:
            raise OnnxtwinError(f"model {name!r}: expected outputs of the protocol's datatypes,"
                                f" got {info.name!r} of {info.dtype}")


def model_names(paths: list[Any]) -> dict[str, Any]:
    """Model name (the file name without .onnx) -> path; names must be safe URL path parts
    (files.safe_name) and differ."""
    named: dict[str, Any] = {}
    for path in paths:
        name = safe_name(path.name.removesuffix(".onnx"), "model name")
        if name in named:
            raise OnnxtwinError(f"{path}: expected model files with different names, got "
                                f"{name!r} twice ({named[name]})")
        named[name] = path
    return named


def serve(sessions: Mapping[str, Session], host: str, port: int, options: ServeOptions,
          announce=print) -> None:
    """Serve until SIGINT or SIGTERM; in-flight requests finish first.

    Every session must bound its runs within `options.max_run_bytes`: open them with
    `Session(path, ..., **options.session_bounds)`. A model whose rows change each other's
    results when run together (`batch_invariant`) is served unbatched, and the announced
    line says so.
    """
    import uvicorn

    for name, session in sessions.items():
        if session.memory_limit is None or session.memory_limit > options.max_run_bytes:
            raise OnnxtwinError(f"model {name!r}: expected a session with memory_limit at "
                                f"most {options.max_run_bytes}, got {session.memory_limit}")
    unbatched = {name: why for name, session in sessions.items()
                 if options.max_batch and batch_dim(session)
                 and (why := batch_invariant(session))}
    listener = listen(host, port)
    bound = listener.getsockname()[1]
    line = (f"serving {', '.join(sessions)} at http://{host}:{bound}/v2 "
            f"(max batch {options.max_batch}, queue {options.max_queue}, "
            f"run memory {options.max_run_bytes / 2**20:.0f} MiB"
            f"{''.join(f'; {n} unbatched: {why}' for n, why in unbatched.items())})")
    # Announced from the app's startup: by then uvicorn handles SIGINT and SIGTERM.
    app = create_app(sessions, options, on_ready=lambda: announce(line), unbatched=unbatched)
    uvicorn.Server(uvicorn_config(app, options)).run(sockets=[listener])


def uvicorn_config(app: Any, options: ServeOptions) -> Any:
    """uvicorn's settings for `app`: the connection timeouts of `options`, quiet logs."""
    import uvicorn

    return uvicorn.Config(app, http=header_deadline(options.header_timeout_s,
                                                    options.max_connections),
                          timeout_keep_alive=options.idle_timeout_s, log_level="warning",
                          access_log=False, timeout_graceful_shutdown=30)


def header_deadline(seconds: float, max_connections: int) -> type:
    """uvicorn's h11 protocol with a deadline for each request's head and a cap on
    connections.

    uvicorn times a connection out only while it idles after a response: one that sends
    nothing, or its headers a byte at a time, or a body nobody reads after the response,
    would stay open for ever. Here a connection that has not delivered the head of a new
    request `seconds` after it opened, or after its last response, is closed. uvicorn also
    accepts connections until the process runs out of file descriptors (then every
    accept fails with a logged traceback); here one past `max_connections` is closed as
    soon as it is accepted.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._deadline: asyncio.TimerHandle | None = None
            self._await_head(None)
            if len(self.connections) > max_connections:
                transport.abort()

        def on_response_complete(self) -> None:
            answered = self.cycle  # a pipelined request may start a new cycle in super()
            super().on_response_complete()
            self._await_head(answered)

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def _await_head(self, answered: Any) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._head_late, answered)

        def _head_late(self, answered: Any) -> None:
            if self.cycle is answered:  # no new request since
                self.transport.abort()  # close() would wait for a client that never reads

    return HeaderDeadline


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
