"""Background prefetch: run an iterator ahead of its consumer on a daemon thread (the one helper
for the whole package: the batch Loader, the extraction's tokenizer rounds, the analysis passes).

    ahead = Prefetcher(batches(), depth=2)     # the thread starts here
    for item in ahead:                         # the same items, in the same order
        ...
    ahead.close()                              # stop early (idempotent); close(wait=True) also joins

    for item in prefetch_iter(batches(), 2):   # generator form; depth <= 0 runs inline
        ...

Semantics:
* Order: one producer thread drains `items` in order into a FIFO queue of at most `depth` items
  (at least 1), so the consumer sees exactly the items of `items`, in order. Whatever work
  producing an item does (reading a store, tokenizing, a device transfer done inside the
  generator) runs on the thread, up to `depth` items ahead, plus the one it is producing.
* Errors: an exception raised by `items` (any BaseException) ends the producer and is re-raised
  in the consumer at its place in the order, after the items produced before it.
* Close: `close()` tells the producer to stop (it checks between items and while waiting for
  room in the queue, every 0.1 s), and ends the consumer's iteration; it never blocks.
  `close(wait=True)` also waits until the thread has exited (after the item it is producing),
  so that no other thread touches the source afterwards; called from the producer thread itself
  (e.g. by a finalizer) it does not wait. The source iterator is left as it is, not closed.
* Abandoned consumer: when the consumer's iteration ends for any reason (exhausted, an error,
  `break` followed by the iterator being dropped, `GeneratorExit`), the producer is told to stop,
  as by `close()`; a producer never blocks forever on a full queue nobody reads.
"""
from __future__ import annotations

import queue
import threading
from typing import Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")

_POLL_S = 0.1  # how often a waiting producer / consumer looks at the stop flag


class _End:
    """Queue marker: the source is exhausted."""


class _Failure:
    """Queue marker: the source raised `error`."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate `items` on a daemon thread, up to `depth` items ahead (see the module docstring)."""

    def __init__(self, items: Iterable[T], depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), daemon=True)
        self._thread.start()

    def _produce(self, items: Iterable[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(e))

    def _put(self, item) -> bool:
        """Queue `item`, waiting for room; False (item dropped) once the consumer has closed."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self) -> Iterator[T]:
        try:
            while not self._stop.is_set():
                try:
                    item = self._q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.close()

    def close(self, wait: bool = False) -> None:
        """Stop the producer; with wait=True also wait for its thread to exit (see the module docstring)."""
        self._stop.set()
        if not wait or threading.current_thread() is self._thread:
            return
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)  # free room so that a producer blocked in put sees the flag at once
            except queue.Empty:
                pass
        self._thread.join()


def prefetch_iter(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of `items`, produced by a background thread up to `depth` items ahead (depth <= 0:
    inline, no thread). The thread starts at the first `next()`; an exception in the producer is
    re-raised here; closing (or dropping) this generator stops the producer."""
    if depth <= 0:
        yield from items
        return
    yield from Prefetcher(items, depth)
