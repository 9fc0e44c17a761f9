"""BatchTopK selection: which entries of a (B, F) score matrix survive batch-global top-k.

Training-mode BatchTopK keeps the `k * B` largest entries of the whole score matrix (not per
token; docs/method.md §3). The selection is not differentiated: callers multiply the unscaled code by
the boolean mask, so gradients flow to the kept entries only (`batch_topk` packages that as a
custom_vjp whose backward is `g * mask`).

Tie rule (deterministic, documented): among entries equal to the cut value, those with the
smaller flat index (row-major over (B, F)) are kept first. `lax.top_k` orders equal values by
index, which gives exactly this rule; every method below reproduces it bit for bit. Values are
ordered by IEEE total order (as `lax.top_k` does on CPU): -0.0 < +0.0, NaN above +inf.

Methods (all exact, all accept a traced `k` with a static `k_cap`):
  "topk":   `lax.top_k` over the flattened matrix (the reference method; a partial sort).
  "radix":  no sort. The scores' int32 total-order keys are refined by radix select, 16-bit
            digits => 2 counting passes, each a 65536-bin XLA scatter-add histogram (the CPU path;
            on TPU/GPU a scatter serialises or contends on hot bins, e.g. all ReLU zeros), which
            gives the cut value v and c_gt = #{> v}; then the tie rule keeps the first
            n_keep - c_gt entries equal to v (one row-count pass, only when ties straddle the cut).
  "pallas": the same radix select with the counting pass as a Pallas kernel
            (`jaxcoders.core.selection.pallas.digit_histogram`: 4-bit digits, 8 passes, no scatter: the TPU path);
            interpret mode on CPU.
`batch_topk_mask_sharded` does the same under `jax.shard_map` with the batch and/or latent axis
sharded: local histograms are psum'ed (radix: 2 x 256 KiB; pallas: 8 x 64 B), one global cut, the
same global tie rule (an all-gather of B x n_latent int32 tie counts, only when ties straddle it).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxcoders.config import SELECTION_METHODS
from jaxcoders.core.selection import pallas as pallas_kernel

METHODS = SELECTION_METHODS

_INT32_MAX = 2**31 - 1
_INT32_MIN = -(2**31)


def check_index_limits(num_entries: int) -> None:
    """Index-based selection needs flat indices that fit int32 (checked at trace time)."""
    if num_entries > _INT32_MAX:
        raise ValueError(
            f"batch top-k over {num_entries} entries exceeds the int32 index limit (2^31 - 1); "
            "use a smaller batch per device or shard the latent axis"
        )


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {METHODS}")


def score_keys(scores: jax.Array) -> jax.Array:
    """int32 keys whose signed order is the IEEE total order of the float32 scores.

    Non-negative floats keep their bit pattern (already order-preserving); negative ones get their
    magnitude bits flipped. bf16/f16 are widened to f32 first (exact)."""
    scores = _as_f32(scores)
    raw = lax.bitcast_convert_type(scores, jnp.int32)
    return raw ^ ((raw >> 31) & 0x7FFFFFFF)


def _as_f32(scores: jax.Array) -> jax.Array:
    if not jnp.issubdtype(scores.dtype, jnp.floating) or jnp.dtype(scores.dtype).itemsize > 4:
        raise ValueError(
            f"radix selection needs float32/bfloat16/float16 scores, got {scores.dtype}; "
            'cast the scores or use method="topk"'
        )
    return scores.astype(jnp.float32)


def keep_count(k, k_cap: Optional[int], B: int, N: int):
    """Number of entries to keep: a Python int (static k) or an int32 scalar (traced k)."""
    if isinstance(k, int) and k_cap is None:
        return max(0, min(k * B, N))
    if k_cap is None:
        raise ValueError("a traced k needs a static k_cap")
    n_cap = min(k_cap * B, N)
    return jnp.clip(jnp.asarray(k, jnp.int32) * B, 0, n_cap)


# ----------------------------------------------------------------------------- counting passes


def _jnp_histogram(scores: jax.Array, lo: jax.Array, shift, bits: int) -> jax.Array:
    """int32 (2**bits,) counts of digit `(key - lo) >> shift`; keys outside the window dropped."""
    nbins = 1 << bits
    rel = lax.bitcast_convert_type(score_keys(scores) - lo, jnp.uint32)  # wraps: window -> [0, 2^(s+b))
    digit = jnp.minimum(rel >> jnp.asarray(shift, jnp.uint32), jnp.uint32(nbins))  # outside -> dropped
    return jnp.zeros((nbins,), jnp.int32).at[digit.astype(jnp.int32).reshape(-1)].add(1, mode="drop")


def _pallas_histogram(scores: jax.Array, lo: jax.Array, shift, bits: int) -> jax.Array:
    return pallas_kernel.digit_histogram(_as_f32(scores), lo, shift, bits)


_HISTOGRAMS: dict[str, Callable] = {"radix": _jnp_histogram, "pallas": _pallas_histogram}
# Digit width per method; passes run MSB first and tile bits 31..0 (32 % bits == 0).
_DIGIT_BITS = {"radix": 16, "pallas": 4}


def _pick_digit(hist: jax.Array, above: jax.Array, n_keep):
    """Largest d with ge[d] = above + sum(hist[d:]) >= n_keep (0 if none), and ge[d].

    Suffix sums as a masked (n, n) reduction, not a scan (cheaper to compile and run for
    n <= 256); wide digits (65536 bins) go through two levels of 256."""
    nbins = hist.shape[0]
    if nbins > 256:
        H = hist.reshape(nbins // 256, 256)
        row_tot = jnp.sum(H, axis=1)
        i, ge_i = _pick_digit(row_tot, above, n_keep)
        d, ge_d = _pick_digit(H[i], ge_i - row_tot[i], n_keep)
        return i * 256 + d, ge_d
    upper = jnp.arange(nbins)[None, :] >= jnp.arange(nbins)[:, None]  # suffix sums without a scan
    ge = above + jnp.sum(jnp.where(upper, hist[None, :], 0), axis=1)  # #{key >= lo + (d << shift)}
    d = jnp.maximum(jnp.sum(ge >= n_keep, dtype=jnp.int32) - 1, 0)
    return d, ge[d]


def radix_select(
    scores: jax.Array,
    n_keep,
    *,
    histogram: Callable = _jnp_histogram,
    bits: int = 16,
    allreduce: Callable = lambda h: h,
):
    """Cut key of the `n_keep` largest scores by MSB-first radix select (counting passes only).

    Invariant: #{key >= lo} >= n_keep and `above` = #{key above the current window}. Each pass
    histograms the next `bits`-bit digit inside the window and picks the largest digit d with
    above + #{digit >= d} >= n_keep. The 32 / bits passes run in a `fori_loop` (the shift is
    traced, so the counting pass is traced and compiled once). `allreduce` sums the histograms
    over shards (sharded form). Returns int32 scalars (v, c_gt, c_eq): the cut key, #{key > v},
    #{key == v}. n_keep == 0 gives v = INT32_MAX and c_gt = 0 (nothing is kept)."""
    if 32 % bits:
        raise ValueError(f"digit width {bits} must divide 32")

    def one_pass(p, carry):
        lo, above, _ = carry
        shift = 32 - bits * (p + 1)
        hist = allreduce(histogram(scores, lo, shift, bits))
        d, ge_d = _pick_digit(hist, above, n_keep)
        c_eq = hist[d]
        return lo + (d << shift), ge_d - c_eq, c_eq  # int32 wrap-around in lo is intended

    init = (jnp.int32(_INT32_MIN), jnp.int32(0), jnp.int32(0))
    return lax.fori_loop(0, 32 // bits, one_pass, init)


# ----------------------------------------------------------------------------- tie rule + mask


def _gather(x: jax.Array, axis: Optional[str]) -> jax.Array:
    return x[None] if axis is None else lax.all_gather(x, axis)


def _index(axis: Optional[str]):
    return jnp.int32(0) if axis is None else lax.axis_index(axis).astype(jnp.int32)


def _size(axis: Optional[str]) -> int:
    return 1 if axis is None else lax.axis_size(axis)


def _mask_from_cut(
    keys_BF: jax.Array,
    v: jax.Array,
    r: jax.Array,
    c_eq: jax.Array,
    data_axis: Optional[str] = None,
    latent_axis: Optional[str] = None,
) -> jax.Array:
    """Mask = (key > v) | (key == v and among the first r such entries in global flat order).

    Global flat order is row-major over (B, F); with the latent axis sharded over L shards a
    global row b is split into L segments (b, j), ordered b-major. The per-(row, shard) counts of
    ties are all-gathered (B * L int32) so every shard finds the segment s* holding the r-th tie;
    the owner of s* cuts inside its row by a local cumsum; no further communication.
    Unsharded (axes None) this is the same computation with L = 1."""
    Bl, Fl = keys_BF.shape
    nl = _size(latent_axis)
    i, j = _index(data_axis), _index(latent_axis)

    def cut_inside():
        eq = keys_BF == v
        row = jnp.sum(eq, axis=1, dtype=jnp.int32)  # (Bl,)
        table = _gather(_gather(row, latent_axis), data_axis)  # (nd, nl, Bl)
        seg = jnp.transpose(table, (0, 2, 1)).reshape(-1)  # segments in global flat order
        csum = jnp.cumsum(seg)
        s = jnp.minimum(jnp.sum(csum < r, dtype=jnp.int32), seg.shape[0] - 1)
        need = r - (csum[s] - seg[s])  # ties to keep inside segment s
        bl = (s // nl) % Bl  # meaningful only on the owner shard of s
        row_eq = lax.dynamic_index_in_dim(eq, bl, 0, keepdims=False).astype(jnp.int32)
        col = jnp.sum(jnp.cumsum(row_eq) < need, dtype=jnp.int32)
        return s, col

    def keep_all():
        out = jnp.int32(_size(data_axis) * Bl * nl), jnp.int32(0)
        axes = tuple(a for a in (data_axis, latent_axis) if a is not None)
        return tuple(lax.pcast(o, axes, to="varying") for o in out) if axes else out

    s, col = lax.cond(r >= c_eq, keep_all, cut_inside)
    s = jnp.where(r <= 0, -1, s)
    rows = lax.broadcasted_iota(jnp.int32, (Bl, Fl), 0)
    cols = lax.broadcasted_iota(jnp.int32, (Bl, Fl), 1)
    seg_id = (i * Bl + rows) * nl + j
    keep_tie = (seg_id < s) | ((seg_id == s) & (cols <= col))
    return (keys_BF > v) | ((keys_BF == v) & keep_tie)


def _topk_cut(keys_BF, n_keep, n_cap: int, axes: tuple[str, ...]):
    """(v, c_gt, c_eq) from candidates: each shard's local top values, all-gathered."""
    flat = keys_BF.reshape(-1)
    n_loc = min(n_cap, flat.shape[0])
    cand = lax.top_k(flat, n_loc)[0] if n_loc > 0 else flat[:0]
    if axes:
        cand = lax.all_gather(cand, axes, tiled=True)
    n_top = min(n_cap, cand.shape[0])
    if n_top == 0:
        v = jnp.int32(_INT32_MAX)
    else:
        top = lax.top_k(cand, n_top)[0]
        v = jnp.where(n_keep > 0, top[jnp.clip(n_keep - 1, 0, n_top - 1)], _INT32_MAX)
    c_gt = jnp.sum(keys_BF > v, dtype=jnp.int32)
    c_eq = jnp.sum(keys_BF == v, dtype=jnp.int32)
    if axes:
        c_gt, c_eq = lax.psum(c_gt, axes), lax.psum(c_eq, axes)
    return v, c_gt, c_eq


def select_local(
    scores_BF: jax.Array,
    k,
    *,
    k_cap: Optional[int],
    method: str,
    data_axis: Optional[str] = None,
    latent_axis: Optional[str] = None,
) -> jax.Array:
    """Mask of one (local) block; with axis names, the selection is over the global matrix."""
    Bl, Fl = scores_BF.shape
    B, F = Bl * _size(data_axis), Fl * _size(latent_axis)
    check_index_limits(B * F)
    n_keep = keep_count(k, k_cap, B, B * F)
    n_cap = n_keep if isinstance(n_keep, int) else min(k_cap * B, B * F)
    axes = tuple(a for a in (data_axis, latent_axis) if a is not None)
    keys = score_keys(scores_BF)
    if method == "topk":
        v, c_gt, c_eq = _topk_cut(keys, n_keep, n_cap, axes)
    else:
        allreduce = (lambda h: lax.psum(h, axes)) if axes else (lambda h: h)
        v, c_gt, c_eq = radix_select(
            scores_BF, n_keep, histogram=_HISTOGRAMS[method], bits=_DIGIT_BITS[method],
            allreduce=allreduce,
        )
    r = n_keep - c_gt  # ties to keep, in [0, c_eq]
    return _mask_from_cut(keys, v, r, c_eq, data_axis, latent_axis)


# ----------------------------------------------------------------------------- public API


def _topk_mask(scores_BF: jax.Array, k, k_cap: Optional[int]) -> jax.Array:
    B, F = scores_BF.shape
    flat = scores_BF.reshape(-1)
    if isinstance(k, int) and k_cap is None:
        n_keep = min(k * B, B * F)
        _, idx = jax.lax.top_k(flat, n_keep)
        mask = jnp.zeros((B * F,), bool).at[idx].set(True)
        return mask.reshape(B, F)
    if k_cap is None:
        raise ValueError("a traced k needs a static k_cap")
    n_cap = min(k_cap * B, B * F)
    _, idx = jax.lax.top_k(flat, n_cap)  # sorted descending, ties by index
    n_keep = jnp.minimum(jnp.asarray(k, jnp.int32) * B, n_cap)
    keep = jnp.arange(n_cap) < n_keep
    mask = jnp.zeros((B * F,), bool).at[idx].max(keep)
    return mask.reshape(B, F)


def batch_topk_mask(
    scores_BF: jax.Array,
    k: int | jax.Array,
    *,
    k_cap: Optional[int] = None,
    method: str = "topk",
) -> jax.Array:
    """Boolean mask (B, F) of the `k * B` largest entries of `scores_BF`.

    Args:
      scores_BF: (B, F) float scores (e.g. ReLU code times code normalization), >= 0.
      k: per-token budget; a Python int, or a traced int32 scalar when `k_cap` is given
        (k-annealing changes k every step without recompiling).
      k_cap: static upper bound on `k` (needed when `k` is traced; larger k is clipped to it).
      method: selection method, one of `METHODS` (same mask for every method).
    Returns:
      bool (B, F), exactly `min(k * B, B * F)` entries True.
    """
    _check_method(method)
    B, F = scores_BF.shape
    check_index_limits(B * F)
    if method == "topk":
        return _topk_mask(scores_BF, k, k_cap)
    # jit so that eager callers compile the passes once (inlined when already under jit)
    if isinstance(k, int) and k_cap is None:
        return _select_static_k(scores_BF, k, method=method)
    return _select_traced_k(scores_BF, k, k_cap=k_cap, method=method)


_select_static_k = jax.jit(
    lambda s, k, method: select_local(s, k, k_cap=None, method=method), static_argnums=(1, 2))
_select_traced_k = jax.jit(
    lambda s, k, k_cap, method: select_local(s, k, k_cap=k_cap, method=method), static_argnums=(2, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_topk(f_BF, scores_BF, k, k_cap, method):
    return f_BF * batch_topk_mask(lax.stop_gradient(scores_BF), k, k_cap=k_cap, method=method)


def _batch_topk_fwd(f_BF, scores_BF, k, k_cap, method):
    mask = batch_topk_mask(scores_BF, k, k_cap=k_cap, method=method)
    return f_BF * mask, mask


def _batch_topk_bwd(k_cap, method, mask, g):
    return g * mask, None, None  # no gradient through the selection


_batch_topk.defvjp(_batch_topk_fwd, _batch_topk_bwd)


def batch_topk(
    f_BF: jax.Array,
    scores_BF: jax.Array,
    k: int | jax.Array,
    *,
    k_cap: Optional[int] = None,
    method: str = "topk",
) -> jax.Array:
    """`f_BF * batch_topk_mask(scores_BF, k)`; the backward is `g * mask` (scores get no gradient).

    The custom_vjp keeps the selection out of autodiff (no top_k/scatter transpose in the
    backward pass); the result equals autodiff through a `lax.top_k` selection."""
    _check_method(method)
    return _batch_topk(f_BF, scores_BF, k, k_cap, method)


def batch_topk_mask_local(
    scores_BF: jax.Array,
    k: int | jax.Array,
    *,
    k_cap: Optional[int] = None,
    method: str = "radix",
    data_axis: Optional[str] = "data",
    latent_axis: Optional[str] = "latent",
) -> jax.Array:
    """Inside `shard_map`: this shard's block of the global batch top-k mask.

    `scores_BF` is the local (B / n_data, F / n_latent) block of a matrix sharded as
    P(data_axis, latent_axis) (an axis name of None = that dimension is not sharded); `k` is per
    token of the global batch. Exact: equals `batch_topk_mask` of the global matrix.
    Communication per call (S shards): "radix" 2 psums of a 65536-bin int32 histogram
    (256 KiB each), "pallas" 8 psums of 16 int32; "topk" an all-gather of each shard's top
    min(n_cap, local size) int32 keys (n_cap = min(k_cap or k, F) * B; S x that per device) and
    2 scalar psums. Plus, only when ties straddle the cut (a `cond` on a replicated predicate),
    an all-gather of the B x n_latent int32 per-(row, latent-shard) tie counts.
    With method "pallas" in interpret mode (CPU), the enclosing shard_map needs check_vma=False."""
    _check_method(method)
    return select_local(scores_BF, k, k_cap=k_cap, method=method,
                         data_axis=data_axis, latent_axis=latent_axis)


def batch_topk_mask_sharded(
    scores_BF: jax.Array,
    k: int | jax.Array,
    *,
    mesh: Mesh,
    k_cap: Optional[int] = None,
    method: str = "radix",
    data_axis: Optional[str] = "data",
    latent_axis: Optional[str] = "latent",
) -> jax.Array:
    """Global batch top-k mask of a (B, F) matrix sharded P(data_axis, latent_axis) on `mesh`.

    Runs `batch_topk_mask_local` under `jax.shard_map`; the mask comes back with the same
    sharding and equals the unsharded `batch_topk_mask(scores_BF, k, k_cap=k_cap)` exactly."""
    _check_method(method)
    spec = P(data_axis, latent_axis)
    body = functools.partial(batch_topk_mask_local, k_cap=k_cap, method=method,
                             data_axis=data_axis, latent_axis=latent_axis)
    # Pallas interpret mode (CPU) trips shard_map's varying-axes check inside the kernel's loop.
    smap = functools.partial(jax.shard_map, mesh=mesh, out_specs=spec, check_vma=method != "pallas")
    if isinstance(k, int) and k_cap is None:
        return jax.jit(smap(lambda s: body(s, k), in_specs=spec))(scores_BF)
    return jax.jit(smap(body, in_specs=(spec, P())))(scores_BF, jnp.asarray(k, jnp.int32))


def _row_topk_mask_local(scores_BF: jax.Array, kk: int, latent_axis: Optional[str]) -> jax.Array:
    """This (row block, column block)'s part of the per-row top-kk mask; columns may be sharded
    over `latent_axis` (shard j holds columns j*Fl ... (j+1)*Fl - 1)."""
    Bl, Fl = scores_BF.shape
    cand = lax.top_k(scores_BF, min(kk, Fl))[0]  # (Bl, <=kk): this shard's best per row
    if latent_axis is not None:
        cand = lax.all_gather(cand, latent_axis, axis=1, tiled=True)  # (Bl, l * <=kk)
    v_B1 = lax.top_k(cand, kk)[0][:, -1:]  # the kk-th largest of the whole row
    above = scores_BF > v_B1
    n_above = jnp.sum(above, axis=1, keepdims=True, dtype=jnp.int32)
    tie = scores_BF == v_B1
    n_tie = jnp.sum(tie, axis=1, keepdims=True, dtype=jnp.int32)
    before = jnp.zeros_like(n_tie)  # ties in the shards left of this one
    if latent_axis is not None:
        n_above = lax.psum(n_above, latent_axis)
        ties = lax.all_gather(n_tie[:, 0], latent_axis, axis=1)  # (Bl, l)
        j = lax.axis_index(latent_axis)
        before = jnp.sum(jnp.where(jnp.arange(ties.shape[1]) < j, ties, 0), axis=1, keepdims=True)
    need = kk - n_above
    return above | (tie & (before + jnp.cumsum(tie, axis=1, dtype=jnp.int32) <= need))


def row_topk_mask(scores_BF: jax.Array, kk: int, *, mesh: Optional[Mesh] = None,
                  data_axis: str = "data", latent_axis: str = "latent") -> jax.Array:
    """bool (B, F): per row, the kk positions `lax.top_k(scores_BF, kk)` returns (ties at the cut
    go to the lower column index, as lax.top_k orders them). kk <= F, static.

    Built from the kk-th value and cumulative tie counts rather than by scattering indices: XLA
    all-gathers the whole (B, F) matrix for a scatter or a row top_k on a batch-sharded operand.
    With a `mesh` of more than one device it runs under shard_map on P(data, latent) blocks: each
    latent shard contributes its per-row top-kk candidates (all-gathered: (B/d, l·kk) values)
    and its per-row tie counts (B/d × l int32); the mask keeps the input's sharding.
    NaN-free scores assumed (-inf allowed)."""
    if mesh is None or mesh.size == 1:
        return _row_topk_mask_local(scores_BF, kk, None)
    spec = P(data_axis, latent_axis)
    lat = latent_axis if mesh.shape[latent_axis] > 1 else None
    fn = jax.shard_map(functools.partial(_row_topk_mask_local, kk=kk, latent_axis=lat), mesh=mesh,
                       in_specs=spec, out_specs=spec)
    return fn(scores_BF)


def _benchmark(B: int = 1024, F: int = 8192, ks=(32, 100), methods=("topk", "radix"), repeats: int = 9):
    """`python -m jaxcoders.selection [B F]`: one JSON line per (method, k, k static/traced).

    ReLU'd normal scores; jit, one warm-up call each, then `repeats` rounds that time every
    configuration once (interleaved, so a busy machine slows all alike); median and min wall ms."""
    import json
    import os
    import time

    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (B, F)))
    configs = []
    for k in ks:
        for method in methods:
            configs.append((k, method, False, jax.jit(lambda s, m=method, k=k: batch_topk_mask(s, k, method=m)),
                            (x,)))
            configs.append((k, method, True, jax.jit(
                lambda s, kt, m=method: batch_topk_mask(s, kt, k_cap=max(ks), method=m)), (x, jnp.int32(k))))
    times = {i: [] for i in range(len(configs))}
    for *_, fn, args in configs:
        jax.block_until_ready(fn(*args))
    for _ in range(repeats):
        for i, (*_, fn, args) in enumerate(configs):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[i].append(time.perf_counter() - t0)
    for i, (k, method, traced, _, _) in enumerate(configs):
        t = sorted(times[i])
        print(json.dumps({
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "B": B, "F": F,
            "k": k, "method": method, "k_traced": traced, "ms_median": round(1e3 * t[len(t) // 2], 1),
            "ms_min": round(1e3 * t[0], 1), "loadavg_1m": round(os.getloadavg()[0], 2),
        }))


if __name__ == "__main__":
    import sys

    _benchmark(*map(int, sys.argv[1:3]))
