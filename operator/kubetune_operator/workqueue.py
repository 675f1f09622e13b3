"""A keyed work queue in the spirit of client-go's: each job reconciled by one worker at a time.

Events arrive in bursts (a job's pods, its status, its StatefulSet all change together); the queue
folds them: a key waiting in the queue is not queued twice, and a key that changes while being
reconciled runs once more afterwards. Failures come back with exponential backoff; a reconcile can
ask to be woken later (deadlines, TTLs). Reconciles run in a thread pool because the Kubernetes
client is blocking.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


class WorkQueue:
    def __init__(
        self,
        work: Callable[[Any], float | None],
        *,
        workers: int = 4,
        on_done: Callable[[Any, float, BaseException | None], None] | None = None,
    ):
        """`work(key)` returns seconds until it wants to run again (or None); `on_done` sees each run."""
        self._work = work
        self._workers = workers
        self._on_done = on_done
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[Hashable, int] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self._tasks: list[asyncio.Task] = []

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: Hashable) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        """Run `key` in `delay` seconds, unless an earlier wake-up is already set."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= when:
                return
            existing[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Hashable) -> None:
        """The object is gone: drop its timers and backoff (a queued run finds nothing and ends)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        self._failures.pop(key, None)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, handle in self._timers.values():
            handle.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._processing.add(key)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                again = await loop.run_in_executor(self._executor, self._work, key)
            # A reconcile can fail in many ways (API errors, timeouts, a bug); each is logged and
            # retried with backoff so one bad job never stops the others.
            except Exception as exc:  # noqa: BLE001
                error = exc
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                again = min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1))
                log.warning("reconcile of %s failed (attempt %d, retry in %.1fs): %s", key, failures, again, exc,
                            exc_info=failures == 1)  # fmt: skip
            else:
                self._failures.pop(key, None)
            finally:
                self._processing.discard(key)
            if self._on_done is not None:
                self._on_done(key, time.perf_counter() - started, error)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif again is not None:
                self.add_after(key, again)
