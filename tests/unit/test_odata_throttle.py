"""The Dataverse connector's batch size, pause and concurrency limit, without HTTP."""

from __future__ import annotations

import threading
import time

from shared.connectors.odata.throttle import AdaptiveBatchSize, ConcurrencyLimit, Pacer


def test_batch_size_grows_while_fast_and_shrinks_on_time_and_size():
    size = AdaptiveBatchSize(ceiling=100, start=10, target_seconds=10)
    assert not size.measured
    size.answered(10, 0.1)
    assert size.measured and size.size == 40  # very fast: fourfold
    for _ in range(2):
        size.answered(size.size, 1.0)
    assert size.size == 100  # 80, then the ceiling
    size.answered(100, 12.0)
    assert size.size == 50  # slower than the target
    size.slow_down(50)
    assert size.size == 25  # a timeout or an execution-time throttle
    size.too_large(24)
    assert size.size == 12
    for _ in range(5):
        size.answered(size.size, 1.0)
    assert size.size == 23  # never back up to a size refused as too large


def test_concurrency_follows_the_hint_the_budget_and_throttling():
    limit = ConcurrencyLimit(8)
    limit.follow_hint("4")
    assert limit.limit == 4
    limit.follow_hint("not a number")
    limit.follow_hint("64")  # never above the configured maximum, and grown into step by step
    for _ in range(4 + 5 + 6 + 7 + 8):
        limit.answered()
    assert limit.limit == 8
    limit.throttled()
    assert limit.limit == 4
    limit.follow_budget("1")
    assert limit.limit == 1
    for _ in range(3):
        limit.answered()
    assert limit.limit == 3  # grows back one step per limit's worth of answers


def test_after_a_pause_one_request_goes_first():
    pacer = Pacer()
    pacer.pause(0.05)
    order: list[str] = []
    waited, probe = pacer.wait()
    assert probe and waited >= 0.04
    follower = threading.Thread(target=lambda: order.append(f"follower probe={pacer.wait()[1]}"))
    follower.start()
    time.sleep(0.1)
    order.append("first answered")
    pacer.answered(probe, throttled=False)
    follower.join()
    assert order == ["first answered", "follower probe=False"]
