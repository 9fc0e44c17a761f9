"""The examples' files: `write_examples` and `load_examples`, one directory holding

* `examples.parquet` — one row per example: `latent` int32, `bucket` int8 (id into
  examples.json "buckets"; 0 = top), `rank` int16 (0 = largest activation within the bucket),
  `activation` float32 (the sequence's max), `row` int64 (store row of the max token),
  `sequence_id` int64, `position` int32 (of the max token in its sequence), `dataset_id` int16,
  `token_class` int16 (of the max token; -1 unknown), `token_ids` list<int32>[W] (-1 outside the
  sequence, -2 unknown: a source without token ids), and per channel `act_<channel>`
  list<float32>[W] (0 outside the sequence). Window
  index `before` is the max token.
* `example_latents.parquet` — one row per collected latent: `latent`, `max_activation` (the bucket
  basis), `observed_max_activation`, `count_active` (tokens), `frequency`, `count_<class>` per
  token class and `template_share` (share of the latent's active tokens that are chat-template
  tokens), `count_<channel>` (tokens where each code is non-zero: per model for DECOUPLED, per
  slot for tied, plus `r_base`, `r_chat` for tied), `population_<bucket>` (distinct sequences in
  the bucket) and `sampled_<bucket>`, and the decoder columns `norm_base`, `norm_chat`,
  `delta_norm`, `tag`, `decoder_cos`.
* `examples.json` — format/version, crosscoder, architecture, the channel definitions, the
  buckets (id, name, kind, lo/hi fractions), window, K, seed, token and sequence counts, the
  store's model / tokenizer names and token-class names.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxcoders.analysis.examples.spec import FORMAT, FORMAT_VERSION

EXAMPLES_FILE, LATENTS_FILE, META_FILE = "examples.parquet", "example_latents.parquet", "examples.json"


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - the analysis extra installs it
        raise ImportError("writing examples needs pyarrow: pip install 'jaxcoders[analysis]'") from e
    return pa, pq


def write_examples(result: dict, out_dir) -> dict:
    """Write examples.parquet, example_latents.parquet and examples.json into `out_dir` (each
    written to a temporary name and renamed: nothing half-written). Returns {what: path}."""
    pa, pq = _pa()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex = result["examples"]
    W = result["meta"]["window"]["size"]
    arrays, names = [], []
    for k, v in ex.items():
        v = np.asarray(v)
        if v.ndim == 2:
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), W))
        else:
            arrays.append(pa.array(v))
        names.append(k)
    paths = {}

    def put(table, fname):
        tmp = out / (fname + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, out / fname)
        paths[fname.split(".")[0]] = out / fname

    put(pa.Table.from_arrays(arrays, names=names), EXAMPLES_FILE)
    lat = {k: (np.asarray(v).astype(str) if np.asarray(v).dtype == object else np.asarray(v))
           for k, v in result["latents"].items()}
    put(pa.table(lat), LATENTS_FILE)
    meta = dict(result["meta"], files={"examples": EXAMPLES_FILE, "latents": LATENTS_FILE})
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, out / META_FILE)
    paths["meta"] = out / META_FILE
    return paths


def load_examples(path) -> dict:
    """Read a directory written by `write_examples`: {"meta": dict, "examples": {column: array}
    (windows as (E, W) arrays), "latents": pandas DataFrame}."""
    pa, pq = _pa()
    p = Path(path)
    meta = json.loads((p / META_FILE).read_text())
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{p / META_FILE} is not a jaxcoders examples file this version can read")
    t = pq.read_table(p / EXAMPLES_FILE)
    ex = {}
    for name in t.column_names:
        col = t.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            ex[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        else:
            ex[name] = col.to_numpy(zero_copy_only=False)
    return {"meta": meta, "examples": ex, "latents": pq.read_table(p / LATENTS_FILE).to_pandas()}
