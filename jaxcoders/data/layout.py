"""The ActivationStore's on-disk format: constants, row types, errors, URLs, zarr3 array specs and
the group metadata (`zarr.json`) read and write.

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
(Welford in float64, docs/method.md §8; moments.py) and merged on demand.

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
per-row arrays use zstd in chunks of ≥ `ROW_CHUNK_MIN` rows.
"""
from __future__ import annotations

import datetime
import enum
import json
import os

import numpy as np
import tensorstore as ts

from jaxcoders.locks import LOCK_NAME

FORMAT = "jaxcoders.activation_store"
FORMAT_VERSION = 1

# One shared context per process: `memory://` stores persist across opens for the process's life.
TS_CONTEXT = ts.Context()

ROW_ARRAYS = {
    # per-row array name: (numpy dtype, zarr dtype); each array is (N,)
    "token_ids": (np.int32, "int32"),
    "sequence_ids": (np.int64, "int64"),
    "positions": (np.int32, "int32"),
    "dataset_ids": (np.int16, "int16"),
    "token_classes": (np.uint8, "uint8"),
}
# accepted `acts` dtype names -> zarr dtype
ACT_DTYPES = {"bfloat16": "bfloat16", "float32": "float32", "bf16": "bfloat16", "f32": "float32"}
ROW_CHUNK_MIN = 65536  # fewest rows per chunk of a per-row array
LOCK_KEY = LOCK_NAME  # the one writer's lock (jaxcoders.locks), not part of the store


class TokenClass(enum.IntEnum):
    """Per-row token class (stored in `token_classes`; used by per-class latent statistics and KL)."""

    TEXT = 0  # a token of a plain-text (pretraining-style) document
    BOS = 1  # the beginning-of-sequence token (huge norm: see --drop_bos)
    TEMPLATE = 2  # chat-template / control tokens (`<start_of_turn>user\n`, `<|eot_id|>`, ...)
    SYSTEM = 3  # content of a system message
    USER = 4  # content of a user message
    ASSISTANT = 5  # content of an assistant message
    OTHER_ROLE = 6  # content of a message with any other role (e.g. tool)


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


def open_kvstore(url: str):
    """The tensorstore KvStore of the store's key prefix (shared `TS_CONTEXT`)."""
    return ts.KvStore.open(normalize_url(url), context=TS_CONTEXT).result()


def array_spec(url: str, name: str, shape, chunk, dtype: str, compress: bool) -> dict:
    """The zarr3 tensorstore spec of array `<url>/<name>/` (little-endian; zstd level 1 if `compress`)."""
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


def open_array(url: str, name: str, *, write: bool = False):
    """Open the existing zarr3 array `<url>/<name>/` (a tensorstore.TensorStore)."""
    spec = {"driver": "zarr3", "kvstore": normalize_url(url) + name + "/"}
    return ts.open(spec, open=True, read=True, write=write, context=TS_CONTEXT).result()


def utc_now() -> str:
    """The current UTC time as an ISO string to the second (metadata timestamps)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a stored dtype name ("bfloat16" via ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# --------------------------------------------------------------------------------------------
# The group metadata (zarr.json): the commit point


def read_group_metadata(url: str) -> dict | None:
    """The store metadata at `url`, or None when there is no `zarr.json` there."""
    try:
        res = open_kvstore(url).read("zarr.json").result()
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


def write_group(url: str, meta: dict) -> None:
    """Replace `<url>/zarr.json` (the group holding `meta`) in one atomic kvstore write."""
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"jaxcoders": meta}}
    data = json.dumps(group, indent=1, sort_keys=True).encode()
    open_kvstore(url).write("zarr.json", data).result()


def store_exists(url: str) -> bool:
    return open_kvstore(url).read("zarr.json").result().state == "value"


def list_keys(url: str, limit: int = 5) -> list[str]:
    """Up to `limit` keys under `url` (to tell an empty location from a used one); the writer's
    lock (`LOCK_KEY`) does not count."""
    keys = [k.decode() for k in open_kvstore(url).list().result()]
    return [k for k in keys if k != LOCK_KEY][:limit]


def delete_store(url: str) -> None:
    """Delete everything under `url` (used by --overwrite) except the writer's lock (`LOCK_KEY`)."""
    kv = open_kvstore(url)
    lock = LOCK_KEY.encode()
    kv.delete_range(ts.KvStore.KeyRange(exclusive_max=lock)).result()
    kv.delete_range(ts.KvStore.KeyRange(inclusive_min=lock + b"\x00")).result()


def lock_location(url: str) -> str | None:
    """Where a writer's `jaxcoders.locks.DirectoryLock` of the store lives: the local directory or
    the gs:// prefix; None for stores that only live in this process (memory://)."""
    url = normalize_url(url)
    if url.startswith("file://"):
        return url[len("file://"):]
    if url.startswith("gs://"):
        return url
    return None
