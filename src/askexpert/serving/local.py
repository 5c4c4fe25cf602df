"""The uvicorn server's experts: an :class:`.pool.ExpertPool` in this process, one dynamic batcher and
one model thread per expert (so one expert's load never delays another's)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from askexpert.serving.batcher import BatchTimings, DynamicBatcher
from askexpert.serving.pool import ExpertOutput, ExpertPool

INLINE_MAX = 1  # the default --inline-max: a lone edge request's one image


class LocalExperts:
    """The :class:`.app.Experts` backend of ``askexpert serve`` (``--backend uvicorn``)."""

    def __init__(self, pool: ExpertPool, *, max_batch: int = 64, max_wait_ms: float = 0.0,
                 inline_max: int = INLINE_MAX) -> None:
        """``inline_max``: a batch of at most this many images formed while no other expert is busy runs on
        the event loop's thread (no hand-off to a model thread and back; see :mod:`.batcher`); 0: never."""
        self.pool = pool
        self.infos = {key: pool.get(key).info() for key in pool.ids()}
        self.device, self.system_id = str(pool.device), pool.system_id
        self.reroute = pool.reroute  # the bundle's re-routing rule, which the app applies
        self.on_batch: Callable[[str, int, float], None] | None = None
        self._executors = {key: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"askexpert-model-{key}")
                           for key in pool.ids()}
        self._batchers = {key: DynamicBatcher(partial(pool.infer, key), executor=self._executors[key],
                                              max_batch=max_batch, max_wait_ms=max_wait_ms,
                                              on_batch=partial(self._batch_done, key), inline_max=inline_max,
                                              others_idle=partial(self._others_idle, key))
                          for key in pool.ids()}

    def _others_idle(self, key: str) -> bool:
        return all(batcher.idle for other, batcher in self._batchers.items() if other != key)

    def _batch_done(self, key: str, size: int, seconds: float) -> None:
        if self.on_batch is not None:
            self.on_batch(key, size, seconds)

    def depth(self, key: str) -> int:
        return self._batchers[key].depth

    async def submit(self, key: str, images: np.ndarray) -> tuple[ExpertOutput, BatchTimings]:
        return await self._batchers[key].submit(images)

    async def start(self) -> None:
        for batcher in self._batchers.values():
            batcher.start()

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
