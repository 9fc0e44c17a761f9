"""Batch sources for the training loop besides the ActivationStore `Loader`: in-memory arrays,
several readers concatenated, and the rows of a global batch this process feeds.

A source yields this process's rows of each global batch (numpy `(B_local, M, D)`) and has
`state_dict()` / `load_state_dict()` for its cursor, so a resumed run continues the same sequence.
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from jaxcoders.training import sharding as shd


class ArrayBatches:
    """Resumable, shuffled batches from an in-memory (N, M, D) array.

    Each epoch is a fresh permutation (seeded by (seed, epoch)); the cursor is (epoch, position).
    With several processes, each yields only its `rows` slice of every global batch."""

    def __init__(self, acts_NMD, batch_size: int, *, seed: int = 0, rows: Optional[slice] = None,
                 shuffle: bool = True):
        self.acts = acts_NMD
        self.batch_size = batch_size
        self.seed = seed
        self.rows = rows or slice(0, batch_size)
        self.shuffle = shuffle
        n = len(acts_NMD)
        if n < batch_size:
            raise ValueError(f"{n} activation rows cannot fill one batch of {batch_size}")
        self.batches_per_epoch = n // batch_size
        self.epoch, self.position = 0, 0

    def _perm(self, epoch: int):
        if not self.shuffle:
            return np.arange(len(self.acts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.acts))

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        perm = self._perm(self.epoch)
        idx = perm[self.position * self.batch_size:(self.position + 1) * self.batch_size][self.rows]
        self.position += 1
        return np.asarray(self.acts[np.sort(idx)] if not self.shuffle else self.acts[idx], np.float32)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class ConcatSources:
    """Several data sources read as one: each yields part of this process's rows, concatenated in
    order. Used to decouple the data partitioning from the number of hosts: a store read by R
    logical readers gives the same global batches whether 1 process owns all R readers or R
    processes own one each (the pod rehearsal test relies on it)."""

    def __init__(self, sources):
        self.sources = list(sources)
        self._iters = None

    def __iter__(self):
        self._iters = [iter(s) for s in self.sources]
        return self

    def __next__(self):
        if self._iters is None:
            iter(self)
        parts = [np.asarray(next(it)) for it in self._iters]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def state_dict(self) -> dict:
        return {"sources": [s.state_dict() for s in self.sources]}

    def close(self) -> None:
        for s in self.sources:
            if hasattr(s, "close"):
                s.close()

    def load_state_dict(self, state: dict) -> None:
        states = state["sources"]
        if len(states) != len(self.sources):
            raise ValueError(f"the saved data cursor has {len(states)} readers, this run has {len(self.sources)}; "
                             "resume with the same --config.data.num_readers")
        for s, st in zip(self.sources, states):
            s.load_state_dict(st)
        self._iters = None


def local_rows(mesh, batch_size: int) -> slice:
    """The rows of a global (B, M, D) batch that this process's devices hold."""
    sharding = jax.sharding.NamedSharding(mesh, shd.batch_spec())
    idx = sharding.addressable_devices_indices_map((batch_size, 1, 1))
    starts = [s[0].start or 0 for s in idx.values()]
    stops = [s[0].stop if s[0].stop is not None else batch_size for s in idx.values()]
    return slice(min(starts), max(stops))
