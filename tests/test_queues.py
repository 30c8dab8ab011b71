"""Queue depth and age, as `/metrics` reports them."""

from __future__ import annotations

import asyncio
import threading
import time

from media.queues import MeteredExecutor, QueueLoad, StampedQueue


async def test_stamped_queue_reports_depth_and_the_oldest_items_age() -> None:
    queue: StampedQueue[int] = StampedQueue(4)
    assert queue.load() == QueueLoad()
    queue.put_nowait(1)
    await asyncio.sleep(0.05)
    queue.put_nowait(2)
    load = queue.load()
    assert load.depth == 2 and 0.04 <= load.oldest_s < 5
    assert queue.get_nowait() == 1
    load = queue.load()
    assert load.depth == 1 and load.oldest_s < 0.04  # item 2 is the oldest now
    assert await queue.get() == 2
    assert queue.load() == QueueLoad()


def test_metered_executor_counts_jobs_not_started_yet() -> None:
    executor = MeteredExecutor(1, "test")
    release = threading.Event()
    try:
        running = executor.submit(release.wait, 10)
        deadline = time.monotonic() + 5
        while executor.load().depth and time.monotonic() < deadline:
            time.sleep(0.01)  # the only thread picks up the first job
        waiting = [executor.submit(sum, [i, 1]) for i in range(3)]
        time.sleep(0.05)
        load = executor.load()
        assert load.depth == 3 and load.oldest_s >= 0.04
        assert waiting[2].cancel()  # a job cancelled before it ran is not waiting any more
        assert executor.load().depth == 2
        release.set()
        assert running.result(5) is True
        assert [f.result(5) for f in waiting[:2]] == [1, 2]
        assert executor.load() == QueueLoad()
    finally:
        release.set()
        executor.shutdown()


def test_queue_loads_of_one_kind_combine() -> None:
    combined = QueueLoad.combine([QueueLoad(2, 0.5), QueueLoad(), QueueLoad(1, 1.5)])
    assert combined == QueueLoad(3, 1.5)
    assert QueueLoad.combine([]) == QueueLoad()
