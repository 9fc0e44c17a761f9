"""ActivationStore: read access to paired residual-stream activations of M models, stored as
tensorstore zarr3 arrays (format: layout.py; writing: writer.py; statistics: moments.py).

This module is the store's public entry point: it re-exports the names of those modules that
callers use (`StoreWriter`, `StoreError`, `TokenClass`, `Stats`, URL and metadata helpers,
moments), so `from jaxcoders.data.store import ...` keeps working.

Reading::

    store = ActivationStore.open("gs://bucket/acts/gemma2-l13")
    x_nMD = store.read(slice(0, 4096))     # numpy (n, M, D) in the stored dtype
    x_nMD = store[[5, 3, 9]]               # any row indices, returned in the given order
    store.token_ids, store.dataset_ids     # numpy (N,)
    store.stats.mean, store.stats.std      # float64 (M, D), train split
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from jaxcoders.data.layout import (  # noqa: F401 - re-exported: the store's API in one place
    ACT_DTYPES, FORMAT, FORMAT_VERSION, ROW_ARRAYS, StoreError, TokenClass, default_chunk_rows, delete_store,
    list_keys, local_path, lock_location, normalize_url, np_dtype, open_array, read_group_metadata, store_exists)
from jaxcoders.data.moments import (  # noqa: F401 - re-exported
    Stats, batch_moments, load_moments, merge_moments, moments_to_stats, split_stats)
from jaxcoders.data.writer import StoreWriter

class ActivationStore:
    """Read access to a store written by the extraction or by `create_from_arrays`.

    Only committed rows (`num_rows`) are visible, so a store can be read while an extraction is
    still appending to it.
    """

    def __init__(self, url: str, metadata: dict):
        self.url = normalize_url(url)
        self._meta = metadata
        self._arrays: dict = {}
        self._cache: dict = {}

    @classmethod
    def open(cls, url: str) -> "ActivationStore":
        meta = read_group_metadata(url)
        if meta is None:
            raise StoreError(
                f"no ActivationStore at {normalize_url(url)} (no zarr.json); create one with "
                f"experiments/extract_activations.py --out={url}."
            )
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"the store at {normalize_url(url)} has format version {meta['format_version']}, newer than this "
                f"jaxcoders ({FORMAT_VERSION}); upgrade jaxcoders."
            )
        return cls(url, meta)

    @classmethod
    def create_from_arrays(
        cls,
        url: str,
        acts_NMD: np.ndarray,
        *,
        token_ids: np.ndarray | None = None,
        dataset_ids: np.ndarray | None = None,
        dataset_names: Sequence[str] | None = None,
        sequence_ids: np.ndarray | None = None,
        positions: np.ndarray | None = None,
        token_classes: np.ndarray | None = None,
        splits: str | Sequence[str] | np.ndarray | None = None,
        dtype: str | None = None,
        metadata: dict | None = None,
        chunk_rows: int | None = None,
        overwrite: bool = False,
    ) -> "ActivationStore":
        """Write in-memory arrays as a complete store (tests, demos, toy data) and open it.

        acts_NMD: (N, M, D) float32 / bfloat16 (stored as `dtype`, default: its own dtype if
        bfloat16 else float32). Per-row arrays default to zeros (token ids, dataset ids), one
        sequence per row (sequence ids = row index, positions 0) and TokenClass.TEXT. `splits`:
        one split name for all rows (default "train") or one per row. `metadata` lands under
        metadata["user"].
        """
        acts = np.asarray(acts_NMD)
        if acts.ndim != 3:
            raise StoreError(f"acts_NMD must have shape (N, M, D), got {acts.shape}.")
        N, M, D = acts.shape
        if dtype is None:
            dtype = "bfloat16" if acts.dtype.name == "bfloat16" else "float32"
        dtype = ACT_DTYPES.get(dtype, dtype)
        if dtype not in ("bfloat16", "float32"):
            raise StoreError(f"dtype must be bfloat16 or float32, got {dtype!r}.")
        acts = acts.astype(np_dtype(dtype), copy=False)
        if not np.all(np.isfinite(acts.astype(np.float32))):
            raise StoreError("acts_NMD contains NaN or inf; fix the activations before storing them.")

        def rowarr(x, default, name):
            if x is None:
                return default
            x = np.asarray(x)
            if x.shape != (N,):
                raise StoreError(f"{name} must have shape ({N},), got {x.shape}.")
            return x

        ds = rowarr(dataset_ids, np.zeros(N, np.int16), "dataset_ids").astype(np.int16)
        n_ds = int(ds.max()) + 1 if N else 1
        if dataset_names is None:
            dataset_names = [f"dataset{i}" for i in range(n_ds)]
        if len(dataset_names) < n_ds:
            raise StoreError(f"dataset_names has {len(dataset_names)} names but dataset_ids go up to {n_ds - 1}.")
        if splits is None or isinstance(splits, str):
            split_arr = np.full(N, splits or "train", dtype=object)
        else:
            split_arr = np.asarray(rowarr(np.asarray(splits, dtype=object), None, "splits"), dtype=object)
        # Sources: one per (dataset, split), each with the runs of rows it owns.
        keys = list(dict.fromkeys(zip(ds.tolist(), split_arr.tolist())))
        sources = []
        for d, sp in keys:
            mask = (ds == d) & (split_arr == sp)
            sources.append({"dataset_id": int(d), "split": str(sp), "row_ranges": _runs(mask),
                            "num_rows": int(mask.sum()), "done": True})
        seq = rowarr(sequence_ids, np.arange(N, dtype=np.int64), "sequence_ids")
        w = StoreWriter.create(
            url, num_models=M, d_model=D, dtype=dtype, capacity=max(N, 1), datasets=list(dataset_names),
            sources=sources, attrs={"user": metadata or {}, "origin": "create_from_arrays"},
            chunk_rows=chunk_rows, overwrite=overwrite,
        )
        w.write_rows(
            0, acts,
            token_ids=rowarr(token_ids, np.zeros(N, np.int32), "token_ids"),
            sequence_ids=seq,
            positions=rowarr(positions, np.zeros(N, np.int32), "positions"),
            dataset_ids=ds,
            token_classes=rowarr(token_classes, np.zeros(N, np.uint8), "token_classes"),
        )
        for i, (d, sp) in enumerate(keys):
            mask = (ds == d) & (split_arr == sp)
            w.add_moments(i, batch_moments(acts[mask]))
            w.metadata["sources"][i]["num_sequences"] = int(len(np.unique(seq[mask])))
        w.metadata["num_rows"] = N
        w.metadata["num_sequences"] = int(len(np.unique(seq)))
        w.finalize()
        return cls.open(url)

    # -- metadata ------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict:
        return copy.deepcopy(self._meta)

    @property
    def num_rows(self) -> int:
        return int(self._meta["num_rows"])

    def __len__(self) -> int:
        return self.num_rows

    @property
    def num_models(self) -> int:
        return int(self._meta["num_models"])

    @property
    def d_model(self) -> int:
        return int(self._meta["d_model"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_rows, self.num_models, self.d_model)

    @property
    def dtype(self) -> np.dtype:
        return np_dtype(self._meta["dtype"])

    @property
    def chunk_rows(self) -> int:
        return int(self._meta["chunk_rows"])

    def fingerprint(self) -> dict:
        """What identifies this store's content for a training run (recorded with every checkpoint and
        compared on resume): when it was created, its shape, rows per split, and for an extraction
        the models and layer. A store rewritten in place (another layer, other data) changes it."""
        ex = self._meta.get("extraction") or {}
        rows = {}
        for s in self._meta["sources"]:
            rows[s["split"]] = rows.get(s["split"], 0) + int(s.get("num_rows") or 0)
        return {"store_created_at": self._meta.get("created_at"), "store_shape": list(self.shape),
                "store_dtype": self._meta["dtype"], "store_rows": rows, "store_datasets": self.datasets,
                "store_layer": ex.get("layer"),
                "store_models": [m.get("weights_fingerprint") or m.get("commit_hash") or m.get("name")
                                 for m in ex.get("models", [])]}

    @property
    def complete(self) -> bool:
        return bool(self._meta.get("complete"))

    @property
    def datasets(self) -> list[str]:
        return list(self._meta["datasets"])

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(s["split"] for s in self._meta["sources"]))

    def row_ranges(self, split: str | None = None, dataset_id: int | None = None) -> list[tuple[int, int, int]]:
        """Committed (start, stop, dataset_id) row ranges of a split / dataset (None = all)."""
        out = []
        for s in self._meta["sources"]:
            if split is not None and s["split"] != split:
                continue
            if dataset_id is not None and s["dataset_id"] != dataset_id:
                continue
            for a, b in s["row_ranges"]:
                b = min(b, self.num_rows)
                if b > a:
                    out.append((int(a), int(b), int(s["dataset_id"])))
        return sorted(out)

    # -- arrays --------------------------------------------------------------------------------

    def _array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = open_array(self.url, name)
        return self._arrays[name]

    @property
    def acts(self):
        """The `acts` tensorstore restricted to the committed rows (lazy; slice then `.read()`)."""
        return self._array("acts")[: self.num_rows]

    def read(self, rows) -> np.ndarray:
        """Activations of `rows` (slice, int, or integer array in any order): numpy (n, M, D)."""
        return self.read_async(rows).result()

    def read_async(self, rows):
        """Like `read` but returns a tensorstore Future (call `.result()`), for prefetching."""
        arr = self._array("acts")
        return _index(arr, rows, self.num_rows).read()

    def __getitem__(self, rows) -> np.ndarray:
        return self.read(rows)

    def read_column(self, name: str, rows=slice(None)) -> np.ndarray:
        """A per-row array (token_ids, sequence_ids, positions, dataset_ids, token_classes)."""
        if name not in ROW_ARRAYS:
            raise StoreError(f"unknown per-row array {name!r}; one of {sorted(ROW_ARRAYS)}.")
        return _index(self._array(name), rows, self.num_rows).read().result()

    def _column(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self.read_column(name)
        return self._cache[name]

    @property
    def token_ids(self) -> np.ndarray:
        return self._column("token_ids")

    @property
    def sequence_ids(self) -> np.ndarray:
        return self._column("sequence_ids")

    @property
    def positions(self) -> np.ndarray:
        return self._column("positions")

    @property
    def dataset_ids(self) -> np.ndarray:
        return self._column("dataset_ids")

    @property
    def token_classes(self) -> np.ndarray:
        return self._column("token_classes")

    def sequence_bounds(self) -> np.ndarray:
        """(S + 1,) int64 row offsets: sequence k occupies rows [b[k], b[k+1])."""
        seq = self.sequence_ids
        if len(seq) == 0:
            return np.zeros(1, np.int64)
        starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
        return np.r_[starts, len(seq)].astype(np.int64)

    # -- statistics ----------------------------------------------------------------------------

    def _moments(self) -> list:
        if "moments" not in self._cache:
            S = max(1, len(self._meta["sources"]))
            self._cache["moments"] = load_moments(
                self._meta, self._array("welford"), S, self.num_models, self.d_model
            )
        return self._cache["moments"]

    @property
    def stats(self) -> Stats:
        """Mean / std (float64, (M, D)) over the train split (all rows if there is no train split)."""
        st = self.stats_for("train")
        return st if st.count > 0 else self.stats_for(None)

    def stats_for(self, split: str | None = None, dataset_id: int | None = None) -> Stats:
        """Mean / std over the committed rows of a split and/or dataset (None = all)."""
        return split_stats(self._meta, self._moments(), split, dataset_id)

    def __repr__(self) -> str:
        return (f"ActivationStore({self.url!r}, rows={self.num_rows}, M={self.num_models}, D={self.d_model}, "
                f"dtype={self._meta['dtype']}, datasets={self.datasets}, complete={self.complete})")


def _runs(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop), ...] runs of True in a boolean mask."""
    m = np.r_[False, np.asarray(mask, bool), False].astype(np.int8)
    d = np.diff(m)
    return [[int(a), int(b)] for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1))]


def _index(arr, rows, num_rows: int):
    """Index a tensorstore along axis 0 with a slice / int / int array, checked against num_rows."""
    if isinstance(rows, slice):
        start, stop, step = rows.indices(num_rows)
        if step != 1:
            return _index(arr, np.arange(start, stop, step), num_rows)
        return arr[start:max(start, stop)]
    if isinstance(rows, (int, np.integer)):
        r = int(rows)
        if r < 0:
            r += num_rows
        if not 0 <= r < num_rows:
            raise IndexError(f"row {rows} out of range for a store with {num_rows} rows")
        return arr[r]
    idx = np.asarray(rows)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= num_rows):
        raise IndexError(f"row indices must be in [0, {num_rows}); got min {idx.min()}, max {idx.max()}")
    if idx.size == 0:
        return arr[0:0]
    return arr[idx]
