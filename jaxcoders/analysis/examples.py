"""Max-activating examples per latent, in activation-quantile buckets (SPEC section 6), for dashboards.

One jitted, sharded streaming pass over the rows of a store keeps, per selected latent:

* **top**: the `per_bucket` sequences with the largest activation of the latent (exact);
* **reservoirs**: for each bucket of the per-latent max activation `m` — with the reference's
  fractions (0.25, 0.5, 0.75, 0.95, 1.0) the buckets (0, .25m], (.25m, .5m], (.5m, .75m],
  (.75m, .95m], (.95m, m] — a uniform random sample without replacement of `per_bucket` of the
  sequences whose activation falls in it (reference: 100 per bucket).

The unit is a **sequence** (as in the reference): its activation for latent j is the max over its
tokens, and the example is the window of `before` tokens before and `after` tokens after that
max token (clipped to the sequence). Sequences whose token ids repeat an earlier sequence are
skipped ("duplicates skipped"; their tokens still count in the usage numbers).

Sampling: every (sequence, latent) gets a pseudo-random 31-bit key, a hash of the sequence's first
row, the latent index and the seed; a bucket keeps the `per_bucket` members with the smallest keys
(bottom-k sampling: a uniform sample without replacement, like reservoir sampling, but
deterministic and independent of how rows are batched or sharded). Exact ties (equal activations
or keys) go to the earlier row. One merge per step folds the batch's candidates into the (sorted)
state of all buckets at once: the top bucket ranks by the float32 activation's bit pattern
(order-preserving for positive floats), the reservoirs by the negated key.

The bucket edges need `m` before the pass: pass `max_activation` (e.g. the `max_activation` column
of `analyze`'s latents.parquet, the same quantity) for a single pass, or let `collect_examples`
run a cheap encode-only max pass first. With a supplied max, activations above `fractions[-1]·m`
(from rows the max did not see; by more than a relative `ABOVE_MARGIN` = 1e-5, so that float32
rounding of the same max computed by another pass does not count) land in an extra bucket
"<f>-inf"; with the in-pass max (and the last fraction 1.0) that bucket would always be empty and
is left out.

"Activation" is the ranking quantity of dashboards (SPEC section 1), per token: L1 / BatchTopK
`f_j·c_j`; BatchTopK DECOUPLED `Σ_m f_{m,j}·n_{m,j}`; tied `f_sh·(n_b + n_c) + f_b·n_b + f_c·n_c`
(the scaled slots summed). "Both models' codes": the crosscoder has one code per token
(per model for DECOUPLED, per slot for tied); per token the file stores, besides `activation`,
each model's contribution norm ‖f_{m,j} d_j^m‖ = f_{m,j}·n_{m,j} (`base`, `chat`; f_m = the code
model m decodes with: the shared code, the DECOUPLED per-model code, or shared + own slot for
tied) and for tied the three scaled slots (`slot_shared`, `slot_base`, `slot_chat`). With the
CROSSCODER normalization `activation = base + chat`.

Cost and memory: the pass keeps only (score, activation, row) per kept example on device,
(1 + reservoirs) · K · S · 12 bytes (S latents, K per bucket; latent-sharded), and per step adds a
segment max and an O(K·G) merge per (bucket, latent) to the encode (G sequences per step). The windows are
filled afterwards: the rows the kept windows need are read in row order, `fill_chunk` examples at a
time, and re-encoded with only each example's encoder column (E·W·M·D work for E examples, not a
full encode). Host memory: the finished examples (≈ E · W · 4 · (1 + channels) bytes, checked
before the pass: `max_output_bytes`), one hash per distinct sequence (duplicate detection) and the
per-row columns of one block of rows.

On-disk format (`write_examples`, read back with `load_examples`), in one directory:

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

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcoders.core.crosscoder import code_normalization, encode, normalize_input, summed_code_normalization
from jaxcoders.core.ops import matmul
from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams
from jaxcoders.analysis import decoder, stream
from jaxcoders.analysis import mesh as meshes

FORMAT = "jaxcoders.max_activating_examples"
FORMAT_VERSION = 1
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 0.95, 1.0)  # reference thresholds, × max_act
INT_MIN = np.iinfo(np.int32).min
# A supplied max counts as exceeded only beyond this relative margin: the same quantity computed by
# another pass (e.g. analyze's max_activation) may differ by float32 rounding.
ABOVE_MARGIN = 1e-5
ROW_COLUMNS = ("token_ids", "sequence_ids", "positions", "dataset_ids", "token_classes")


# ----------------------------------------------------------------------------- model helpers


def load_model(model):
    """(cfg, params, buffers) from a CrossCoder / triple / path; tied crosscoders (a directory with
    `cfg.json` saying architecture "tied", or a reference `*.pt`) load with `jaxcoders.tied`."""
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        cfg_json = p / "cfg.json" if p.is_dir() else None
        tied = p.suffix == ".pt" or (cfg_json is not None and cfg_json.is_file()
                                     and json.loads(cfg_json.read_text()).get("architecture") == "tied")
        if p.is_dir() and not tied and not (p / "config.json").is_file() and list(p.glob("*_cfg.json")):
            tied = True
        if tied:
            from jaxcoders.io.tied import load_tied_reference

            model = load_tied_reference(p)
    return stream.resolve_model(model)


def code_channels(cfg) -> tuple[str, ...]:
    """Names of the per-token codes kept on device: one shared code, per model (DECOUPLED) or per slot (tied)."""
    if cfg.is_tied:
        from jaxcoders.core.crosscoder import SLOTS

        return SLOTS
    if cfg.is_batchtopk and cfg.decoupled:
        return stream.model_names(cfg.num_models)
    return ("code",)


def output_channels(cfg) -> tuple[str, ...]:
    names = ("activation",) + stream.model_names(cfg.num_models)
    return names + (("slot_shared", "slot_base", "slot_chat") if cfg.is_tied else ())


def channel_scales(cfg, params) -> np.ndarray:
    """(C, F): the factor turning each device code into its share of the ranking activation."""
    w = np.asarray(params.w_dec_MFD, np.float64)
    n = np.linalg.norm(w, axis=-1)  # (M, F)
    if cfg.is_tied:
        return np.stack([n[0] + n[1], n[0], n[1]])
    if cfg.is_batchtopk and cfg.decoupled:
        return n  # c_m = n_m
    return np.asarray(summed_code_normalization(cfg, jnp.asarray(w, jnp.float32)), np.float64)[None]


def channel_values(cfg, params, codes_ECW: np.ndarray, latents: np.ndarray, norms_scales=None) -> dict:
    """Named per-token channels (output_channels) from device codes (E, C, W) of latents (E,).
    norms_scales: precomputed ((M, F) decoder norms, (C, F) channel_scales)."""
    if norms_scales is None:
        norms_scales = (np.linalg.norm(np.asarray(params.w_dec_MFD, np.float64), axis=-1), channel_scales(cfg, params))
    n, sc = norms_scales[0][:, latents], norms_scales[1][:, latents]  # (M, E), (C, E)
    codes = np.asarray(codes_ECW, np.float64)
    out = {"activation": np.einsum("ecw,ce->ew", codes, sc)}
    for m, name in enumerate(stream.model_names(cfg.num_models)):
        if cfg.is_tied:
            f_m = codes[:, 0] + codes[:, 1 + m]
        elif codes.shape[1] > 1:
            f_m = codes[:, m]
        else:
            f_m = codes[:, 0]
        out[name] = f_m * n[m][:, None]
    if cfg.is_tied:
        for k, slot in enumerate(("slot_shared", "slot_base", "slot_chat")):
            out[slot] = codes[:, k] * sc[k][:, None]
    return {k: v.astype(np.float32) for k, v in out.items()}


def _codes_BCF(cfg, params, buffers, x_BMD):
    f = encode(cfg, params, buffers, x_BMD)
    return f[:, None, :] if f.ndim == 2 else f


# ----------------------------------------------------------------------------- pseudo-random keys


def _fmix32(h, xp):
    h = h ^ (h >> 16)
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def seed_word(seed: int) -> np.uint32:
    return np.uint32((int(seed) * 0x27D4EB2F + 0x165667B1) & 0xFFFFFFFF)


def sample_key(seq_start_row, latent, seed, xp=np):
    """31-bit int32 key of (sequence, latent, seed) (murmur3 finalizer); numpy (xp=np) or jax (xp=jnp,
    `seed` then may be a traced `seed_word(seed)`)."""
    with np.errstate(over="ignore"):
        r = xp.asarray(seq_start_row).astype(xp.uint32)
        lat = xp.asarray(latent).astype(xp.uint32)
        word = xp.asarray(seed if getattr(seed, "dtype", None) == np.uint32 else seed_word(seed), xp.uint32)
        h = _fmix32(r * xp.uint32(0x9E3779B1) + word, xp)
        h = _fmix32(h ^ (lat * xp.uint32(0x85EBCA77) + xp.uint32(0xC2B2AE3D)), xp)
        return (h >> 1).astype(xp.int32)


# ----------------------------------------------------------------------------- static spec + state


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static shape parameters of the pass (hashable: a jit static argument)."""

    per_bucket: int
    num_reservoirs: int
    before: int
    after: int
    max_sequences: int
    num_classes: int

    @property
    def window(self) -> int:
        return self.before + 1 + self.after


def bucket_table(fractions: Sequence[float], above: bool) -> list[dict]:
    """Bucket descriptors in file order: top, then reservoirs from the highest range down."""
    edges = [0.0] + [float(f) for f in fractions]
    res = [{"kind": "reservoir", "lo": edges[i], "hi": edges[i + 1]} for i in range(len(fractions))]
    if above:
        res.append({"kind": "reservoir", "lo": edges[-1], "hi": None})
    out = [{"id": 0, "name": "top", "kind": "top", "lo": None, "hi": None}]
    for i, b in enumerate(reversed(res)):
        name = f"{b['lo']:g}-{'inf' if b['hi'] is None else format(b['hi'], 'g')}"
        out.append({"id": i + 1, "name": name, **b})
    return out


def state_bytes(num_latents: int, spec: Spec) -> int:
    """Device bytes of the pass state (all shards together): score, value and row per kept entry."""
    return (1 + spec.num_reservoirs) * spec.per_bucket * num_latents * 12


def output_bytes(num_latents: int, spec: Spec, num_channels: int) -> int:
    """Host bytes of the finished examples at most (windows: token ids + float32 channels)."""
    return (1 + spec.num_reservoirs) * spec.per_bucket * num_latents * (40 + 4 * (1 + num_channels) * spec.window)


def _init_state(spec: Spec, S: int, C: int) -> dict:
    L, K = 1 + spec.num_reservoirs, spec.per_bucket
    return {  # group 0: top; group 1 + r: reservoir r (ascending ranges)
        "score": np.full((L, K, S), INT_MIN, np.int32), "value": np.zeros((L, K, S), np.float32),
        "row": np.full((L, K, S), -1, np.int32),
        "population": np.zeros((L, S), np.uint32), "count_code": np.zeros((C, S), np.uint32),
        "count_active": np.zeros((S,), np.uint32), "count_class": np.zeros((max(spec.num_classes, 1), S), np.uint32),
        "observed_max": np.zeros((S,), np.float32),
    }


def _merge_one(score, value, row, cand_score, cand_value, cand_row):
    """One latent: keep the K best of (state ∪ candidates) per group. score, value, row (L, K) with
    score sorted descending; cand_score (L, G); cand_value, cand_row (G,) (global row of each
    candidate's max token). A merge by counting (O(K·G), no sort: K is large, G small): an entry's
    new place is the number of entries ranked before it; ties go to the state (older rows), then to
    the earlier candidate (rows in order)."""
    L, K = score.shape
    G = cand_score.shape[1]
    pos_state = jnp.arange(K)[None, :] + jnp.sum(cand_score[:, None, :] > score[:, :, None], axis=2)
    g = jnp.arange(G)
    before = (cand_score[:, None, :] > cand_score[:, :, None]) | (
        (cand_score[:, None, :] == cand_score[:, :, None]) & (g[None, :] < g[:, None])[None])
    pos_cand = jnp.sum(score[:, :, None] >= cand_score[:, None, :], axis=1) + jnp.sum(before, axis=2)
    pos = jnp.concatenate([pos_state, pos_cand], axis=1)  # (L, K + G): a permutation; >= K drops out
    lidx = jnp.broadcast_to(jnp.arange(L)[:, None], pos.shape)
    put = lambda a, b: jnp.zeros((L, K), a.dtype).at[lidx, pos].set(
        jnp.concatenate([a, jnp.broadcast_to(b, (L, G))], axis=1), mode="drop")
    return put(score, cand_score), put(value, cand_value), put(row, cand_row)


# vmapped over the latent axis (last everywhere): gathers stay per latent (small int32 indices, and
# the latent axis is a batch dimension the SPMD partitioner keeps sharded)
_merge = jax.vmap(_merge_one, in_axes=-1, out_axes=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "spec", "mesh"), donate_argnames=("state",))
def _step(params, buffers, consts, state, x_BMD, valid_B, fresh_B, seg_B, seg_start_G, class_B, row0, seed, *,
          cfg, spec: Spec, mesh):
    """Fold one batch of whole sequences into the state (see the module docstring)."""
    lat, scale_CS, thr_ES = consts["latents"], consts["scales"], consts["thresholds"]
    B = x_BMD.shape[0]
    G = seg_start_G.shape[0]
    codes = _codes_BCF(cfg, params, buffers, x_BMD.astype(jnp.float32))[..., lat]  # (B, C, S)
    codes = codes * valid_B[:, None, None]
    act = jnp.einsum("bcs,cs->bs", codes, scale_CS, precision=jax.lax.Precision.HIGHEST)  # not TF32 on GPU
    active = act > 0
    new = dict(state)
    new["count_active"] = state["count_active"] + jnp.sum(active, axis=0, dtype=jnp.uint32)
    new["count_code"] = state["count_code"] + jnp.sum(codes > 0, axis=0, dtype=jnp.uint32)
    onehot = (class_B[:, None] == jnp.arange(state["count_class"].shape[0])[None]).astype(jnp.float32)
    new["count_class"] = state["count_class"] + jnp.einsum("bk,bs->ks", onehot, active.astype(jnp.float32)).astype(
        jnp.uint32)
    new["observed_max"] = jnp.maximum(state["observed_max"], jnp.max(act, axis=0))

    # per (sequence in this batch, latent): max activation and the first row reaching it
    act_f = act * fresh_B[:, None]
    segmax = jax.ops.segment_max(act_f, seg_B, num_segments=G)  # (G, S), -inf for empty segments
    has = segmax > 0
    segmax = jnp.where(has, segmax, 0.0)
    is_max = (act_f > 0) & (act_f == segmax[jnp.clip(seg_B, 0, G - 1)])
    rows = jnp.where(is_max, jnp.arange(B, dtype=jnp.int32)[:, None], B)
    argmax = jax.ops.segment_min(rows, seg_B, num_segments=G)  # (G, S)
    bucket = jnp.sum(segmax[None] > thr_ES[:, None, :], axis=0)  # (G, S): 0 = lowest range
    res_ids = jnp.arange(spec.num_reservoirs)[:, None, None]
    in_res = has[None] & (bucket[None] == res_ids)  # (R, G, S)
    new["population"] = state["population"] + jnp.concatenate(
        [jnp.sum(has, axis=0, dtype=jnp.uint32)[None], jnp.sum(in_res, axis=1, dtype=jnp.uint32)])

    top_cand = jnp.where(has, jax.lax.bitcast_convert_type(segmax, jnp.int32), INT_MIN)[None]  # order-preserving
    key = sample_key(seg_start_G[:, None], lat[None, :], seed, xp=jnp)  # (G, S)
    res_cand = jnp.where(in_res, -key[None], INT_MIN)  # larger = smaller key
    cand = jnp.concatenate([top_cand, res_cand])  # (1 + R, G, S)
    new["score"], new["value"], new["row"] = _merge(state["score"], state["value"], state["row"], cand, segmax,
                                                    row0 + jnp.minimum(argmax, B - 1))
    specs = {k: _latent_last(v.shape, mesh) for k, v in new.items()}
    return {k: jax.lax.with_sharding_constraint(v, meshes.sharding(mesh, *specs[k])) for k, v in new.items()}


def _latent_last(shape, mesh) -> P:
    n = meshes.axis_size(mesh, meshes.LATENT)
    if shape and n > 1 and shape[-1] % n == 0:
        return P(*([None] * (len(shape) - 1)), meshes.LATENT)
    return P()


@functools.partial(jax.jit, static_argnames=("cfg",))
def _max_step(params, buffers, scale_CF, m_F, x_BMD, valid_B, *, cfg):
    codes = _codes_BCF(cfg, params, buffers, x_BMD.astype(jnp.float32)) * valid_B[:, None, None]
    return jnp.maximum(m_F, jnp.max(jnp.einsum("bcf,cf->bf", codes, scale_CF, precision=jax.lax.Precision.HIGHEST), axis=0))


# ----------------------------------------------------------------------------- rows and batches


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


def _batches(info: RowInfo, B: int, G: int, stop: int, dedup: bool, counters: dict, block: int):
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


# ----------------------------------------------------------------------------- passes


def max_activations(model, acts, *, batch_size: int = 4096, mesh=None, max_rows: Optional[int] = None,
                    progress: bool = False) -> np.ndarray:
    """Per-latent max of the ranking activation over the rows (F,) float64: an encode-only pass."""
    cfg, params, buffers = load_model(model)
    mesh = mesh if mesh is not None else meshes.make_mesh()
    n_data = meshes.axis_size(mesh, meshes.DATA)
    B = -(-int(batch_size) // n_data) * n_data
    p_d = jax.device_put(CrossCoderParams(*(np.asarray(a, np.float32) for a in params)),
                         jax.tree.map(lambda s: meshes.sharding(mesh, *s), meshes.param_specs()))
    b_d = jax.device_put(buffers, meshes.sharding(mesh))
    scales = channel_scales(cfg, params).astype(np.float32)
    sc = jax.device_put(scales, meshes.sharding(mesh, *_latent_last(scales.shape, mesh)))
    m = jax.device_put(np.zeros(cfg.dict_size, np.float32), meshes.sharding(mesh, *_latent_last((cfg.dict_size,), mesh)))
    bar = _bar(progress, stream.num_rows(acts) if max_rows is None else max_rows, "max pass")
    for x, _ in stream.iter_batches(acts, B, max_rows=max_rows):
        n = len(x)
        valid = np.zeros(B, np.float32)
        valid[:n] = 1
        if n < B:
            x = np.concatenate([x, np.zeros((B - n,) + x.shape[1:], x.dtype)])
        m = _max_step(p_d, b_d, sc, m, jax.device_put(x, meshes.sharding(mesh, *meshes.batch_spec())),
                      jax.device_put(valid, meshes.sharding(mesh, meshes.DATA)), cfg=cfg)
        if bar:
            bar.update(n)
    if bar:
        bar.close()
    return np.asarray(jax.device_get(m), np.float64)


def _bar(progress: bool, total, desc):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc)


def collect_examples(model, acts, *, rows: Optional[dict] = None, latents=None, max_activation=None,
                     per_bucket: int = 100,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, before: int = 24, after: int = 8,
                     batch_size: int = 4096, max_sequences: int = 256, dedup: bool = True, seed: int = 0,
                     mesh=None, max_rows: Optional[int] = None, max_state_bytes: float = 4 * 2 ** 30,
                     max_output_bytes: float = 16 * 2 ** 30, fill_chunk: int = 2048, class_names: Optional[Sequence[str]] = None, block_rows: Optional[int] = None,
                     progress: bool = False, prefetch: int = 2) -> dict:
    """Collect the examples (see the module docstring). Returns a dict with "meta", "examples"
    (column arrays, one entry per example; windows (E, W)), "latents" (per-latent columns) —
    the input of `write_examples`.

    Args:
      model: CrossCoder, (cfg, params, buffers) or a path (reference dir, workdir, tied dir).
      acts: (N, M, D) array or an ActivationStore (per-row columns read from it).
      rows: per-row columns for an array source: token_ids, sequence_ids (contiguous per
        sequence), positions, dataset_ids, token_classes; missing: one sequence per row.
      latents: indices, a boolean mask, or a `decoder.select_latents` selector ("chat-only", ...);
        None = all.
      max_activation: (F,) per-latent max of the activation (e.g. latents.parquet's
        max_activation); None = computed in an extra encode-only pass.
      per_bucket: examples per bucket (the top bucket and each reservoir).
      fractions: increasing bucket edges as fractions of the max.
      before / after: window tokens before / after the max token.
      batch_size: rows per step (whole sequences; a sequence longer than this is an error).
      max_sequences: sequences per step at most (a static shape: G).
      dedup: skip sequences whose token ids repeat an earlier sequence's.
      max_state_bytes / max_output_bytes: refuse to start above these (device state per device /
        host memory of the finished examples).
      fill_chunk: examples per step of the window fill.
    """
    t0 = time.perf_counter()
    cfg, params, buffers = load_model(model)
    F = cfg.dict_size
    info = RowInfo(acts, rows)
    N = info.num_rows
    if N is None:
        raise ValueError("collect_examples needs a row-addressable source (an (N, M, D) array or an ActivationStore)")
    if N >= 2 ** 31 - 1:
        raise ValueError(f"{N} rows: row indices are int32; collect examples over fewer rows (--max_tokens)")
    stop = N if max_rows is None else min(N, int(max_rows))
    if stop == 0:
        raise ValueError("the activation source is empty: no rows to collect examples from")
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(b <= a for a, b in zip((0.0,) + fractions, fractions)):
        raise ValueError(f"fractions must be increasing and positive, got {fractions}")
    if per_bucket < 1 or before < 0 or after < 0:
        raise ValueError("per_bucket must be >= 1, before and after >= 0")
    if isinstance(latents, str):
        latents = decoder.select_latents((cfg, params, buffers), latents)
    lat = np.arange(F) if latents is None else np.asarray(latents)
    if lat.dtype == bool:
        lat = np.flatnonzero(lat)
    lat = lat.astype(np.int32)
    if lat.size == 0:
        raise ValueError("no latents selected: nothing to collect")
    if lat.min() < 0 or lat.max() >= F:
        raise ValueError(f"latent indices must be in [0, {F})")
    mesh = mesh if mesh is not None else meshes.make_mesh()
    n_data, n_lat = meshes.axis_size(mesh, meshes.DATA), meshes.axis_size(mesh, meshes.LATENT)
    if cfg.encoder_width % n_lat:
        raise ValueError(f"dict_size {F} is not divisible by the mesh's latent axis ({n_lat})")
    B = -(-int(batch_size) // n_data) * n_data
    G = max(1, min(int(max_sequences), B))

    max_source = "given" if max_activation is not None else "pass"
    above = max_source == "given" or fractions[-1] < 1.0
    R = len(fractions) + int(above)
    ncls = len(class_names) if class_names is not None else (_token_class_count() if info.has("token_classes") else 0)
    spec = Spec(per_bucket=int(per_bucket), num_reservoirs=R, before=int(before), after=int(after),
                max_sequences=G, num_classes=ncls)
    chans = code_channels(cfg)
    C, S = len(chans), int(lat.size)
    fix = ("select latents (--latents=chat-only|base-only|exclusive|...), lower --per_bucket or the window (host "
           "output), shard latents over devices (--mesh_latent: device state)")
    need = state_bytes(S, spec) / n_lat
    if need > max_state_bytes:
        raise ValueError(f"the examples state needs {need / 2 ** 30:.2f} GiB per device ({S} latents × "
                         f"{(1 + R) * per_bucket} examples × 12 bytes), above the limit of "
                         f"{max_state_bytes / 2 ** 30:.2f} GiB (--max_state_gb): {fix}")
    out_need = output_bytes(S, spec, len(output_channels(cfg)))
    if out_need > max_output_bytes:
        raise ValueError(f"the examples may need {out_need / 2 ** 30:.2f} GiB of host memory ({S} latents × "
                         f"{(1 + R) * per_bucket} examples × window {spec.window}), above the limit of "
                         f"{max_output_bytes / 2 ** 30:.2f} GiB (--max_output_gb): {fix}")
    if max_activation is None:
        max_activation = max_activations((cfg, params, buffers), acts, batch_size=B, mesh=mesh, max_rows=stop,
                                         progress=progress)
    max_activation = np.asarray(max_activation, np.float64).reshape(-1)
    if max_activation.shape != (F,):
        raise ValueError(f"max_activation has {max_activation.size} entries; the crosscoder has {F} latents")

    lat_spec = _latent_last((S,), mesh)
    put = lambda a, spec_: jax.device_put(a, meshes.sharding(mesh, *spec_))
    p_d = jax.device_put(CrossCoderParams(*(np.asarray(a, np.float32) for a in params)),
                         jax.tree.map(lambda s: meshes.sharding(mesh, *s), meshes.param_specs()))
    b_d = jax.device_put(CrossCoderBuffers(*(np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f"
                                                else np.asarray(a) for a in buffers)), meshes.sharding(mesh))
    edges = np.asarray(fractions[:-1] if not above else fractions[:-1] + (fractions[-1] * (1 + ABOVE_MARGIN),))
    thr = max_activation[lat][None, :] * edges[:, None]
    thr = thr.reshape(-1, S).astype(np.float32)
    consts = {"latents": put(lat, lat_spec), "scales": put(channel_scales(cfg, params)[:, lat].astype(np.float32),
                                                              _latent_last((C, S), mesh)),
              "thresholds": put(thr, _latent_last(thr.shape, mesh))}
    state = {k: put(v, _latent_last(v.shape, mesh)) for k, v in _init_state(spec, S, C).items()}
    counters = {"sequences": 0, "duplicates": 0}
    M, D = cfg.num_models, cfg.activation_dim
    row_sh, x_sh = meshes.sharding(mesh, meshes.DATA), meshes.sharding(mesh, *meshes.batch_spec())
    bar = _bar(progress, stop, "examples pass")
    block = int(block_rows or max(16 * B, 1 << 16))
    gen = _batches(info, B, G, stop, dedup, counters, max(block, B))
    for bt in stream.prefetch_iter(gen, prefetch):
        x, n = bt["x"], bt["n"]
        if x.ndim != 3 or x.shape[1:] != (M, D):
            raise ValueError(f"activation batch has shape {x.shape}; the crosscoder expects (n, {M}, {D})")
        pad = B - n
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
        valid = np.r_[np.ones(n, np.float32), np.zeros(pad, np.float32)]
        fresh = np.r_[bt["fresh"], np.zeros(pad, np.float32)]
        seg = np.r_[bt["seg"], np.full(pad, G, np.int32)]
        cls = np.full(B, -1, np.int32)
        if bt["cls"] is not None:
            cls[:n] = bt["cls"]
        if not np.all(np.isfinite(np.asarray(x[:n], np.float32))):
            raise ValueError(f"activation rows {bt['row0']}..{bt['row0'] + n - 1} contain NaN or inf; clean the store")
        seg_start = bt["seg_start"].astype(np.int32)
        state = _step(p_d, b_d, consts, state, jax.device_put(x, x_sh), jax.device_put(valid, row_sh),
                      jax.device_put(fresh, row_sh), jax.device_put(seg, row_sh), seg_start,
                      jax.device_put(cls, row_sh), np.int32(bt["row0"]), seed_word(seed), cfg=cfg, spec=spec, mesh=mesh)
        if bar:
            bar.update(n)
    if bar:
        bar.close()
    st = jax.device_get(state)
    buckets = bucket_table(fractions, above)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "architecture": cfg.architecture,
        "code_normalization": cfg.code_normalization.name, "dict_size": F, "num_models": M, "activation_dim": D,
        "num_latents": S, "code_channels": list(chans), "channels": list(output_channels(cfg)),
        "channel_definitions": _channel_docs(cfg), "buckets": buckets, "fractions": list(fractions),
        "per_bucket": spec.per_bucket, "window": {"before": spec.before, "after": spec.after,
                                                                    "size": spec.window, "center_index": spec.before},
        "seed": int(seed), "dedup": bool(dedup), "max_activation_source": max_source, "num_tokens": int(stop),
        "num_sequences": counters["sequences"], "duplicate_sequences": counters["duplicates"],
        "batch_size": B, "max_sequences": G, "seconds": round(time.perf_counter() - t0, 3),
    }
    meta.update(_source_meta(acts, class_names if class_names is not None else
                             (_token_class_names() if ncls else None)))
    ex = _finalize_examples((cfg, params, buffers), info, st, spec, lat, stop, fill_chunk, progress)
    lat_cols = _latent_columns((cfg, params, buffers), st, spec, lat, max_activation, buckets, meta, stop)
    return {"meta": meta, "examples": ex, "latents": lat_cols}


def _token_class_names() -> tuple:
    from jaxcoders.analysis.stats import token_class_names

    return token_class_names()


def _token_class_count() -> int:
    return len(_token_class_names())


def _channel_docs(cfg) -> dict:
    d = {"activation": "ranking activation per token (dashboards' f·c; DECOUPLED Σ_m f_m n_m; tied Σ scaled slots)"}
    for m, name in enumerate(stream.model_names(cfg.num_models)):
        code = ("shared + " + name + " slot code" if cfg.is_tied else
                f"{name} code" if (cfg.is_batchtopk and cfg.decoupled) else "the shared code")
        d[name] = f"{name} model's contribution norm f_m·‖d_j^{name}‖ (f_m = {code})"
    if cfg.is_tied:
        d.update(slot_shared="f_shared·(n_base + n_chat)", slot_base="f_base·n_base", slot_chat="f_chat·n_chat")
    return d


def _source_meta(acts, class_names) -> dict:
    out: dict = {"token_class_names": list(class_names) if class_names else None, "source": None,
                 "models": None, "tokenizer": None, "datasets": None}
    if hasattr(acts, "metadata") and hasattr(acts, "url"):
        md = acts.metadata
        out["source"] = str(acts.url)
        out["datasets"] = list(md.get("datasets", []))
        models = (md.get("extraction") or {}).get("models")
        if models:
            out["models"] = [{k: m.get(k) for k in ("role", "name", "revision")} for m in models]
            chat = [m for m in models if m.get("role") == "chat"] or models
            out["tokenizer"] = chat[0].get("name")  # both models see the same ids (SPEC section 8)
    return out


def _latent_codes(cfg, params, buffers, pre, lat):
    """Codes (..., C) of latents `lat` (broadcast against pre) from their pre-activations: pre (...)
    (pre (..., 3) for the tied slots). The inference semantics of `encode`, one latent at a time
    (BatchTopK's threshold f·c > θ is per entry)."""
    f = jax.nn.relu(pre)
    if cfg.is_tied:
        return f
    if not cfg.is_batchtopk:
        return f[..., None]
    c = code_normalization(cfg, params.w_dec_MFD)
    if cfg.decoupled:
        return jnp.stack([f * (f * c[m][lat] > buffers.threshold[m]) for m in range(c.shape[0])], axis=-1)
    return (f * (f * c[lat] > buffers.threshold))[..., None]


def _encoder_columns(cfg, params, lat):
    """Encoder weights (M, D, *lat.shape[, 3]) and biases of latents `lat` (tied: the 3 slot columns)."""
    if cfg.is_tied:
        cols = 3 * lat[..., None] + jnp.arange(3)  # slot-minor columns 3i + k
        return params.w_enc_MDF[:, :, cols], params.b_enc_F[cols]
    return params.w_enc_MDF[:, :, lat], params.b_enc_F[lat]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _window_codes(params, buffers, x_UMD, rows_EW, lat_E, *, cfg):
    """Codes (E, C, W) of latent lat_E[e] at the rows x_UMD[rows_EW[e]]: one encoder column per
    example, E·W·M·D·C work (scattered windows of many different latents)."""
    x = normalize_input(cfg, buffers, x_UMD.astype(jnp.float32))[rows_EW]  # (E, W, M, D)
    w, b = _encoder_columns(cfg, params, lat_E)
    eq = "ewmd,mdek->ewk" if cfg.is_tied else "ewmd,mde->ew"
    pre = matmul(cfg, eq, x, w) + b[:, None]
    return jnp.moveaxis(_latent_codes(cfg, params, buffers, pre, lat_E[:, None]), -1, 1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _window_codes_dense(params, buffers, x_UMD, rows_EW, lat_L, pos_E, *, cfg):
    """The same as `_window_codes` through the dense (U, L) codes of the chunk's distinct rows and
    latents (lat_L, pos_E = example e's index into it): U·L·M·D work, for overlapping windows."""
    x = normalize_input(cfg, buffers, x_UMD.astype(jnp.float32))
    w, b = _encoder_columns(cfg, params, lat_L)
    pre = matmul(cfg, "umd,mdlk->ulk" if cfg.is_tied else "umd,mdl->ul", x, w) + b
    codes = _latent_codes(cfg, params, buffers, pre, lat_L[None, :])  # (U, L, C)
    return jnp.moveaxis(codes[rows_EW, pos_E[:, None]], -1, 1)


def _finalize_examples(model, info: RowInfo, st: dict, spec: Spec, lat: np.ndarray, N: int, chunk: int,
                       progress: bool = False) -> dict:
    """Host side: one entry per kept example, sorted by (latent, bucket id, activation desc, row); the
    window codes are recomputed from the rows (read in row order, `chunk` examples at a time)."""
    cfg, params, buffers = model
    R = spec.num_reservoirs
    g, k, s_idx = np.nonzero(np.asarray(st["score"]) != INT_MIN)
    bucket = np.where(g == 0, 0, R + 1 - g).astype(np.int8)  # group 1 + r (ascending) -> file id R - r
    value = np.asarray(st["value"])[g, k, s_idx].astype(np.float32)
    row = np.asarray(st["row"])[g, k, s_idx].astype(np.int64)
    order = np.lexsort((row, -value, bucket, lat[s_idx]))
    bucket, value, row, latent = bucket[order], value[order], row[order], lat[s_idx[order]]
    E, W, C = latent.size, spec.window, len(code_channels(cfg))
    rank = np.zeros(E, np.int16)
    if E:
        grp = np.r_[True, (latent[1:] != latent[:-1]) | (bucket[1:] != bucket[:-1])]
        starts = np.flatnonzero(grp)
        rank = (np.arange(E) - np.repeat(starts, np.diff(np.r_[starts, E]))).astype(np.int16)
    offsets = np.arange(-spec.before, spec.after + 1)
    out = {"sequence_id": np.full(E, -1, np.int64), "position": np.full(E, -1, np.int32),
           "dataset_id": np.full(E, -1, np.int16), "token_class": np.full(E, -1, np.int16),
           "token_ids": np.full((E, W), -1, np.int32)}
    chans = {f"act_{c}": np.zeros((E, W), np.float32) for c in output_channels(cfg)}
    p_d = CrossCoderParams(*(jnp.asarray(a, jnp.float32) for a in params))
    b_d = CrossCoderBuffers(*(jnp.asarray(a) for a in buffers))
    by_row = np.argsort(row, kind="stable")
    norms_scales = (np.linalg.norm(np.asarray(params.w_dec_MFD, np.float64), axis=-1), channel_scales(cfg, params))
    M, D = cfg.num_models, cfg.activation_dim
    chunk = int(max(16, min(chunk, 2 ** 28 // (W * M * D * 4))))  # device temporaries <= 256 MiB
    bar = _bar(progress, E, "windows") if E else None
    for a in range(0, E, chunk):
        idx = by_row[a:a + chunk]
        n = idx.size
        wrows = row[idx, None] + offsets[None]
        inside = (wrows >= 0) & (wrows < N)
        uniq = np.unique(np.r_[wrows[inside], row[idx]])
        look = {name: info.get(name, uniq) for name in ROW_COLUMNS if info.has(name) or name == "sequence_ids"}
        at = lambda name, r_: np.asarray(look[name])[np.minimum(np.searchsorted(uniq, r_), uniq.size - 1)]
        seq_c = at("sequence_ids", row[idx])
        same = inside & (at("sequence_ids", wrows) == seq_c[:, None])
        x_u = info.read_rows(uniq)  # the rows this chunk's windows need, read once, gathered on device
        u_pad = 1 << max(int(uniq.size - 1).bit_length(), 4)  # few compiled shapes
        x_u = np.concatenate([x_u, np.zeros((u_pad - uniq.size,) + x_u.shape[1:], x_u.dtype)])
        widx = np.zeros((chunk, W), np.int32)
        widx[:n] = np.minimum(np.searchsorted(uniq, wrows), uniq.size - 1)
        lat_u, pos = np.unique(latent[idx], return_inverse=True)
        l_pad = 1 << max(int(lat_u.size - 1).bit_length(), 4)
        if u_pad * l_pad <= 4 * chunk * W:  # overlapping windows: encode the distinct rows × latents densely
            lat_l = np.zeros(l_pad, np.int32)
            lat_l[:lat_u.size] = lat_u
            pos_e = np.zeros(chunk, np.int32)
            pos_e[:n] = pos.reshape(-1)
            codes = _window_codes_dense(p_d, b_d, x_u, widx, lat_l, pos_e, cfg=cfg)
        else:
            lat_e = np.zeros(chunk, np.int32)
            lat_e[:n] = latent[idx]
            codes = _window_codes(p_d, b_d, x_u, widx, lat_e, cfg=cfg)
        codes = np.asarray(codes)[:n] * same[:, None]
        for key, v in channel_values(cfg, params, codes, latent[idx], norms_scales).items():
            chans[f"act_{key}"][idx] = v
        out["sequence_id"][idx] = seq_c
        for name, key in (("positions", "position"), ("dataset_ids", "dataset_id"), ("token_classes", "token_class")):
            if name in look:
                out[key][idx] = at(name, row[idx])
        tok = at("token_ids", wrows) if "token_ids" in look else np.full(wrows.shape, -2)  # -2: id unknown
        out["token_ids"][idx] = np.where(same, tok, -1)
        if bar:
            bar.update(n)
    if bar:
        bar.close()
    return {"latent": latent.astype(np.int32), "bucket": bucket, "rank": rank, "activation": value, "row": row,
            **out, **chans}


def _latent_columns(model, st, spec, lat, max_activation, buckets, meta, num_tokens) -> dict:
    cfg = model[0]
    cols: dict = {"latent": lat.astype(np.int32), "max_activation": max_activation[lat],
                  "observed_max_activation": np.asarray(st["observed_max"], np.float64)}
    cnt = np.asarray(st["count_active"], np.float64)
    cols["count_active"] = cnt.astype(np.int64)
    cols["frequency"] = cnt / max(num_tokens, 1)
    names = meta.get("token_class_names")
    if names:
        cc = np.asarray(st["count_class"], np.int64)
        for i, cname in enumerate(names):
            cols[f"count_{cname}"] = cc[i]
        if "template" in names:
            with np.errstate(invalid="ignore", divide="ignore"):
                cols["template_share"] = np.where(cnt > 0, cc[names.index("template")] / cnt, np.nan)
    code = np.asarray(st["count_code"], np.int64)
    chans = code_channels(cfg)
    if len(chans) > 1:
        for i, c in enumerate(chans):
            cols[f"count_{'slot_' if cfg.is_tied else 'model_'}{c}"] = code[i]
    if cfg.is_tied:
        from jaxcoders.core.tied import slot_ratio

        cols["r_base"] = slot_ratio(code[1], code[0])
        cols["r_chat"] = slot_ratio(code[2], code[0])
    pop = np.asarray(st["population"], np.int64)  # [top (all), reservoirs ascending]
    R = spec.num_reservoirs
    for b in buckets:
        src = pop[0] if b["id"] == 0 else pop[1 + (R - b["id"])]
        cols[f"population_{b['name']}"] = src
        cols[f"sampled_{b['name']}"] = np.minimum(src, spec.per_bucket)
    dm = decoder.decoder_metrics(model, nearest=False)
    for k in ("norm_base", "norm_chat", "delta_norm", "tag", "decoder_cos"):
        if k in dm:
            cols[k] = np.asarray(dm[k])[lat]
    return cols


# ----------------------------------------------------------------------------- files


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
