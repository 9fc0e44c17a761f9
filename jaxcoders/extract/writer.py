"""The extraction's writer thread: buffered, chunk-aligned writes and crash-safe commits (no torch)."""
from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np

from jaxcoders.data import store as store_lib
from jaxcoders.data.store import StoreWriter
from jaxcoders.extract.models import first_line

_TEST_KILL_ENV = "JAXCODERS_EXTRACT_TEST_KILL"  # tests: "write:N" / "commit:N" → os._exit after the Nth


class ExtractionError(RuntimeError):
    """A failure during extraction (I/O, ...) after which the store is still at its last commit."""


class StoreFeeder:
    """Owns the StoreWriter in a thread: buffer rows → write → merge moments → update metadata → commit.

    Rows are written in few large, chunk-aligned writes: batches are buffered until about
    `flush_chunks` chunks are pending (or `commit_interval_s` has passed, or a source ends), then
    written in one write that starts at the beginning of the last, partially filled chunk (kept in
    memory, so no chunk is ever read back to be modified) and committed once. Each commit ends at
    a batch boundary with that batch's cursor; a crash loses at most the uncommitted buffer, which
    the rerun recomputes bit for bit.
    """

    def __init__(self, writer: StoreWriter, max_items: int = 3, flush_chunks: int = 8,
                 commit_interval_s: float = 10.0):
        self.w = writer
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(maxsize=max(2, max_items))
        kill = os.environ.get(_TEST_KILL_ENV, "")
        self._kill = (kill.split(":")[0], int(kill.split(":")[1])) if ":" in kill else None
        self._n = {"write": 0, "commit": 0}
        self._chunk = int(writer.metadata["chunk_rows"])
        self._flush_rows = flush_chunks * self._chunk
        self._interval = commit_interval_s
        self._pending: list[dict] = []
        self._last_commit = time.monotonic()
        self._head = self._read_head()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _read_head(self):
        """(start, acts, rows) of the committed rows of the last partial chunk (resume), or None."""
        n = self.w.num_rows
        cs = n // self._chunk * self._chunk
        if n == cs:
            return None
        st = store_lib.ActivationStore(self.w.url, self.w.metadata)
        return cs, st.read(slice(cs, n)), {k: st.read_column(k, slice(cs, n)) for k in store_lib.ROW_ARRAYS}

    def put(self, item) -> None:
        while True:
            self.check()
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                pass

    def drain(self) -> None:
        while self._q.unfinished_tasks:
            self.check()
            time.sleep(0.005)
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop after committing what is buffered (e.g. on Ctrl-C), unless writing already failed."""
        self._q.put(None)
        self._t.join()

    def _maybe_kill(self, what: str) -> None:
        self._n[what] += 1
        if self._kill and self._kill == (what, self._n[what]):
            os._exit(137)  # simulate `kill -9` at this exact point (tests only)

    def _due(self) -> bool:
        if any("acts" not in it for it in self._pending):  # a source ended
            return True
        rows = sum(len(it["acts"]) for it in self._pending)
        return rows >= self._flush_rows or time.monotonic() - self._last_commit >= self._interval

    def _run(self):
        stop = False
        while not stop:
            items = [self._q.get()]
            while True:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            self._pending.extend(it for it in items if it is not None)
            try:
                if self.error is None and self._pending and (stop or self._due()):
                    self._flush()
            except BaseException as e:  # noqa: BLE001 - forwarded to the main thread
                self.error = ExtractionError(
                    f"writing to --out={self.w.url} failed ({first_line(e)}); the store keeps its last commit "
                    f"({self.w.num_rows} rows): fix the cause (e.g. free disk space) and rerun the same command "
                    "to continue."
                )
                self.error.__cause__ = e
            finally:
                for _ in items:
                    self._q.task_done()

    def _flush(self) -> None:
        meta = self.w.metadata
        items, self._pending = self._pending, []
        rows = [it for it in items if "acts" in it]
        if rows:
            parts = ([(self._head[1], self._head[2])] if self._head is not None else []) + \
                [(it["acts"], it["rows"]) for it in rows]
            start = self._head[0] if self._head is not None else rows[0]["start"]
            expect = start
            for part_acts, _ in parts:  # contiguous, starting at the last partial chunk
                expect += len(part_acts)
            assert expect == rows[-1]["start"] + len(rows[-1]["acts"]), "rows must be appended contiguously"
            cat = (lambda xs: xs[0] if len(xs) == 1 else np.concatenate(xs))
            acts = cat([a for a, _ in parts])
            cols = {k: cat([np.asarray(r[k]) for _, r in parts]) for k in store_lib.ROW_ARRAYS}
            self.w.write_rows(start, acts, **cols)
            self._maybe_kill("write")
        for it in items:
            src = meta["sources"][it["source"]]
            src.update(it["update"])
            if "acts" in it:
                self.w.add_moments(it["source"], it["moments"])
                meta["num_rows"] = it["start"] + len(it["acts"])
                meta["num_sequences"] += it["n_seqs"]
                src["num_rows"] += len(it["acts"])
                src["num_sequences"] += it["n_seqs"]
                src["row_ranges"] = [[src["row_start"], src["row_start"] + src["num_rows"]]]
        self.w.commit()
        self._last_commit = time.monotonic()
        self._maybe_kill("commit")
        if rows:
            end = start + len(acts)
            cs = end // self._chunk * self._chunk
            self._head = None if cs == end else (cs, acts[cs - start:], {k: v[cs - start:] for k, v in cols.items()})
