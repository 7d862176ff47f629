"""Dynamic batching: concurrent requests for one model grouped into one onnxruntime run."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.session import Session


class Overloaded(OnnxtwinError):
    """The queue is full: the client should retry later (HTTP 503)."""


@dataclass(eq=False)  # identity: the queue removes requests, and arrays have no `==`
class _Request:
    arrays: dict[str, np.ndarray]
    rows: int
    key: tuple  # requests batch together only if they agree on everything but the rows
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Scheduler:
    """Runs one model's requests one onnxruntime run at a time, in arrival order.

    With batching on (`max_batch` > 0, and every input and output has the same named
    first dim), requests that wait together, or arrive within `max_delay_s` of the first
    one, and agree on every dim but the first are concatenated into one run of at most
    `max_batch` rows, and the outputs are split back. At most `max_queue` requests wait;
    one more raises Overloaded instead of growing memory.
    """

    def __init__(self, session: Session, max_batch: int, max_delay_s: float,
                 max_queue: int) -> None:
        self.session = session
        self.max_batch = max_batch if batch_dim(session) else 0
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._waiting: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None

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
            raise Overloaded("server: expected to accept requests, got a server shutting down")
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(f"server: expected a free place in the queue of {self.max_queue} "
                             f"requests, got a full queue (retry later)")
        first = next(iter(arrays.values()))
        request = _Request(arrays, len(first), tuple(
            (k, a.dtype.str, a.shape[1:]) for k, a in arrays.items()))
        self._waiting.append(request)
        self._arrived.set()
        return await request.done

    async def _work(self) -> None:
        while self._waiting or not self._closing:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._run(await self._gather())

    async def _gather(self) -> list[_Request]:
        """The next batch: the oldest request, and the waiting ones that fit with it (the
        others keep their places for the next batch)."""
        batch = [self._waiting.popleft()]
        rows = batch[0].rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while self.max_batch and rows < self.max_batch:
            taken = False
            for r in list(self._waiting):
                if r.key == batch[0].key and rows + r.rows <= self.max_batch:
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
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        inputs = batch[0].arrays if len(batch) == 1 else {
            k: np.concatenate([r.arrays[k] for r in batch]) for k in batch[0].arrays}
        try:
            outputs = await asyncio.to_thread(self.session.run, inputs)
        except Exception as e:  # every request of the batch gets the error
            for r in batch:
                if not r.done.done():
                    r.done.set_exception(e)
            return
        start = 0
        for r in batch:
            if not r.done.done():  # a client that went away cancelled its future
                r.done.set_result({k: v[start:start + r.rows] for k, v in outputs.items()})
            start += r.rows


def batch_dim(session: Session) -> str | None:
    """The named first dim every input and output shares (e.g. "batch"), else None."""
    firsts = {t.shape[0] if t.shape else None for t in (*session.inputs, *session.outputs)}
    (only,) = firsts if len(firsts) == 1 else (None,)
    return only if isinstance(only, str) else None
