"""Dynamic batching per expert: requests that arrive close together run as one batch.

Each :class:`DynamicBatcher` owns a queue. Its worker takes the first waiting request and every
request already queued behind it, then keeps collecting until the batch holds ``max_batch``
images or ``max_wait_ms`` has passed since that first request, runs the batch off the event loop
(in its expert's model thread: the server gives each expert one, so one expert's load never
delays another's, and GPU work of one model stays ordered), and hands each request its slice of
the answers with its own queue time and the compute time of the batches it ran in.

A request larger than the room left in a batch is split: the part that fits runs now, the rest
goes back to the end of the queue, behind the requests that arrived meanwhile, and those run first
in a batch of their own (not filled up with the big request's next part). So a maximal request
runs as a series of ``max_batch`` batches (memory bounded by one batch, not by the request), and
a small request to the same expert waits at most for the part in the model, not for the rest.

With the default ``max_wait_ms = 0`` this is continuous batching: a lone request runs at once
(no added latency), and requests that arrive while the model is busy form the next batch, so
batches grow with the load by themselves. A positive wait trades latency for fuller batches.

A small batch (at most ``inline_max`` images) formed when the whole server is idle (nothing else
queued here, no other expert computing: ``others_idle``) and the load light (the previous batch was
small too) runs on the event loop's own thread: no hand-off to the model thread and back, each of
which wakes a sleeping thread (0.1-0.3 ms on a VM, where an idle core is woken by the hypervisor).
That is the latency of a lone edge request. The batch is still formed by the worker, one loop
iteration after the request was queued, so requests that arrived together still run as one batch;
under load the server is rarely idle, and the first lone request after a large batch still goes to
the model thread (while the model runs there, the event loop keeps reading the requests that follow
it). While an inline batch runs the server reads no new request: they wait at most for this one
small batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from askexpert.errors import ConfigError
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
    taken: int = 0  # images already given to a batch
    parts: list[ExpertOutput] = field(default_factory=list)
    compute: float = 0.0  # seconds of the batches it ran in
    largest_batch: int = 0

    @property
    def remaining(self) -> int:
        return len(self.images) - self.taken


class DynamicBatcher:
    def __init__(self, run: Callable[[np.ndarray], ExpertOutput], *, executor: Executor, max_batch: int = 64,
                 max_wait_ms: float = 0.0, on_batch: Callable[[int, float], None] | None = None,
                 inline_max: int = 0, others_idle: Callable[[], bool] = lambda: True) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:  # 0 would requeue a request for ever
            raise ConfigError(f"max_batch must be a whole number of images >= 1, got {max_batch!r}",
                              fix="pass --max-batch 1 or more (64 by default)")
        if not max_wait_ms >= 0:  # NaN too
            raise ConfigError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}", fix="pass --max-wait-ms 0 or more")
        if inline_max < 0:
            raise ConfigError(f"inline_max must be >= 0, got {inline_max!r}", fix="pass 0 (never inline) or more")
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        # batches of at most this many images run on the event loop's thread when the server is idle
        self.inline_max = inline_max
        self.others_idle = others_idle  # no other expert of the server is computing or has requests waiting
        self._running = False  # a batch is being formed or is in the model thread
        self._last_size = 0  # images in the previous batch: the load is light while batches stay small
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._held: _Pending | None = None  # a split request's rest, kept out of a batch of fresh requests
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Images waiting (not yet in a running batch)."""
        held = self._held.remaining if self._held is not None else 0
        return held + sum(p.remaining for p in list(self.queue._queue))  # noqa: SLF001 (read-only peek)

    @property
    def idle(self) -> bool:
        """No batch being formed or in the model, and no request waiting for one."""
        return not self._running and self._held is None and self.queue.empty()

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

    def _timed_run(self, images: np.ndarray) -> tuple[ExpertOutput, float]:
        """The model's answers and its own time (in the thread that runs it: the hand-offs to and from
        the model thread count as the request's queue time, not as compute)."""
        started = time.perf_counter()
        output = self.run(images)
        elapsed = time.perf_counter() - started
        paced = getattr(output, "device_s", None)  # a pool paced to a server device reports the device's time
        return output, elapsed if paced is None else paced

    async def _next(self, deadline: float | None) -> _Pending | None:
        """The next live request (one whose caller still waits), or None when none comes by ``deadline``
        (None: wait as long as it takes)."""
        while True:
            if self._held is not None:
                item, self._held = self._held, None
            elif deadline is None:
                item = await self.queue.get()
            else:
                remaining = deadline - time.perf_counter()
                try:
                    item = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(
                        self.queue.get(), remaining)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    return None
            if not item.future.done():  # a cancelled caller's images are not computed
                return item

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._next(None)
            self._running = True  # from the batch's first request to its answers
            deadline = item.enqueued + self.max_wait
            batch: list[tuple[_Pending, int, int]] = []  # (request, first image, end) of each part
            size = 0
            while item is not None:
                take = min(item.remaining, self.max_batch - size)
                batch.append((item, item.taken, item.taken + take))
                item.taken += take
                size += take
                if size >= self.max_batch:
                    break
                item = await self._next(deadline)
                if item is not None and item.taken:  # a split request's next part: after this batch
                    self._held = item
                    break
            images = batch[0][0].images[batch[0][1]:batch[0][2]] if len(batch) == 1 else np.concatenate(
                [p.images[a:b] for p, a, b in batch])
            try:
                if (size <= self.inline_max and self._last_size <= self.inline_max and self.queue.empty()
                        and self._held is None and self.others_idle()):
                    output, compute = self._timed_run(images)  # here: nothing else for this thread to do
                else:
                    output, compute = await loop.run_in_executor(self.executor, self._timed_run, images)
            except Exception as err:  # the model failed: every request of the batch gets the error
                for p, _, _ in batch:
                    p.taken = len(p.images)  # nothing more of it runs
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            finally:
                self._running = False
                self._last_size = size
            finished = time.perf_counter()
            if self.on_batch is not None:
                self.on_batch(size, compute)
            offset = 0
            for p, a, b in batch:
                p.parts.append(output.slice(offset, offset + b - a))
                offset += b - a
                p.compute += compute
                p.largest_batch = max(p.largest_batch, size)
                if p.remaining:  # split: the rest queues behind the requests that arrived during this batch
                    self.queue.put_nowait(p)
                elif not p.future.done():
                    whole = p.parts[0] if len(p.parts) == 1 else ExpertOutput(
                        torch.cat([part.probs for part in p.parts]), output.output_ids)
                    p.future.set_result((whole, BatchTimings(
                        queue_ms=(finished - p.enqueued - p.compute) * 1000, compute_ms=p.compute * 1000,
                        batch_size=p.largest_batch)))
