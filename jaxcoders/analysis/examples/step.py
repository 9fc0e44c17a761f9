"""The jitted, sharded device step of the examples pass: one batch of whole sequences (B rows, G
sequences) folded into the latent-sharded state (see `spec`): usage counts, per-sequence max
activation (G, S), bucket populations and one merge by counting of the candidates (1 + R, G, S) into
the sorted (1 + R, K, S) groups."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxcoders.analysis import mesh as meshes
from jaxcoders.analysis.examples.keys import sample_key
from jaxcoders.analysis.examples.model import batch_codes
from jaxcoders.analysis.examples.spec import INT_MIN, Spec


def latent_last(shape, mesh) -> P:
    """The partition spec of an array whose last axis is the latents: sharded over the mesh's latent
    axis when it divides, else replicated."""
    n = meshes.axis_size(mesh, meshes.LATENT)
    if shape and n > 1 and shape[-1] % n == 0:
        return P(*([None] * (len(shape) - 1)), meshes.LATENT)
    return P()


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
def fold_batch(params, buffers, consts, state, x_BMD, valid_B, fresh_B, seg_B, seg_start_G, class_B, row0, seed, *,
               cfg, spec: Spec, mesh):
    """Fold one batch of whole sequences into the state (see the module docstring): x_BMD (B, M, D);
    valid_B, fresh_B (B,) (padding 0; duplicate sequences fresh 0); seg_B (B,) sequence index (padding G);
    seg_start_G (G,) first row of each sequence; class_B (B,) token class (-1 unknown); row0 the
    batch's first store row; consts: latents (S,), scales (C, S), thresholds (E, S)."""
    lat, scale_CS, thr_ES = consts["latents"], consts["scales"], consts["thresholds"]
    B = x_BMD.shape[0]
    G = seg_start_G.shape[0]
    codes = batch_codes(cfg, params, buffers, x_BMD.astype(jnp.float32))[..., lat]  # (B, C, S)
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
    specs = {k: latent_last(v.shape, mesh) for k, v in new.items()}
    return {k: jax.lax.with_sharding_constraint(v, meshes.sharding(mesh, *specs[k])) for k, v in new.items()}
