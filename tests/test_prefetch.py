"""jaxcoders.data.prefetch: order, errors, early close and abandoned consumers (no jax needed)."""
import gc
import threading
import time

import pytest

from jaxcoders.data.prefetch import Prefetcher, prefetch_iter


def _counting(n, produced, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise KeyError(f"item {i}")
        produced.append(i)
        yield i


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_same_items_in_order(depth):
    assert list(prefetch_iter(iter(range(50)), depth)) == list(range(50))
    if depth:
        assert list(Prefetcher(range(50), depth)) == list(range(50))


def test_items_are_produced_on_the_thread_ahead_of_the_consumer():
    threads, produced = [], []

    def gen():
        for i in range(10):
            threads.append(threading.current_thread())
            produced.append(i)
            yield i

    it = iter(Prefetcher(gen(), depth=3))
    assert next(it) == 0
    deadline = time.time() + 5
    while len(produced) < 5 and time.time() < deadline:  # 3 queued + the one handed over + one in put
        time.sleep(0.01)
    assert len(produced) == 5 and threading.current_thread() not in threads
    assert list(it) == list(range(1, 10))


def test_error_is_reraised_after_the_items_before_it():
    got = []
    with pytest.raises(KeyError, match="item 3"):
        for x in prefetch_iter(_counting(10, [], fail_at=3), 2):
            got.append(x)
    assert got == [0, 1, 2]


def test_close_stops_the_producer_without_hanging():
    produced = []
    p = Prefetcher(_counting(10**6, produced), depth=2)
    it = iter(p)
    assert next(it) == 0
    t0 = time.time()
    p.close(wait=True)
    assert time.time() - t0 < 2 and not p._thread.is_alive()
    n = len(produced)
    assert list(it) == []  # the consumer's iteration ends
    time.sleep(0.2)
    assert len(produced) == n and n < 10


def test_abandoned_consumer_stops_the_producer():
    produced = []
    gen = prefetch_iter(_counting(10**6, produced), 2)
    assert next(gen) == 0
    del gen
    gc.collect()
    time.sleep(0.5)  # the producer, blocked on a full queue, sees the flag within 0.1 s
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n < 10
