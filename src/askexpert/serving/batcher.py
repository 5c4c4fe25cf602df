"""Dynamic batching per expert: requests that arrive close together run as one batch.

Each :class:`DynamicBatcher` owns a queue. Its worker takes the first waiting request and every
request already queued behind it, then keeps collecting until the batch holds ``max_batch``
images or ``max_wait_ms`` has passed since that first request, runs the batch off the event loop
(in the server's single model thread, so CPU threads are never oversubscribed and GPU work stays
ordered), and hands each request its slice
of the answers with its own queue time and the batch's compute time.

With the default ``max_wait_ms = 0`` this is continuous batching: a lone request runs at once
(no added latency), and requests that arrive while the model is busy form the next batch, so
batches grow with the load by themselves. A positive wait trades latency for fuller batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from askexpert.serving.pool import ExpertOutput


@dataclass
class BatchTimings:
    queue_ms: float
    compute_ms: float
    batch_size: int


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    def __init__(self, run: Callable[[np.ndarray], ExpertOutput], *, executor: Executor, max_batch: int = 64,
                 max_wait_ms: float = 0.0, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Images waiting (not yet in a running batch)."""
        return sum(len(p.images) for p in list(self.queue._queue))  # noqa: SLF001 (read-only peek)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, images: np.ndarray) -> tuple[ExpertOutput, BatchTimings]:
        self.start()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(images, future, time.perf_counter()))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch = [first]
            size = len(first.images)
            deadline = first.enqueued + self.max_wait
            while size < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(
                        self.queue.get(), remaining)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(item.images) > self.max_batch:
                    batch.append(item)  # taken already: it runs in this batch, which ends here
                    size += len(item.images)
                    break
                batch.append(item)
                size += len(item.images)
            started = time.perf_counter()
            images = batch[0].images if len(batch) == 1 else np.concatenate([p.images for p in batch])
            try:
                output = await loop.run_in_executor(self.executor, self.run, images)
            except Exception as err:  # the model failed: every request of the batch gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            compute = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(size, compute)
            offset = 0
            for p in batch:
                n = len(p.images)
                timings = BatchTimings(queue_ms=(started - p.enqueued) * 1000, compute_ms=compute * 1000,
                                       batch_size=size)
                if not p.future.done():
                    p.future.set_result((output.slice(offset, offset + n), timings))
                offset += n
