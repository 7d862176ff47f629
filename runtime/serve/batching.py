"""Dynamic batching: concurrent requests for one model grouped into one onnxruntime run."""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.session import Session


class Unavailable(OnnxtwinError):
    """The model cannot answer now: its queue is full, the server is stopping, or its run
    failed for a reason other than the request (the library's own line). HTTP 503."""


@dataclass(eq=False)  # identity: the queue removes requests, and arrays have no `==`
class _Request:
    arrays: dict[str, np.ndarray]
    rows: int
    key: tuple  # requests batch together only if they agree on everything but the rows
    dims: dict[str, int]  # the run's dynamic dims, by name (batching only)
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Scheduler:
    """Runs one model's requests one onnxruntime run at a time, in arrival order.

    With batching on (`max_batch` > 0, and every input and output has the same named
    first dim), requests that wait together, or arrive within `max_delay_s` of the first
    one, and agree on every dim but the first are concatenated into one run of at most
    `max_batch` rows, and the outputs are split back. A request joins a batch only if the
    batch's run stays within the session's `memory_limit`: 64 requests that each fit alone
    could together need 64 times the memory. At most `max_queue` requests wait; one more
    raises Unavailable instead of growing memory. When a batched run fails, its requests
    run again one by one, so that one request's bad values (an index a foreign model's
    Gather refuses) fail only that request; whatever a run raises goes to its requests,
    and the worker goes on with the next.
    """

    def __init__(self, session: Session, max_batch: int, max_delay_s: float,
                 max_queue: int) -> None:
        self.session = session
        self.batch = batch_dim(session)
        self.max_batch = max_batch if self.batch else 0
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._waiting: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None

    @property
    def inputs(self) -> tuple:
        return self.session.inputs

    @property
    def outputs(self) -> tuple:
        return self.session.outputs

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Finish every waiting request, then stop."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate `inputs`, queue them, and return this request's outputs."""
        arrays = self.session.validate(inputs)
        if self._closing:
            raise Unavailable("server: expected to accept requests, got a server shutting down")
        if len(self._waiting) >= self.max_queue:
            raise Unavailable(f"server: expected a free place in the queue of {self.max_queue} "
                              f"requests, got a full queue (retry later)")
        request = self._request(arrays)
        self._waiting.append(request)
        self._arrived.set()
        return await request.done

    def _request(self, arrays: dict[str, np.ndarray]) -> _Request:
        if not self.max_batch:
            return _Request(arrays, 1, (), {})
        # Batching: every input has the batch dim first.
        return _Request(arrays, row_count(arrays), _key(arrays), self.session.run_dims(arrays))

    async def _work(self) -> None:
        while self._waiting or not self._closing:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = [self._waiting.popleft()]
            try:
                await self._gather(batch)
                results = await asyncio.to_thread(run_batch, self.session,
                                                  [r.arrays for r in batch])
            except Exception as e:
                results = [e] * len(batch)
            for r, result in zip(batch, results, strict=True):
                if r.done.done():  # a client that went away cancelled its future
                    continue
                if isinstance(result, Exception):
                    r.done.set_exception(as_unavailable(result))
                else:
                    r.done.set_result(result)

    async def _gather(self, batch: list[_Request]) -> None:
        """Add to `batch` (its oldest request) the waiting ones that fit with it (the others
        keep their places for the next batch)."""
        rows = batch[0].rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while self.max_batch and rows < self.max_batch:
            taken = False
            for r in list(self._waiting):
                if r.key == batch[0].key and rows + r.rows <= self.max_batch and \
                        fits(self.session, batch[0].dims, self.batch, rows + r.rows):
                    self._waiting.remove(r)
                    batch.append(r)
                    rows += r.rows
                    taken = True
            if taken:
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closing:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break


def as_unavailable(error: Exception) -> OnnxtwinError:
    """A request's error as the protocol maps it: onnxtwin's own errors as they are (400,
    413, 503), anything else (a library's failure, not the request's) as Unavailable."""
    return error if isinstance(error, OnnxtwinError) else Unavailable(first_line(error))


def fits(session: Session, dims: dict[str, int], batch: str | None, rows: int) -> bool:
    """Whether a run with `dims` but `rows` rows stays within the session's memory limit."""
    limit = session.memory_limit
    return limit is None or session.needed_bytes({**dims, batch: rows}) <= limit


def run_batch(session: Session, requests: list[dict[str, np.ndarray]],
              max_rows: int | None = None) -> list[dict[str, np.ndarray] | Exception]:
    """Each request's outputs (or the exception it gets), from as few runs as can be.

    The requests (validated arrays, batch dim first) are grouped in order: a request joins
    the first group that agrees with it on every dim but the first and stays within
    `max_rows` rows (None: no bound) and the session's memory limit. Each group runs once
    and its outputs are split back by rows. When a group's run fails, its requests run
    again one by one, so that one request's bad values (an index a foreign model's Gather
    refuses) fail only that request.
    """
    batch = batch_dim(session)  # None: every request runs alone
    groups: list[list[int]] = []
    for i, arrays in enumerate(requests):
        for group in groups if batch else ():
            first = requests[group[0]]
            total = sum(row_count(requests[j]) for j in (*group, i))
            if _key(first) == _key(arrays) and (max_rows is None or total <= max_rows) \
                    and fits(session, session.run_dims(first), batch, total):
                group.append(i)
                break
        else:
            groups.append([i])
    results: list = [None] * len(requests)
    for group in groups:
        for i, result in zip(group, _run_group(session, [requests[j] for j in group]),
                             strict=True):
            results[i] = result
    return results


def _key(arrays: dict[str, np.ndarray]) -> tuple:
    """What requests must agree on to run together: every input's dtype and dims but the
    first."""
    return tuple((k, a.dtype.str, a.shape[1:]) for k, a in arrays.items())


def row_count(arrays: dict[str, np.ndarray]) -> int:
    """A request's rows: its inputs' first dim."""
    return len(next(iter(arrays.values())))


def _run_group(session: Session, group: list[dict[str, np.ndarray]]) -> list:
    if len(group) == 1:
        try:
            return [session.run(group[0])]
        except Exception as e:
            return [e]
    try:
        outputs = session.run({k: np.concatenate([r[k] for r in group]) for k in group[0]})
        return _split(session, group, outputs)
    except Exception:
        return [item for r in group for item in _run_group(session, [r])]


def _split(session: Session, group: list[dict[str, np.ndarray]],
           outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of a batched run's outputs."""
    counts = [row_count(r) for r in group]
    rows = sum(counts)
    for name, value in outputs.items():
        if value.shape[:1] != (rows,):
            raise OnnxtwinError(f"{session.path.name}: expected output {name!r} with {rows} "
                                f"rows, one per batched input row, got {list(value.shape)}")
    starts = np.cumsum([0, *counts])
    return [{k: v[a:b] for k, v in outputs.items()} for a, b in itertools.pairwise(starts)]


def batch_invariant(session: Session) -> str | None:
    """None if two different rows run together give each row's result alone, bit for bit
    (what batching requests relies on); else why not, e.g. a model that normalises over
    the batch. Other dynamic dims are 1 in the probe; a probe that cannot run says so."""
    rows = [{i.name: _probe_row(i, high) for i in session.inputs} for high in (False, True)]
    try:
        together = session.run({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
        alone = [session.run(r) for r in rows]
    except OnnxtwinError as e:
        return f"a probe of two rows did not run: {e}"
    for name, value in together.items():
        if value.tobytes() != np.concatenate([a[name] for a in alone]).tobytes():
            return f"rows run together change each other's {name!r}"
    return None


def _probe_row(info, high: bool) -> np.ndarray:
    """One row for `info`: every dynamic dim 1, values 0.25 or 0.75 (ids 1 or 2 within the
    vocabulary, False or True)."""
    dtype = np.dtype(info.dtype)
    value = {"f": 0.75 if high else 0.25, "b": high}.get(dtype.kind, 2 if high else 1)
    if info.vocab is not None:
        value = min(value, info.vocab - 1)
    return np.full([d if isinstance(d, int) else 1 for d in info.shape], value, dtype)


def batch_dim(session: Session) -> str | None:
    """The named first dim that every input and output has, and has nowhere else (e.g.
    "batch"), else None: only then can requests be stacked and their results split."""
    tensors = (*session.inputs, *session.outputs)
    firsts = {t.shape[0] if t.shape else None for t in tensors}
    (only,) = firsts if len(firsts) == 1 else (None,)
    if not session.inputs or not isinstance(only, str) or any(
            only in t.shape[1:] for t in tensors):
        return None
    return only
