"""Exact batch top-k over candidates only: `select_entries` (index lists) and `select_mask`.

A strided sample of the scores brackets the cut from below; one fused pass packs the entries above
the bracket into a bitmap; the selection method of `jaxcoders.core.selection.exact` then runs on
those candidates only (docs/selection.md). Bit for bit the mask of `exact.batch_topk_mask`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxcoders.core.selection.exact import check_index_limits, keep_count, score_keys, select_local


def _pack_bits(pred_W32: jax.Array) -> jax.Array:
    """(W, 32) bool -> (W,) uint32 with bit i = pred[:, i]."""
    weights = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
    return jnp.sum(jnp.where(pred_W32, weights, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)


def _select_bit(words: jax.Array, r: jax.Array) -> jax.Array:
    """Position of the r-th (0-based) set bit of each uint32 word (binary search with popcounts)."""
    pos = jnp.zeros(words.shape, jnp.int32)
    for width in (16, 8, 4, 2, 1):
        low = words & jnp.uint32((1 << width) - 1)
        c = lax.population_count(low).astype(jnp.int32)
        high = r >= c
        r = jnp.where(high, r - c, r)
        words = jnp.where(high, words >> jnp.uint32(width), low)
        pos = jnp.where(high, pos + width, pos)
    return pos


def _bitmap(pred_N: jax.Array):
    """Packed bitmap of a flat bool array: (words, per-word counts, inclusive cumsum of counts)."""
    pad = (-pred_N.shape[0]) % 32
    if pad:
        pred_N = jnp.concatenate([pred_N, jnp.zeros((pad,), bool)])
    words = _pack_bits(pred_N.reshape(-1, 32))
    cnt = lax.population_count(words).astype(jnp.int32)
    return words, cnt, jnp.cumsum(cnt)


def _compact_bitmap(words, cnt, cs, n_cap: int) -> tuple[jax.Array, jax.Array]:
    q = jnp.arange(n_cap, dtype=jnp.int32)
    w = jnp.minimum(jnp.searchsorted(cs, q, side="right").astype(jnp.int32), words.shape[0] - 1)
    r = q - (cs[w] - cnt[w])  # rank of slot q inside its word
    idx = w * 32 + _select_bit(words[w], r)
    valid = q < cs[-1]
    return jnp.where(valid, idx, 0), valid


def compact_mask(mask: jax.Array, n_cap: int) -> tuple[jax.Array, jax.Array]:
    """Flat indices (row-major) of the first `n_cap` True entries, ascending, and their validity.

    XLA:CPU's cumsum over millions of entries is slow (~10 ns/entry), so there is none: the mask
    is packed into uint32 words (one reduction pass), the per-word popcounts are prefix-summed
    (N/32 entries), each output slot finds its word by binary search and its bit by a 5-step
    popcount search."""
    return _compact_bitmap(*_bitmap(mask.reshape(-1)), n_cap)


# Sampled bracket of the selection (see `select_entries`): about this many sample points lie above
# the cut, and the bracket is placed this many standard deviations (of the sampled count) below it.
_SAMPLE_ABOVE = 1024


_BRACKET_SIGMAS = 4.0


def _bracket_params(N: int, F: int, n_cap: int):
    """Static stride of the sample (coprime with F, so every row is sampled evenly), the sample's
    top-K size, and the candidate capacity."""
    stride = max(1, n_cap // _SAMPLE_ABOVE) | 1
    while math.gcd(stride, F) != 1:
        stride += 2
    n_sample = -(-N // stride)
    r_max = n_cap / stride
    k_sample = min(n_sample, int(math.ceil(r_max + _BRACKET_SIGMAS * math.sqrt(r_max) + 8)))
    cap = min(N, n_cap + n_cap // 4 + 64)
    return stride, k_sample, cap


def _sort_entries(idx: jax.Array, valid, N: int):
    """Sort selected flat indices ascending; invalid slots (traced k) first, marked by validity."""
    if valid is None:
        idx = jnp.sort(idx)
        return idx, jnp.ones(idx.shape, bool)
    tagged = jnp.sort(jnp.where(valid, idx, idx - N))  # invalid -> negative (N < 2^31)
    valid = tagged >= 0
    return jnp.where(valid, tagged, tagged + N), valid


def select_entries(values_BF: jax.Array, k, *, k_cap: Optional[int] = None, method: str = "topk",
                   transform: Optional[Callable] = None):
    """The entries of `selection.batch_topk_mask(scores_BF, k, ...)` as index lists.

    scores = values_BF, or `transform(values, j)` when given: an elementwise function of the values
    and their column (latent) index j, e.g. `lambda v, j: relu(v + b_enc[j]) * c[j]` on the encoder
    matmul's output. It is evaluated lazily inside each pass, so the (B, F) score matrix is never
    written to memory (on XLA:CPU under load each (B, F) f32 pass costs as much as all the sparse
    ops together).

    Returns (b_idx, j_idx, valid), each of static length n_cap = min(k·B, B·F) (k_cap·B under a
    traced k), sorted by flat index b·F + j (the slots beyond k·B of a traced k come first, with
    `valid` False and index 0).

    Exact, and cheaper than running the method on all B·F scores: a strided sample of the scores
    (~1024·stride = n_cap entries of it above the cut) gives a value `lo` four standard deviations
    of the sampled count below the cut; one fused pass packs the entries >= lo into a bitmap and
    counts them; if the count lies in [k·B, 1.25·n_cap] (it does unless the sample was very
    unlucky) those candidates are compacted and `method` selects exactly among them (`lax.top_k`
    for "topk", the radix select for "radix"/"pallas"). Candidates stay in flat order, so the tie
    rule (lower flat index first) is the dense one. Otherwise (`lax.cond`) `method` runs on the
    whole matrix."""
    B, F = values_BF.shape
    N = B * F
    check_index_limits(N)
    n_keep = keep_count(k, k_cap, B, N)
    static = isinstance(n_keep, int)
    n_cap = n_keep if static else min(k_cap * B, N)
    values = lax.stop_gradient(values_BF)
    transform = transform if transform is not None else (lambda v, j: v)

    def scores_all():
        return transform(values, jnp.arange(F, dtype=jnp.int32)[None, :]).reshape(-1)

    def scores_at(flat_idx):
        return transform(values.reshape(-1)[flat_idx], flat_idx % F)

    stride, k_sample, cap = _bracket_params(N, F, n_cap)
    pad_value = lax.bitcast_convert_type(jnp.int32(-1), jnp.float32)  # -NaN: smallest in total order

    def exact(cand, cand_idx):
        """The n_cap largest of `cand` (float scores in flat order; cand_idx their flat indices,
        None = identity) under `method`, as (flat indices, validity or None if all valid)."""
        if method == "topk":
            _, pos = lax.top_k(cand, n_cap)  # descending, ties to the lower position
            valid = None if static else jnp.arange(n_cap) < n_keep
        else:
            kk = n_keep if static else jnp.asarray(n_keep, jnp.int32)
            mask = select_local(cand[None, :], kk, k_cap=None if static else n_cap, method=method)
            pos, valid = compact_mask(mask, n_cap)
        return (pos if cand_idx is None else cand_idx[pos]), valid

    if cap >= N or n_cap == 0:  # small problem: no bracket
        idx, valid = exact(scores_all(), None)
    else:
        sample_top = lax.top_k(scores_at(jnp.arange(0, N, stride, dtype=jnp.int32)), k_sample)[0]
        r = jnp.asarray(n_keep, jnp.float32) / stride
        r_hi = jnp.ceil(r + _BRACKET_SIGMAS * jnp.sqrt(r) + 8).astype(jnp.int32)
        # the r_hi-th largest sample value, as a masked min: a static index into top_k's output
        # makes XLA:CPU rewrite the top_k into a full sort (~30x slower here)
        lo = jnp.min(jnp.where(jnp.arange(k_sample) < r_hi, sample_top, jnp.inf))
        words, cnt, cs = _bitmap(score_keys(scores_all()) >= score_keys(lo))  # one fused pass
        ok = (cs[-1] >= n_keep) & (cs[-1] <= cap)

        def bracketed():
            cand_idx, cand_valid = _compact_bitmap(words, cnt, cs, cap)
            cand = jnp.where(cand_valid, scores_at(cand_idx), pad_value)
            idx, valid = exact(cand, cand_idx)
            return idx, (jnp.ones((n_cap,), bool) if valid is None else valid)

        def whole():
            idx, valid = exact(scores_all(), None)
            return idx, (jnp.ones((n_cap,), bool) if valid is None else valid)

        idx, valid = lax.cond(ok, bracketed, whole)
        if static and method == "topk":
            valid = None
    idx, valid = _sort_entries(idx.astype(jnp.int32), valid, N)
    idx = jnp.where(valid, idx, 0)  # invalid slots (first after the sort) point at entry 0: b stays sorted
    return idx // F, idx % F, valid


def select_mask(values_BF: jax.Array, k, *, k_cap: Optional[int] = None, method: str = "topk",
                transform: Optional[Callable] = None) -> jax.Array:
    """`exact.batch_topk_mask` (bitwise the same mask) computed through `select_entries` (same
    `transform`); the dense BatchTopK path uses it too (measured at D=512 F=8192 B=2048 under load:
    lax.top_k 150-400 ms -> 20-60 ms)."""
    B, F = values_BF.shape
    b_idx, j_idx, valid = select_entries(values_BF, k, k_cap=k_cap, method=method, transform=transform)
    return jnp.zeros((B * F,), bool).at[b_idx * F + j_idx].max(valid, mode="promise_in_bounds").reshape(B, F)
