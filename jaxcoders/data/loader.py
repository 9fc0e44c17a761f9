"""Batches of paired activations from an ActivationStore: shuffled, dataset-mixed, per-process,
prefetched, resumable.

    loader = Loader(store, batch_size=2048, seed=0)           # global batch size
    for x_BMD in loader:                                      # jax arrays (B_local, M, D)
        ...
        ckpt["loader"] = loader.state_dict()                  # JSON-able cursor
    loader.load_state_dict(ckpt["loader"])                    # continues with the very same batches

How rows are ordered (all of it a pure function of seed, epoch and position, so the cursor is just
(epoch, offset) per stream):
* Streams. `mix="even"` (default): one stream per dataset of the split and an equal share of every
  batch from each (the paper interleaves pretraining and chat tokens evenly); a list of weights
  gives other shares; `mix="concat"`: one stream over all rows of the split. Each stream runs
  through its own epochs: within an epoch every row of the stream is visited exactly once.
* Windows. A stream's rows are cut into windows of `window_rows` consecutive rows, aligned to the
  store's chunks (default: one chunk, ≈ 8 MiB). Every epoch permutes the windows (seeded) and deals
  them round-robin to the processes: a process reads only its own windows (its rows of each global
  batch), and the processes together cover every row once per epoch.
* Shuffle buffer. A process's windows are grouped into blocks of `shuffle_buffer_rows` rows; a block
  is read with large sequential reads and its rows are permuted (seeded) in memory. Memory is
  bounded by two blocks per stream (the one in use, the next one being prefetched).
* Prefetch. Block reads are issued asynchronously one block ahead; a background thread
  (prefetch.py) assembles `prefetch` batches ahead and moves them to the device (optionally
  normalizing them).

Local batches: each process yields batch_size / process_count rows, the same share of every
dataset; with `sharding=` the loader returns the global `jax.Array` built from every process's
local rows (`jax.make_array_from_process_local_data`). Normalization (`normalize=True`) follows
docs/method.md §5 with the store's train statistics: `(x − mean)·s`, `s = target_rms / sqrt(Σ_{m,d}
std² + 1e-8)`; output float32.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from jaxcoders.data.prefetch import Prefetcher
from jaxcoders.data.store import ActivationStore

STATE_VERSION = 1


class LoaderError(ValueError):
    """Bad loader arguments or a cursor that does not belong to this loader."""


class _Stream:
    """One dataset's rows for one process: epochs of permuted windows, read block by block."""

    def __init__(self, store: ActivationStore, ranges: list[tuple[int, int]], stream_id: int, *, seed: int,
                 shuffle: bool, window_rows: int, buffer_rows: int, process_index: int, process_count: int):
        self.store = store
        self.stream_id = stream_id
        self.seed = seed
        self.shuffle = shuffle
        self.p, self.P = process_index, process_count
        wins = []
        for a, b in ranges:
            s = a
            while s < b:
                e = min(b, (s // window_rows + 1) * window_rows)
                wins.append((s, e))
                s = e
        if len(wins) < process_count:
            raise LoaderError(
                f"a stream of {sum(b - a for a, b in ranges)} rows has only {len(wins)} windows of ≤ {window_rows} rows "
                f"for {process_count} processes; lower window_rows (or use fewer processes)."
            )
        self.windows = np.asarray(wins, np.int64).reshape(-1, 2)
        self.num_rows = int(sum(b - a for a, b in ranges))
        self.buffer_rows = max(buffer_rows, window_rows)
        self._plans: dict[int, dict] = {}
        self._blocks: dict[tuple[int, int], Any] = {}
        self._perm_cache: tuple = (None, None)
        self.epoch, self.offset = 0, 0

    # -- epoch plans -----------------------------------------------------------------------------

    def plan(self, epoch: int) -> dict:
        """This process's windows for `epoch`, grouped into blocks; cached for the current/next epoch."""
        if epoch not in self._plans:
            n = len(self.windows)
            order = (np.random.default_rng([self.seed, self.stream_id, epoch, 0]).permutation(n)
                     if self.shuffle else np.arange(n))
            mine = self.windows[order[self.p::self.P]]
            sizes = mine[:, 1] - mine[:, 0]
            blocks, cur, rows = [], [], 0
            for w, sz in zip(mine, sizes):
                cur.append(w)
                rows += int(sz)
                if rows >= self.buffer_rows:
                    blocks.append(np.asarray(cur))
                    cur, rows = [], 0
            if cur:
                blocks.append(np.asarray(cur))
            block_rows = np.asarray([int((b[:, 1] - b[:, 0]).sum()) for b in blocks], np.int64)
            starts = np.r_[0, np.cumsum(block_rows)].astype(np.int64)
            self._plans[epoch] = {"blocks": blocks, "starts": starts, "length": int(starts[-1])}
            for e in [e for e in self._plans if e < epoch - 1]:
                del self._plans[e]
        return self._plans[epoch]

    def epoch_length(self, epoch: int) -> int:
        return self.plan(epoch)["length"]

    def _perm(self, epoch: int, b: int, n: int) -> np.ndarray:
        key = (epoch, b)
        if self._perm_cache[0] != key:
            perm = (np.random.default_rng([self.seed, self.stream_id, epoch, 1, self.p, b]).permutation(n)
                    if self.shuffle else np.arange(n))
            self._perm_cache = (key, perm)
        return self._perm_cache[1]

    # -- reading -------------------------------------------------------------------------------

    def _request(self, epoch: int, b: int):
        key = (epoch, b)
        if key not in self._blocks:
            wins = self.plan(epoch)["blocks"][b]
            self._blocks[key] = [self.store.read_async(slice(int(s), int(e))) for s, e in wins]
        return key

    def _block(self, epoch: int, b: int) -> np.ndarray:
        key = self._request(epoch, b)
        val = self._blocks[key]
        if isinstance(val, list):
            parts = [f.result() for f in val]
            val = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self._blocks[key] = val
        return val

    def _rows(self, epoch: int, b: int, idx: np.ndarray) -> np.ndarray:
        """Store row numbers of positions `idx` (in block order) of block b."""
        wins = self.plan(epoch)["blocks"][b]
        sizes = wins[:, 1] - wins[:, 0]
        ends = np.cumsum(sizes)
        w = np.searchsorted(ends, idx, side="right")
        return wins[w, 0] + idx - (ends[w] - sizes[w])

    def _next_block(self, epoch: int, b: int) -> tuple[int, int]:
        if b + 1 < len(self.plan(epoch)["blocks"]):
            return epoch, b + 1
        return epoch + 1, 0

    def synced_length(self, epoch: int) -> int:
        """Rows of `epoch` that every process has (the shortest process's epoch length)."""
        if self.P == 1:
            return self.epoch_length(epoch)
        n = len(self.windows)
        order = (np.random.default_rng([self.seed, self.stream_id, epoch, 0]).permutation(n)
                 if self.shuffle else np.arange(n))
        sizes = (self.windows[:, 1] - self.windows[:, 0])[order]
        return int(min(sizes[p::self.P].sum() for p in range(self.P)))

    def take(self, n: int, want_rows: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The next n rows of this stream ((n, M, D), store row numbers); advances the cursor."""
        out, rows = [], []
        while n > 0:
            pl = self.plan(self.epoch)
            if pl["length"] == 0:
                raise LoaderError("a process has no rows in this stream; lower window_rows.")
            b = int(np.searchsorted(pl["starts"], self.offset, side="right")) - 1
            in_block = self.offset - int(pl["starts"][b])
            size = int(pl["starts"][b + 1] - pl["starts"][b])
            k = min(n, size - in_block)
            cur = (self.epoch, b)
            data = self._block(*cur)
            nxt = self._next_block(*cur)
            for key in [key for key in self._blocks if key not in (cur, nxt)]:
                del self._blocks[key]  # memory: the block in use and the next one only
            self._request(*nxt)  # prefetch the next block while this one is consumed
            idx = self._perm(self.epoch, b, size)[in_block:in_block + k]
            out.append(data[idx])
            if want_rows:
                rows.append(self._rows(self.epoch, b, idx))
            n -= k
            self.offset += k
            if self.offset >= pl["length"]:
                self.epoch, self.offset = self.epoch + 1, 0
        x = out[0] if len(out) == 1 else np.concatenate(out)
        r = (rows[0] if len(rows) == 1 else np.concatenate(rows)) if want_rows else None
        return x, r


class Loader:
    """Iterable of activation batches `(B_local, M, D)` from an ActivationStore (see module docstring).

    Args:
      store: an ActivationStore or its URL.
      batch_size: global rows per batch (all processes together); must divide by process_count.
      seed: shuffling seed.
      split: which split's rows ("train", "validation", ...).
      datasets: dataset ids to use (default: every dataset present in the split).
      mix: "even" (equal rows per dataset per batch), a sequence of weights (one per dataset), or
        "concat" (one stream over all rows, no mixing; e.g. for evaluation).
      shuffle: False reads windows and rows in store order (evaluation).
      window_rows: rows per window (rounded up to the store's chunk size; default one chunk).
      shuffle_buffer_rows: rows shuffled together in memory per stream (≥ one window).
      num_epochs: None = endless; else stop when every stream has finished this many epochs.
      drop_remainder: with num_epochs and a single stream, whether the last partial batch is dropped.
      normalize / target_rms: docs/method.md §5 normalization with the store's train statistics.
      dtype: output dtype (default: the store's dtype, float32 when normalizing).
      prefetch: batches prepared ahead by a background thread (0 = synchronous).
      process_index / process_count: this process and how many read the store (default: jax's).
      sharding: if given, yield global jax.Arrays of shape (batch_size, M, D) with this sharding.
      return_rows: also yield each batch's store row numbers (numpy int64, local rows).
    """

    def __init__(self, store: ActivationStore | str, batch_size: int, *, seed: int = 0, split: str = "train",
                 datasets: Sequence[int] | None = None, mix: str | Sequence[float] = "even", shuffle: bool = True,
                 window_rows: int | None = None, shuffle_buffer_rows: int = 65536, num_epochs: int | None = None,
                 drop_remainder: bool = True, normalize: bool = False, target_rms: float = 1.0, dtype=None,
                 prefetch: int = 2, process_index: int | None = None, process_count: int | None = None,
                 sharding=None, return_rows: bool = False):
        self.store = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise LoaderError(f"process_index must be in [0, {process_count}), got {process_index}.")
        if batch_size <= 0 or batch_size % process_count:
            raise LoaderError(f"batch_size={batch_size} must be a positive multiple of process_count={process_count}.")
        self.batch_size = int(batch_size)
        self.local_batch_size = self.batch_size // process_count
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.seed, self.split, self.shuffle = int(seed), split, bool(shuffle)
        self.num_epochs, self.drop_remainder = num_epochs, bool(drop_remainder)
        self.prefetch, self.sharding, self.return_rows = int(prefetch), sharding, bool(return_rows)

        ranges = self.store.row_ranges(split=split)
        if not ranges:
            raise LoaderError(
                f"the store {self.store.url} has no committed rows in split {split!r} (splits: {self.store.splits})."
            )
        ids = sorted({d for _, _, d in ranges}) if datasets is None else [int(d) for d in datasets]
        missing = [d for d in ids if not any(dd == d for _, _, dd in ranges)]
        if missing:
            raise LoaderError(f"datasets {missing} have no rows in split {split!r} of {self.store.url}.")
        chunk = self.store.chunk_rows
        wr = chunk if window_rows is None else int(-(-int(window_rows) // chunk) * chunk)
        self.window_rows = wr
        if isinstance(mix, str) and mix == "concat":
            groups = [[(a, b) for a, b, d in ranges if d in ids]]
            weights = [1.0]
        else:
            groups = [[(a, b) for a, b, dd in ranges if dd == d] for d in ids]
            if isinstance(mix, str):
                if mix != "even":
                    raise LoaderError(f"mix must be 'even', 'concat' or a list of weights, got {mix!r}.")
                weights = [1.0] * len(ids)
            else:
                weights = [float(w) for w in mix]
                if len(weights) != len(ids) or min(weights) < 0 or sum(weights) <= 0:
                    raise LoaderError(f"mix weights {list(mix)} must be {len(ids)} non-negative numbers (datasets {ids}).")
        self.mix_name = mix if isinstance(mix, str) else [float(w) for w in mix]
        self.dataset_ids = ids
        self.counts = _shares(self.local_batch_size, weights)
        if min(self.counts) == 0:
            raise LoaderError(f"local batch size {self.local_batch_size} is too small to give every dataset rows "
                              f"(shares {self.counts}); raise batch_size.")
        self.streams = [
            _Stream(self.store, g, i, seed=self.seed, shuffle=self.shuffle, window_rows=wr,
                    buffer_rows=int(shuffle_buffer_rows), process_index=self.process_index,
                    process_count=self.process_count)
            for i, g in enumerate(groups)
        ]
        if drop_remainder:  # a batch never repeats rows: every stream fills its share of one batch
            for i, (st, share) in enumerate(zip(self.streams, self.counts)):
                if st.num_rows < share * self.process_count:
                    what = f"dataset {ids[i]} ({self.store.datasets[ids[i]]})" if len(self.streams) > 1 else "the store"
                    raise LoaderError(
                        f"{what} has {st.num_rows} rows in split {split!r}, fewer than its "
                        f"{share * self.process_count} rows of one batch of {self.batch_size} (batches would repeat "
                        f"rows{' or be empty' if num_epochs is not None else ''}); lower batch_size, or extract more "
                        "tokens")
        if num_epochs is not None and (len(self.streams) > 1 or self.process_count > 1) and not drop_remainder:
            raise LoaderError("drop_remainder=False needs a single stream (mix='concat') and one process.")
        self._step = 0
        self._positions = [(0, 0)] * len(self.streams)

        self.normalize = bool(normalize)
        self._norm = None
        if normalize:
            st = self.store.stats
            if st.count == 0:
                raise LoaderError(f"normalize=True needs statistics but {self.store.url} has none.")
            scale = float(target_rms) / float(np.sqrt((st.std.astype(np.float64) ** 2).sum() + 1e-8))
            self._norm = {"mean_MD": st.mean.astype(np.float32), "scale": scale}
        self.dtype = np.dtype(dtype) if dtype is not None else (np.dtype(np.float32) if normalize else self.store.dtype)
        self._iter_gen = None
        self._fingerprint = {
            "store": self.store.url, "split": split, "datasets": ids, "mix": self.mix_name, "seed": self.seed,
            "batch_size": self.batch_size, "process_count": self.process_count, "process_index": self.process_index,
            "window_rows": wr, "shuffle_buffer_rows": int(shuffle_buffer_rows), "shuffle": self.shuffle,
            "rows": [s.num_rows for s in self.streams],
        }

    # -- cursor --------------------------------------------------------------------------------

    @property
    def normalization(self) -> dict | None:
        """{"mean_MD": float32 (M, D), "scale": float} when normalize=True (to store with a checkpoint)."""
        return None if self._norm is None else dict(self._norm)

    @property
    def step(self) -> int:
        return self._step

    def state_dict(self) -> dict:
        """JSON-able cursor after the last batch this loader yielded."""
        return {"version": STATE_VERSION, "step": self._step,
                "streams": [list(p) for p in self._positions], "fingerprint": dict(self._fingerprint)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a cursor saved by `state_dict()` of an identically configured loader."""
        if state.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state version {state.get('version')} is not {STATE_VERSION}.")
        fp = state.get("fingerprint", {})
        diff = [k for k in self._fingerprint if fp.get(k) != self._fingerprint[k]]
        if diff:
            raise LoaderError(
                "the saved loader state belongs to a differently configured loader ("
                + ", ".join(f"{k}: saved {fp.get(k)!r} vs now {self._fingerprint[k]!r}" for k in diff[:3])
                + "); resume with the same store, split, seed, batch size and process layout."
            )
        self.close()
        self._step = int(state["step"])
        self._positions = [tuple(int(v) for v in p) for p in state["streams"]]

    @property
    def steps_per_epoch(self) -> int:
        """Batches in which the largest stream makes one pass (epoch 0, this process)."""
        return max(-(-s.epoch_length(0) // c) for s, c in zip(self.streams, self.counts))

    # -- iteration -----------------------------------------------------------------------------

    def _batches(self, step: int, positions) -> Iterator[tuple[np.ndarray, np.ndarray | None, int, list]]:
        for s, (e, o) in zip(self.streams, positions):
            s.epoch, s.offset = e, o
        single = len(self.streams) == 1
        while True:
            counts = list(self.counts)
            if self.num_epochs is not None:
                if all(s.epoch >= self.num_epochs for s in self.streams):
                    return
                if single:
                    s = self.streams[0]
                    left = s.synced_length(s.epoch) - s.offset
                    if left < counts[0]:  # the tail of an epoch
                        if self.drop_remainder or left <= 0:
                            s.epoch, s.offset = s.epoch + 1, 0
                            continue
                        counts = [left]
            xs, rows = [], []
            for s, c in zip(self.streams, counts):
                x, r = s.take(c, self.return_rows)
                xs.append(x)
                rows.append(r)
            x = xs[0] if len(xs) == 1 else np.concatenate(xs)
            r = None
            if self.return_rows:
                r = rows[0] if len(rows) == 1 else np.concatenate(rows)
            step += 1
            yield x, r, step, [(s.epoch, s.offset) for s in self.streams]

    def _to_device(self, x: np.ndarray):
        import jax

        if self._norm is not None:
            x = (x.astype(np.float32) - self._norm["mean_MD"]) * np.float32(self._norm["scale"])
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if self.sharding is not None:
            shape = (x.shape[0] * self.process_count,) + x.shape[1:]
            return jax.make_array_from_process_local_data(self.sharding, x, shape)
        return jax.device_put(x)

    def __iter__(self):
        self.close()
        gen = self._batches(self._step, list(self._positions))

        def produce():
            for x, r, step, pos in gen:
                yield self._to_device(x), r, step, pos

        src = produce() if self.prefetch <= 0 else Prefetcher(produce(), self.prefetch)
        self._iter_gen = src
        return self._consume(src)

    def _consume(self, src):
        for xd, r, step, pos in src:
            self._step, self._positions = step, pos
            yield (xd, r) if self.return_rows else xd

    def __next__(self):
        raise TypeError("Loader is iterable, not an iterator: use `for x in loader` or `it = iter(loader)`.")

    def close(self) -> None:
        """Stop the prefetch thread and wait for it, so that no other thread touches the streams
        afterwards (iteration later restarts from the cursor)."""
        if isinstance(self._iter_gen, Prefetcher):
            self._iter_gen.close(wait=True)
        self._iter_gen = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"Loader({self.store.url!r}, batch_size={self.batch_size}, split={self.split!r}, "
                f"datasets={self.dataset_ids}, shares={self.counts}, step={self._step})")


def _shares(n: int, weights: Sequence[float]) -> list[int]:
    """Split n rows by weights (largest remainder; deterministic)."""
    w = np.asarray(weights, np.float64) / float(np.sum(weights))
    raw = w * n
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: n - int(out.sum())]:
        out[i] += 1
    return [int(v) for v in out]
