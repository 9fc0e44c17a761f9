"""Rows of the activation source for the examples pass: `RowInfo` (per-row columns (N,) — token ids,
sequence ids, positions, dataset ids, token classes — from an ActivationStore or caller arrays, and
row reads (n, M, D)) and `sequence_batches`, which packs whole sequences, in row order, into batches
of at most B rows and G sequences and marks duplicate sequences."""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from jaxcoders.analysis import stream
from jaxcoders.analysis.examples.spec import ROW_COLUMNS


class RowInfo:
    """Per-row columns of a source: an ActivationStore (`read_column`) or arrays given by the caller.
    Missing columns: one sequence per row, token ids / classes unknown (-1)."""

    def __init__(self, acts, rows: Optional[dict] = None):
        self.acts = acts
        self.num_rows = stream.num_rows(acts)
        self.store = hasattr(acts, "read_column")
        self.arrays = {k: np.asarray(v) for k, v in (rows or {}).items() if v is not None}
        unknown = set(self.arrays) - set(ROW_COLUMNS)
        if unknown:
            raise ValueError(f"unknown per-row columns {sorted(unknown)}; use {ROW_COLUMNS}")
        for k, v in self.arrays.items():
            if len(v) < self.num_rows:
                raise ValueError(f"per-row column {k!r} has {len(v)} rows but the activations have {self.num_rows}")

    def has(self, name: str) -> bool:
        return self.store or name in self.arrays

    def get(self, name: str, rows) -> np.ndarray:
        """Column values at `rows` (a slice or an int array)."""
        if name in self.arrays:
            return self.arrays[name][rows]
        if self.store:
            return np.asarray(self.acts.read_column(name, rows))
        n = (rows.stop - rows.start) if isinstance(rows, slice) else len(rows)
        if name == "sequence_ids":
            return np.arange(rows.start, rows.stop) if isinstance(rows, slice) else np.asarray(rows)
        return np.full(n, -1, np.int64)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Activations of sorted row indices (n, M, D)."""
        a = self.acts
        if hasattr(a, "read") and not isinstance(a, np.ndarray):
            return np.asarray(a.read(rows))
        return np.asarray(a[rows])

    def read(self, lo: int, hi: int) -> np.ndarray:
        a = self.acts
        if hasattr(a, "read") and not isinstance(a, np.ndarray):
            return np.asarray(a.read(slice(lo, hi)))
        return np.asarray(a[lo:hi])


def _mark_duplicates(tok, bounds, pos: int, fresh: np.ndarray, seen: set, counters: dict) -> None:
    """Count the sequences [bounds[i], bounds[i + 1]) of a block starting at row `pos`; with token ids
    `tok` (of the block), zero `fresh` on sequences whose ids repeat an earlier sequence's."""
    for a, b in zip(bounds[:-1], bounds[1:]):
        counters["sequences"] += 1
        if tok is not None:
            content = np.ascontiguousarray(tok[a - pos:b - pos], np.int64).tobytes()
            h = hashlib.blake2b(content, digest_size=16).digest()
            if h in seen:
                fresh[a - pos:b - pos] = 0.0
                counters["duplicates"] += 1
            else:
                seen.add(h)


def sequence_batches(info: RowInfo, B: int, G: int, stop: int, dedup: bool, counters: dict, block: int):
    """Whole sequences packed into batches of <= B rows and <= G sequences, in row order: dicts with
    x, row0, n, seg (n,), seg_start (G,), fresh (n,), cls (n,). Duplicate sequences: fresh 0."""
    seen: set = set()
    pos = 0
    check_dups = dedup and info.has("token_ids")
    while pos < stop:
        hi = min(stop, pos + block)
        ext = info.get("sequence_ids", slice(pos, min(stop, hi + 1)))  # one row of look-ahead
        seq = ext[: hi - pos]
        starts = pos + np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
        end = hi
        if len(ext) > len(seq) and ext[-1] == seq[-1]:  # the last sequence continues past the block
            if len(starts) == 1:
                raise ValueError(f"the sequence starting at row {pos} is longer than {hi - pos} rows and does not fit "
                                 f"in a batch: raise --batch_size")
            end = int(starts[-1])
        bounds = np.r_[starts[starts < end], end].astype(np.int64)
        lens = np.diff(bounds)
        if lens.max() > B:
            raise ValueError(f"a sequence of {int(lens.max())} rows (starting at row {int(bounds[np.argmax(lens)])}) "
                             f"does not fit in a batch: raise --batch_size to at least {int(lens.max())}")
        tok = info.get("token_ids", slice(pos, end)) if check_dups else None
        cls = info.get("token_classes", slice(pos, end)).astype(np.int32) if info.has("token_classes") else None
        fresh = np.ones(end - pos, np.float32)
        _mark_duplicates(tok, bounds, pos, fresh, seen, counters)
        i = 0
        nseq = len(bounds) - 1
        while i < nseq:
            j = i + 1
            while j < nseq and j - i < G and bounds[j + 1] - bounds[i] <= B:
                j += 1
            a, b = int(bounds[i]), int(bounds[j])
            seg = np.repeat(np.arange(j - i, dtype=np.int32), lens[i:j])
            seg_start = np.full(G, -1, np.int64)
            seg_start[: j - i] = bounds[i:j]
            yield {"x": info.read(a, b), "row0": a, "n": b - a, "seg": seg, "seg_start": seg_start,
                   "fresh": fresh[a - pos:b - pos], "cls": None if cls is None else cls[a - pos:b - pos]}
            i = j
        pos = end
