import asyncio
import threading

from kubetune_operator.workqueue import WorkQueue


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_a_key_queued_many_times_runs_once():
    async def main():
        seen = []
        queue = WorkQueue(lambda key: seen.append(key), workers=2)
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        queue.start()
        await asyncio.sleep(0.2)
        await queue.stop()
        return seen

    assert sorted(run(main())) == ["a", "b"]


def test_a_key_added_while_running_runs_again_after_never_concurrently():
    async def main():
        started, release = threading.Event(), threading.Event()
        runs, active, overlap = [], [0], [False]

        def work(key):
            active[0] += 1
            overlap[0] |= active[0] > 1
            runs.append(key)
            if len(runs) == 1:
                started.set()
                release.wait(5)
            active[0] -= 1

        queue = WorkQueue(work, workers=4)
        queue.start()
        queue.add("a")
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        queue.add("a")
        queue.add("a")
        release.set()
        await asyncio.sleep(0.3)
        await queue.stop()
        return runs, overlap[0]

    runs, overlap = run(main())
    assert runs == ["a", "a"] and not overlap


def test_failures_retry_with_backoff_and_wake_ups_are_honoured():
    async def main():
        attempts = []
        done = []

        def work(key):
            attempts.append(key)
            if len(attempts) < 3:
                raise RuntimeError("apiserver hiccup")
            return None

        queue = WorkQueue(
            work, workers=1, on_done=lambda k, s, e: done.append(type(e).__name__ if e else None)
        )
        queue.start()
        queue.add("a")
        await asyncio.sleep(2.0)  # backoff 0.5 s then 1 s
        await queue.stop()
        return attempts, done

    attempts, done = run(main())
    assert attempts == ["a", "a", "a"]
    assert done == ["RuntimeError", "RuntimeError", None]


def test_requeue_after_and_the_earliest_wake_up_wins():
    async def main():
        runs = []
        loop = asyncio.get_running_loop()
        start = loop.time()

        def work(key):
            runs.append(round(loop.time() - start, 1))
            return 0.3 if len(runs) == 1 else None

        queue = WorkQueue(work, workers=1)
        queue.start()
        queue.add_after("a", 5.0)
        queue.add_after("a", 0.1)  # earlier: replaces the 5 s wake-up
        await asyncio.sleep(1.0)
        await queue.stop()
        return runs

    runs = run(main())
    assert len(runs) == 2 and runs[0] < 0.5 and 0.3 <= runs[1] - runs[0] < 0.8


def test_forget_cancels_pending_wake_ups():
    async def main():
        runs = []
        queue = WorkQueue(runs.append, workers=1)
        queue.start()
        queue.add_after("a", 0.2)
        queue.forget("a")
        await asyncio.sleep(0.5)
        await queue.stop()
        return runs

    assert run(main()) == []
