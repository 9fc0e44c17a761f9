"""StoreWriter: creates an ActivationStore, appends rows and commits them, crash-safely.

Rows are (n, M, D) activations plus the (n,) per-row arrays of layout.ROW_ARRAYS; moments are
(count, mean (M, D), M2 (M, D)) float64 per source (moments.py).

Crash safety ("nothing half-written"): rows are written first; only when every write future has
resolved (the data is durable in the kvstore) is the Welford state written into the *other*
slot of `welford/`, and then `zarr.json` is replaced in one atomic kvstore write that raises
`num_rows` and flips the slot. A crash at any point leaves the previous `zarr.json` pointing at
rows and statistics that are complete; rows beyond `num_rows` are garbage that a resumed
extraction overwrites.

The commit-point write is looked up as `layout.write_group` at call time (so a test can make a
commit fail there).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorstore as ts

from jaxcoders.data import layout
from jaxcoders.data.layout import (ACT_DTYPES, FORMAT, FORMAT_VERSION, ROW_ARRAYS, ROW_CHUNK_MIN, TS_CONTEXT,
                                   StoreError, array_spec, default_chunk_rows, delete_store, normalize_url,
                                   read_group_metadata, store_exists, utc_now)
from jaxcoders.data.moments import load_moments, merge_moments, split_stats


class StoreWriter:
    """Appends rows to a store and commits them (see the module docstring for the protocol).

    Not thread-safe: one writer (thread) per store. The caller owns `metadata` (a dict it may
    update between commits, e.g. with a resume cursor); `commit()` writes it atomically.
    """

    def __init__(self, url: str, metadata: dict, arrays: dict, welford_arr, moments: list):
        self.url = normalize_url(url)
        self.metadata = metadata
        self._arrays = arrays
        self._welford = welford_arr
        self.moments = moments  # per source: (count, mean (M,D), M2 (M,D)) float64

    # -- creation / reopening ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        url: str,
        *,
        num_models: int,
        d_model: int,
        dtype: str,
        capacity: int,
        datasets: Sequence[str],
        sources: Sequence[dict],
        attrs: dict | None = None,
        chunk_rows: int | None = None,
        overwrite: bool = False,
    ) -> "StoreWriter":
        """Create an empty store with room for `capacity` rows.

        sources: dicts with at least `dataset_id` and `split`; `row_ranges`, `num_rows` and
        `num_sequences` are filled in here. zarr.json is written first (num_rows = 0), so a
        crash during creation leaves a store that `open_for_append` can finish creating.
        """
        url = normalize_url(url)
        if dtype not in ACT_DTYPES:
            raise StoreError(f"dtype must be one of bfloat16, float32; got {dtype!r}.")
        dtype = ACT_DTYPES[dtype]
        if store_exists(url):
            if not overwrite:
                raise StoreError(f"a store already exists at {url}; pass overwrite=True (--overwrite) to replace it.")
            delete_store(url)
        itemsize = 2 if dtype == "bfloat16" else 4
        chunk_rows = int(chunk_rows or default_chunk_rows(num_models, d_model, itemsize))
        if chunk_rows <= 0:
            raise StoreError(f"chunk_rows must be positive, got {chunk_rows}.")
        capacity = max(int(capacity), 1)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_models": int(num_models),
            "d_model": int(d_model),
            "dtype": dtype,
            "capacity": capacity,
            "chunk_rows": chunk_rows,
            "row_chunk_rows": max(ROW_CHUNK_MIN, chunk_rows),
            "num_rows": 0,
            "num_sequences": 0,
            "complete": False,
            "datasets": list(datasets),
            "sources": [],
            "welford": {"slot": 0, "std_ddof": 0},
            "created_at": utc_now(),
            "updated_at": utc_now(),
        }
        for s in sources:
            s = dict(s)
            s.setdefault("row_ranges", [])
            s.setdefault("num_rows", 0)
            s.setdefault("num_sequences", 0)
            s.setdefault("done", False)
            meta["sources"].append(s)
        meta.update(attrs or {})
        layout.write_group(url, meta)
        return cls._open_arrays(url, meta, create=True)

    @classmethod
    def open_for_append(cls, url: str) -> "StoreWriter":
        """Reopen an existing store (e.g. to resume an extraction) at its last commit."""
        meta = read_group_metadata(url)
        if meta is None:
            raise StoreError(f"no store at {normalize_url(url)} to reopen.")
        return cls._open_arrays(url, meta, create=True)

    @classmethod
    def _open_arrays(cls, url: str, meta: dict, create: bool) -> "StoreWriter":
        M, D, cap = meta["num_models"], meta["d_model"], meta["capacity"]
        S = max(1, len(meta["sources"]))
        specs = {"acts": array_spec(url, "acts", (cap, M, D), (meta["chunk_rows"], M, D), meta["dtype"], False)}
        for name, (_, zdt) in ROW_ARRAYS.items():
            specs[name] = array_spec(url, name, (cap,), (meta["row_chunk_rows"],), zdt, True)
        specs["welford"] = array_spec(url, "welford", (2, S, 2, M, D), (1, S, 2, M, D), "float64", False)
        arrays = {}
        for name, spec in specs.items():
            arrays[name] = _open_or_create(url, name, spec, create)
        welford = arrays.pop("welford")
        moments = load_moments(meta, welford, S, M, D)
        return cls(url, meta, arrays, welford, moments)

    # -- appending -----------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return int(self.metadata["num_rows"])

    def write_rows(self, start: int, acts_nMD: np.ndarray, **row_arrays: np.ndarray) -> None:
        """Write rows [start, start + n) of `acts` and the per-row arrays; blocks until durable.

        row_arrays: token_ids, sequence_ids, positions, dataset_ids, token_classes (each (n,));
        every one of them is required so that no row is left half-described.
        """
        n = int(acts_nMD.shape[0])
        if n == 0:
            return
        cap = self.metadata["capacity"]
        if start + n > cap:
            raise StoreError(f"writing rows [{start}, {start + n}) exceeds the store capacity {cap}.")
        missing = set(ROW_ARRAYS) - set(row_arrays)
        if missing:
            raise StoreError(f"write_rows needs all per-row arrays; missing {sorted(missing)}.")
        futs = [self._arrays["acts"][start:start + n].write(acts_nMD)]
        for name, (npdt, _) in ROW_ARRAYS.items():
            arr = np.asarray(row_arrays[name])
            if arr.shape != (n,):
                raise StoreError(f"{name} has shape {arr.shape}, expected ({n},).")
            futs.append(self._arrays[name][start:start + n].write(arr.astype(npdt, copy=False)))
        for f in futs:
            f.result()

    def add_moments(self, source_index: int, moments) -> None:
        """Merge (count, mean (M,D), M2 (M,D)) float64 moments of newly written rows of a source."""
        self.moments[source_index] = merge_moments(self.moments[source_index], moments)

    def commit(self) -> None:
        """Make everything written so far (rows, moments, metadata) the store's state, atomically."""
        slot = 1 - int(self.metadata["welford"]["slot"])
        S, M, D = len(self.moments), self.metadata["num_models"], self.metadata["d_model"]
        buf = np.zeros((1, S, 2, M, D), np.float64)
        counts = []
        for i, (n, mean, m2) in enumerate(self.moments):
            buf[0, i, 0], buf[0, i, 1] = mean, m2
            counts.append(int(n))
        self._welford[slot:slot + 1].write(buf).result()
        meta = dict(self.metadata, welford=dict(self.metadata["welford"], slot=slot, counts=counts),
                    updated_at=utc_now())
        layout.write_group(self.url, meta)
        self.metadata["welford"], self.metadata["updated_at"] = meta["welford"], meta["updated_at"]

    def finalize(self) -> None:
        """Mark the store complete: trim arrays to num_rows, write train mean/std, commit."""
        n = max(self.num_rows, 1)
        futs = []
        for name, arr in self._arrays.items():
            if arr.shape[0] != n:
                shape = [n] + list(arr.shape[1:])
                futs.append(arr.resize(exclusive_max=shape, resize_metadata_only=True, shrink_only=True))
        for f in futs:
            f.result()
        self.metadata["capacity"] = n
        M, D = self.metadata["num_models"], self.metadata["d_model"]
        stats = split_stats(self.metadata, self.moments, "train")
        if stats.count == 0:
            stats = split_stats(self.metadata, self.moments, None)
        for name, value in (("mean", stats.mean), ("std", stats.std)):
            spec = array_spec(self.url, name, (M, D), (M, D), "float64", False)
            arr = ts.open(spec, create=True, open=True, context=TS_CONTEXT).result()
            arr.write(value).result()
        self.metadata["complete"] = True
        self.commit()


def _open_or_create(url: str, name: str, spec: dict, create: bool):
    """Open an existing array (its first dimension may differ: trimmed by `finalize`) or create it."""
    want = spec["metadata"]
    try:
        arr = ts.open({"driver": "zarr3", "kvstore": spec["kvstore"]}, open=True, context=TS_CONTEXT).result()
    except ValueError as e:
        if "NOT_FOUND" not in str(e) or not create:
            raise StoreError(f"cannot open {normalize_url(url)}{name}/ ({str(e).splitlines()[0]}).") from e
        return ts.open(spec, create=True, open=True, context=TS_CONTEXT).result()
    got = arr.spec().to_json()["metadata"]
    same = (got["data_type"] == want["data_type"] and list(arr.shape[1:]) == want["shape"][1:]
            and got["chunk_grid"] == want["chunk_grid"])
    if not same:
        raise StoreError(
            f"{normalize_url(url)}{name}/ exists with a different dtype, shape or chunking than this store needs; "
            "delete it or pass --overwrite."
        )
    if arr.shape[0] < want["shape"][0]:  # trimmed by an interrupted finalize, then asked for more rows
        arr = arr.resize(exclusive_max=want["shape"], expand_only=True).result()
    return arr
