"""Opportunistic request batching for a Serve replica: plain asyncio, no Ray.

When the replica is free, the next batch is every request of one model that queued meanwhile (up to
``max_batch_size``); only a request that finds the replica idle waits, up to ``wait_s``, for others to join it.
So a lone request pays at most ``wait_s``, and under load every forward pass is as full as the load allows.

Why not ``@serve.batch``: since ray-project/ray#53096 (``max_concurrent_batches``, 2025) it forms the next
batch as soon as the current one starts, and that batch then waits for the running one to finish. Under load it
cuts the queue into batches of whatever arrived within ``batch_wait_timeout_s`` of each other. Measured by
``bench/serve_latency.py`` (16 concurrent clients, max batch 16, 2-core CPU): a mean batch of 2.2 requests and
no throughput gain over no batching, where this batcher fills its batches from the queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

__all__ = ["Batcher"]


class Batcher:
    """``await batcher(key, item)`` -> ``run(key, items)``'s answer for ``item``.

    ``run`` gets up to ``max_batch_size`` items of one key (one model) and returns one answer per item, in order;
    one ``run`` at a time. Keys take turns by the age of their oldest request. An exception from ``run`` is the
    answer of every request in that batch; the batcher goes on with the next.
    """

    def __init__(self, run: Callable[[Hashable, list], Awaitable[list]], max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size >= 1 and wait_s >= 0, got {max_batch_size} and {wait_s}")
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self._queues: dict[Hashable, deque[tuple[Any, asyncio.Future, float]]] = {}
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def __call__(self, key: Hashable, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append((item, future, time.monotonic()))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            # A fresh context: the worker outlives this request, so it must not carry its request context.
            self._worker = asyncio.get_running_loop().create_task(self._work(), context=contextvars.Context())
        return await future

    def _oldest_key(self) -> Hashable | None:
        waiting = [(queue[0][2], i, key) for i, (key, queue) in enumerate(self._queues.items()) if queue]
        return min(waiting)[2] if waiting else None

    async def _work(self) -> None:
        while True:
            key = self._oldest_key()
            if key is None:
                self._queues.clear()  # drop the empty queues of models no longer asked for
                self._arrived.clear()
                await self._arrived.wait()
                continue
            queue = self._queues[key]
            # Requests that queued while the last batch ran have waited long enough: they go at once.
            while len(queue) < self.max_batch_size and (left := queue[0][2] + self.wait_s - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch_size))]
            batch = [(item, future) for item, future, _ in batch if not future.done()]  # callers that gave up
            if batch:
                await self._answer(key, batch)

    async def _answer(self, key: Hashable, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            answers = await self.run(key, [item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"run answered {len(answers)} of a batch of {len(batch)}")
        except Exception as e:  # noqa: BLE001 - it is every caller's answer, raised where they await
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), answer in zip(batch, answers):
            if not future.done():
                future.set_result(answer)
