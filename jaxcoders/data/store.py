"""ActivationStore: paired residual-stream activations of M models, in tensorstore zarr3 arrays.

One store is one directory (a key prefix) under any tensorstore kvstore URL: a plain local path,
`file://...`, `gs://bucket/path` (TPU pods stream straight from GCS) or `memory://name` (tests).

Layout (N = committed rows, ≤ the arrays' first dimension while an extraction is running)::

    <url>/zarr.json          zarr3 group; attributes["jaxcoders"] = metadata; THE commit point
    <url>/acts/              (N, M, D) bfloat16 | float32   activations; index 0 = base, 1 = chat
    <url>/token_ids/         (N,) int32     input token id of the row
    <url>/sequence_ids/      (N,) int64     sequence index; a sequence's rows are contiguous
    <url>/positions/         (N,) int32     position in the model input (0 = first token, e.g. BOS)
    <url>/dataset_ids/       (N,) int16     index into metadata["datasets"]
    <url>/token_classes/     (N,) uint8     `TokenClass` (BOS, chat template, user, assistant, ...)
    <url>/welford/           (2, S, 2, M, D) float64  double-buffered Welford (mean, M2) per source
    <url>/mean/, <url>/std/  (M, D) float64 train-split mean / std (written when the store completes)

Sources: metadata["sources"] lists (dataset_id, split, row_ranges) groups; an extraction writes
each (dataset, split) as one contiguous row range, sources one after another (train sources
first, then validation). Loaders mix datasets by these ranges; statistics are kept per source
(Welford in float64, SPEC.md section 8) and merged on demand.

Crash safety ("nothing half-written"): rows are written first; only when every write future has
resolved (the data is durable in the kvstore) is the Welford state written into the *other*
slot of `welford/`, and then `zarr.json` is replaced in one atomic kvstore write that raises
`num_rows` and flips the slot. A crash at any point leaves the previous `zarr.json` pointing at
rows and statistics that are complete; rows beyond `num_rows` are garbage that a resumed
extraction overwrites.

Chunking: `acts` chunks hold `chunk_rows` whole rows (all M models, all D dims), ≈ 8 MiB
(`default_chunk_rows`: Gemma-2-2B, M = 2, D = 2304, bf16 → 1024 rows = 9.4 MB). Why:
* Extraction buffers forward batches and writes ≈ 8 chunks at a time, starting at a chunk
  boundary (the last, partial chunk is kept in memory and rewritten whole by the next write), so
  chunks are never read back to be modified and each write is a few large sequential objects.
* The loader reads whole windows of consecutive chunks (chunk-aligned) and shuffles rows in
  memory: a multi-MB chunk per request amortises GCS's per-object latency (~50 ms) while a
  window still holds few enough rows that a shuffle buffer of many windows stays in a few GB.
* A row never spans chunks along M or D, so reading rows never touches unrelated models/dims.
No zarr3 sharding: whole-chunk objects keep writes atomic per object and reads simple; the
object count (N / 1024 ≈ 10⁵ for 100M tokens) is unproblematic for GCS and local disks.
Activations are stored uncompressed (they barely compress and decode cost matters); the small
per-row arrays use zstd in chunks of ≥ 65536 rows.

Reading::

    store = ActivationStore.open("gs://bucket/acts/gemma2-l13")
    x_nMD = store.read(slice(0, 4096))     # numpy (n, M, D) in the stored dtype
    x_nMD = store[[5, 3, 9]]               # any row indices, returned in the given order
    store.token_ids, store.dataset_ids     # numpy (N,)
    store.stats.mean, store.stats.std      # float64 (M, D), train split
"""
from __future__ import annotations

import copy
import datetime
import enum
import json
import os
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import tensorstore as ts

FORMAT = "jaxcoders.activation_store"
FORMAT_VERSION = 1

# One shared context per process: `memory://` stores persist across opens for the process's life.
_CONTEXT = ts.Context()

_ROW_ARRAYS = {
    # name: (numpy dtype, zarr dtype)
    "token_ids": (np.int32, "int32"),
    "sequence_ids": (np.int64, "int64"),
    "positions": (np.int32, "int32"),
    "dataset_ids": (np.int16, "int16"),
    "token_classes": (np.uint8, "uint8"),
}
_ACT_DTYPES = {"bfloat16": "bfloat16", "float32": "float32", "bf16": "bfloat16", "f32": "float32"}
_ROW_CHUNK_MIN = 65536


class TokenClass(enum.IntEnum):
    """Per-row token class (stored in `token_classes`; used by per-class latent statistics and KL)."""

    TEXT = 0  # a token of a plain-text (pretraining-style) document
    BOS = 1  # the beginning-of-sequence token (huge norm: see --drop_bos)
    TEMPLATE = 2  # chat-template / control tokens (`<start_of_turn>user\n`, `<|eot_id|>`, ...)
    SYSTEM = 3  # content of a system message
    USER = 4  # content of a user message
    ASSISTANT = 5  # content of an assistant message
    OTHER_ROLE = 6  # content of a message with any other role (e.g. tool)


class Stats(NamedTuple):
    """Per-model activation statistics over a set of rows (float64)."""

    mean: np.ndarray  # (M, D) float64
    std: np.ndarray  # (M, D) float64, population std (ddof = 0)
    count: int


class StoreError(ValueError):
    """Bad store location, content or request; the message says what to do."""


# --------------------------------------------------------------------------------------------
# URLs and small helpers


def normalize_url(url: str) -> str:
    """A kvstore URL ending in "/": plain paths become absolute `file://` URLs."""
    url = str(url)
    if "://" not in url:
        url = "file://" + os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/") + "/"


def local_path(url: str) -> str | None:
    """The filesystem path of a `file://` URL (None for gs://, memory://, ...)."""
    url = normalize_url(url)
    return url[len("file://"):] if url.startswith("file://") else None


def default_chunk_rows(num_models: int, d_model: int, itemsize: int, target_bytes: int = 8 << 20) -> int:
    """Rows per `acts` chunk: the power of two nearest to `target_bytes` per chunk, in [64, 65536]."""
    rows = target_bytes / max(1, num_models * d_model * itemsize)
    return int(min(65536, max(64, 2 ** round(np.log2(max(rows, 1.0))))))


def _kvstore(url: str):
    return ts.KvStore.open(normalize_url(url), context=_CONTEXT).result()


def _array_spec(url: str, name: str, shape, chunk, dtype: str, compress: bool) -> dict:
    codecs: list[dict] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if compress:
        codecs.append({"name": "zstd", "configuration": {"level": 1}})
    return {
        "driver": "zarr3",
        "kvstore": normalize_url(url) + name + "/",
        "metadata": {
            "shape": [int(s) for s in shape],
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(c) for c in chunk]}},
            "chunk_key_encoding": {"name": "default"},
            "codecs": codecs,
            "fill_value": 0,
        },
    }


def _open_array(url: str, name: str, *, write: bool = False):
    spec = {"driver": "zarr3", "kvstore": normalize_url(url) + name + "/"}
    return ts.open(spec, open=True, read=True, write=write, context=_CONTEXT).result()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_group_metadata(url: str) -> dict | None:
    """The store metadata at `url`, or None when there is no `zarr.json` there."""
    try:
        res = _kvstore(url).read("zarr.json").result()
    except Exception as e:  # unreachable bucket, missing credentials, ...
        raise StoreError(f"cannot read {normalize_url(url)}zarr.json ({str(e).splitlines()[0]}).") from e
    if res.state != "value":
        return None
    try:
        group = json.loads(bytes(res.value))
    except json.JSONDecodeError as e:
        raise StoreError(f"{normalize_url(url)}zarr.json is not valid JSON ({e}); the store is corrupt.") from e
    meta = group.get("attributes", {}).get("jaxcoders")
    if meta is None or meta.get("format") != FORMAT:
        raise StoreError(
            f"{normalize_url(url)} holds a zarr group that is not a jaxcoders ActivationStore; "
            "choose another location."
        )
    return meta


def store_exists(url: str) -> bool:
    return _kvstore(url).read("zarr.json").result().state == "value"


def list_keys(url: str, limit: int = 5) -> list[str]:
    """Up to `limit` keys under `url` (to tell an empty location from a used one)."""
    keys = _kvstore(url).list().result()
    return [k.decode() for k in keys[:limit]]


def delete_store(url: str) -> None:
    """Delete everything under `url` (used by --overwrite)."""
    _kvstore(url).delete_range(ts.KvStore.KeyRange()).result()


# --------------------------------------------------------------------------------------------
# Welford / Chan moments in float64


def batch_moments(x_nMD: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean (M, D), M2 (M, D)) of one batch, in float64."""
    x = np.asarray(x_nMD).astype(np.float64)
    n = x.shape[0]
    if n == 0:
        z = np.zeros(x.shape[1:], np.float64)
        return 0, z, z.copy()
    mean = x.mean(axis=0)
    m2 = ((x - mean) ** 2).sum(axis=0)
    return n, mean, m2


def merge_moments(a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]):
    """Chan et al.'s parallel Welford update of (count, mean, M2) pairs (float64)."""
    na, ma, m2a = a
    nb, mb, m2b = b
    if nb == 0:
        return na, ma, m2a
    if na == 0:
        return nb, np.array(mb, np.float64), np.array(m2b, np.float64)
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    m2 = m2a + m2b + delta * delta * (na * nb / n)
    return n, mean, m2


def moments_to_stats(moments) -> Stats:
    n, mean, m2 = moments
    std = np.sqrt(m2 / n) if n > 0 else np.full_like(m2, np.nan)
    return Stats(mean=np.asarray(mean, np.float64), std=np.asarray(std, np.float64), count=int(n))


# --------------------------------------------------------------------------------------------
# Writer


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
        if dtype not in _ACT_DTYPES:
            raise StoreError(f"dtype must be one of bfloat16, float32; got {dtype!r}.")
        dtype = _ACT_DTYPES[dtype]
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
            "row_chunk_rows": max(_ROW_CHUNK_MIN, chunk_rows),
            "num_rows": 0,
            "num_sequences": 0,
            "complete": False,
            "datasets": list(datasets),
            "sources": [],
            "welford": {"slot": 0, "std_ddof": 0},
            "created_at": _now(),
            "updated_at": _now(),
        }
        for s in sources:
            s = dict(s)
            s.setdefault("row_ranges", [])
            s.setdefault("num_rows", 0)
            s.setdefault("num_sequences", 0)
            s.setdefault("done", False)
            meta["sources"].append(s)
        meta.update(attrs or {})
        _write_group(url, meta)
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
        specs = {"acts": _array_spec(url, "acts", (cap, M, D), (meta["chunk_rows"], M, D), meta["dtype"], False)}
        for name, (_, zdt) in _ROW_ARRAYS.items():
            specs[name] = _array_spec(url, name, (cap,), (meta["row_chunk_rows"],), zdt, True)
        specs["welford"] = _array_spec(url, "welford", (2, S, 2, M, D), (1, S, 2, M, D), "float64", False)
        arrays = {}
        for name, spec in specs.items():
            arrays[name] = _open_or_create(url, name, spec, create)
        welford = arrays.pop("welford")
        moments = _load_moments(meta, welford, S, M, D)
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
        missing = set(_ROW_ARRAYS) - set(row_arrays)
        if missing:
            raise StoreError(f"write_rows needs all per-row arrays; missing {sorted(missing)}.")
        futs = [self._arrays["acts"][start:start + n].write(acts_nMD)]
        for name, (npdt, _) in _ROW_ARRAYS.items():
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
                    updated_at=_now())
        _write_group(self.url, meta)
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
        stats = _split_stats(self.metadata, self.moments, "train")
        if stats.count == 0:
            stats = _split_stats(self.metadata, self.moments, None)
        for name, value in (("mean", stats.mean), ("std", stats.std)):
            spec = _array_spec(self.url, name, (M, D), (M, D), "float64", False)
            arr = ts.open(spec, create=True, open=True, context=_CONTEXT).result()
            arr.write(value).result()
        self.metadata["complete"] = True
        self.commit()


def _open_or_create(url: str, name: str, spec: dict, create: bool):
    """Open an existing array (its first dimension may differ: trimmed by `finalize`) or create it."""
    want = spec["metadata"]
    try:
        arr = ts.open({"driver": "zarr3", "kvstore": spec["kvstore"]}, open=True, context=_CONTEXT).result()
    except ValueError as e:
        if "NOT_FOUND" not in str(e) or not create:
            raise StoreError(f"cannot open {normalize_url(url)}{name}/ ({str(e).splitlines()[0]}).") from e
        return ts.open(spec, create=True, open=True, context=_CONTEXT).result()
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


def _write_group(url: str, meta: dict) -> None:
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"jaxcoders": meta}}
    data = json.dumps(group, indent=1, sort_keys=True).encode()
    _kvstore(url).write("zarr.json", data).result()


def _load_moments(meta: dict, welford, S: int, M: int, D: int) -> list:
    counts = meta.get("welford", {}).get("counts")
    if not counts:
        z = np.zeros((M, D), np.float64)
        return [(0, z.copy(), z.copy()) for _ in range(S)]
    slot = int(meta["welford"]["slot"])
    buf = welford[slot].read().result()
    return [(int(counts[i]), buf[i, 0].copy(), buf[i, 1].copy()) for i in range(len(counts))]


def _split_stats(meta: dict, moments: list, split: str | None, dataset_id: int | None = None) -> Stats:
    acc = (0, np.zeros((meta["num_models"], meta["d_model"])), np.zeros((meta["num_models"], meta["d_model"])))
    for src, mom in zip(meta["sources"], moments):
        if split is not None and src["split"] != split:
            continue
        if dataset_id is not None and src["dataset_id"] != dataset_id:
            continue
        acc = merge_moments(acc, mom)
    return moments_to_stats(acc)


# --------------------------------------------------------------------------------------------
# Reader


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
        dtype = _ACT_DTYPES.get(dtype, dtype)
        if dtype not in ("bfloat16", "float32"):
            raise StoreError(f"dtype must be bfloat16 or float32, got {dtype!r}.")
        np_dtype = _np_dtype(dtype)
        acts = acts.astype(np_dtype, copy=False)
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
        return _np_dtype(self._meta["dtype"])

    @property
    def chunk_rows(self) -> int:
        return int(self._meta["chunk_rows"])

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
            self._arrays[name] = _open_array(self.url, name)
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
        if name not in _ROW_ARRAYS:
            raise StoreError(f"unknown per-row array {name!r}; one of {sorted(_ROW_ARRAYS)}.")
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
            self._cache["moments"] = _load_moments(
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
        return _split_stats(self._meta, self._moments(), split, dataset_id)

    def __repr__(self) -> str:
        return (f"ActivationStore({self.url!r}, rows={self.num_rows}, M={self.num_models}, D={self.d_model}, "
                f"dtype={self._meta['dtype']}, datasets={self.datasets}, complete={self.complete})")


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


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
