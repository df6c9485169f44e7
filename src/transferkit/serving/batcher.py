"""Dynamic batching: the images of concurrent requests go through the model together.

Requests hand in their images' inputs and await their logits. One task takes inputs off the
queue: the first that arrives, then whatever else is waiting or comes within `max_wait`
seconds, up to `max_batch` rows, and runs the batch on one inference thread, off the event
loop. While the model runs, new requests queue up, so under load batches fill by themselves and
an idle server answers a lone request after at most `max_wait`."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class Batcher:
    """`run`: a stacked batch of inputs (N, ...) -> logits (N, C), called on one thread.
    Use `async with Batcher(...)` inside the event loop that serves the requests."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_wait: float = 0.002):
        self._run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self._queue: asyncio.Queue | None = None
        self._carry: deque = deque()  # taken off the queue but left for the next batch (it was full)
        self._task: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None
        self.batches = self.rows = 0  # counters for /model and the benchmark

    async def __aenter__(self) -> "Batcher":
        self._queue = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="transferkit-infer")
        self._task = asyncio.get_running_loop().create_task(self._serve())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._thread.shutdown(wait=True)

    async def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """The logits of `inputs` (rows of one image: its views), once its batch has run."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((inputs, future))
        return await future

    async def _next(self, timeout: float | None):
        if self._carry:
            return self._carry.popleft()
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _gather(self) -> list:
        loop = asyncio.get_running_loop()
        items = [await self._next(None)]
        rows, deadline = len(items[0][0]), loop.time() + self.max_wait
        while rows < self.max_batch:
            item = await self._next(deadline - loop.time())
            if item is None:
                break
            if rows + len(item[0]) > self.max_batch:
                self._carry.append(item)
                break
            items.append(item)
            rows += len(item[0])
        return [(x, f) for x, f in items if not f.done()]  # a request that went away is not run

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            if not items:
                continue
            batch = np.concatenate([x for x, _ in items])
            try:
                logits = await loop.run_in_executor(self._thread, self._run, batch)
            except Exception as exc:  # noqa: BLE001 - the requests of this batch answer it; the server goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches, self.rows = self.batches + 1, self.rows + len(batch)
            start = 0
            for x, future in items:
                if not future.done():
                    future.set_result(logits[start:start + len(x)])
                start += len(x)
