"""Training losses and the dead-latent bookkeeping that goes with them (docs/method.md §2–3).

All functions are pure and jit-friendly; `params` is a `CrossCoderParams`, x is (B, M, D) and
already normalized. Each loss returns `(loss, aux)` where `aux` holds the (stop-gradient) values
the train step needs after the gradient: metrics, the selected code's statistics, counters.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.crosscoder import (
    code_normalization,
    decode,
    encode_relu,
    encode_relu_flat,
    select_train,
    summed_code_normalization,
)
from jaxcoders.core.ops import safe_sqrt
from jaxcoders.core.params import CrossCoderParams
from jaxcoders.core.selection.candidates import select_mask
from jaxcoders.core.selection.exact import batch_topk_mask_sharded, row_topk_mask

COUNTER_CAP = 2**30  # tokens-since-fired counters saturate here (int32 safe)


def reconstruction_loss(e_BMD: jax.Array, use_mse: bool) -> jax.Array:
    """mean_{b,m} ||e_{b,m}||_2 (paper), or mean_{b,m} ||e_{b,m}||^2 when `use_mse`.

    A token reconstructed exactly (e = 0, e.g. an all-zero input at initialization) contributes
    gradient 0, as in torch; a plain sqrt would make every gradient NaN."""
    if use_mse:
        return jnp.mean(jnp.sum(jnp.square(e_BMD), axis=-1))
    return jnp.mean(safe_sqrt(jnp.sum(jnp.square(e_BMD), axis=-1)))


class L1Aux(NamedTuple):
    recon: jax.Array  # reconstruction term
    sparsity: jax.Array  # mean_b sum_j f_j c_j
    l0: jax.Array  # mean number of active latents per token
    dead_F: jax.Array  # bool (F,): f c <= eps for every token of the batch
    mse: jax.Array  # mean_b sum_{m,d} e^2


def l1_loss(
    cfg: CrossCoderConfig,
    tcfg: TrainConfig,
    params: CrossCoderParams,
    x_BMD: jax.Array,
    l1_coefficient: jax.Array,
) -> tuple[jax.Array, L1Aux]:
    """L1 crosscoder loss: recon + mu * mean_b sum_j f_j c_j (c differentiable through W_dec)."""
    f_BF = encode_relu_flat(cfg, params, x_BMD)
    x_hat = decode(cfg, params, f_BF)
    e = x_BMD - x_hat
    recon = reconstruction_loss(e, tcfg.use_mse_loss)
    fc_BF = f_BF * summed_code_normalization(cfg, params.w_dec_MFD)
    sparsity = jnp.mean(jnp.sum(fc_BF, axis=-1))
    if cfg.n_shared_latents:  # the shared block has its own coefficient
        shared_coef = tcfg.shared_l1_coefficient if tcfg.shared_l1_coefficient is not None else 0.15 * tcfg.l1_coefficient
        ratio = shared_coef / tcfg.l1_coefficient if tcfg.l1_coefficient else 0.0
        w_F = jnp.where(jnp.arange(cfg.dict_size) < cfg.n_shared_latents, ratio, 1.0)
        loss = recon + l1_coefficient * jnp.mean(jnp.sum(fc_BF * w_F, axis=-1))
    else:
        loss = recon + l1_coefficient * sparsity
    aux = L1Aux(
        recon=recon,
        sparsity=sparsity,
        l0=jnp.mean(jnp.sum(f_BF > 0, axis=-1).astype(jnp.float32)),
        dead_F=jnp.all(fc_BF <= tcfg.dead_latent_eps, axis=0),
        mse=jnp.mean(jnp.sum(jnp.square(e), axis=(1, 2))),
    )
    return loss, jax.tree.map(jax.lax.stop_gradient, aux)


class BatchTopKAux(NamedTuple):
    recon: jax.Array
    auxk: jax.Array  # normalized auxiliary loss (0 when no latent is dead)
    min_active_score: jax.Array  # () or (M,): min positive selected f*c (0 if none): theta's EMA input
    tokens_since_fired_F: jax.Array  # int32 (F,), updated counters
    num_dead: jax.Array
    l0: jax.Array
    mse: jax.Array


def auxk_loss(
    cfg: CrossCoderConfig,
    params: CrossCoderParams,
    f_BF: jax.Array,
    residual_BMD: jax.Array,
    dead_F: jax.Array,
    top_k_aux: int,
    mesh=None,
) -> jax.Array:
    """Auxiliary loss that revives dead latents (docs/method.md §3).

    Per token, the top min(top_k_aux, #dead) dead latents by the detached score f*c reconstruct
    the detached residual without decoder bias; normalized by the residual's variance:
    mean_b ||r_b - ê_b||^2 / mean_b ||r_b - mean r||^2 (NaN -> 0); 0 when nothing is dead.

    Taking the static top `top_k_aux` over scores with alive latents at -inf and then dropping
    the alive picks is exactly "top min(top_k_aux, #dead)" with a dynamic #dead."""
    B, F = f_BF.shape
    kk = min(top_k_aux, F)
    scores = jax.lax.stop_gradient(f_BF * summed_code_normalization(cfg, params.w_dec_MFD))
    masked = jnp.where(dead_F[None, :], scores, -jnp.inf)
    picked_BF = row_topk_mask(masked, kk, mesh=mesh) & dead_F[None, :]
    aux_f_BF = jnp.where(picked_BF, f_BF, 0.0)
    recon_aux = decode(cfg, params, aux_f_BF, add_bias=False).reshape(B, -1)
    r = jax.lax.stop_gradient(residual_BMD).reshape(B, -1)
    num = jnp.mean(jnp.sum(jnp.square(r - recon_aux), axis=-1))
    denom = jnp.mean(jnp.sum(jnp.square(r - jnp.mean(r, axis=0, keepdims=True)), axis=-1))
    loss = jnp.nan_to_num(num / denom, nan=0.0)
    return jnp.where(jnp.any(dead_F), loss, 0.0)


def batchtopk_loss(
    cfg: CrossCoderConfig,
    tcfg: TrainConfig,
    params: CrossCoderParams,
    x_BMD: jax.Array,
    tokens_since_fired_F: jax.Array,
    k: jax.Array,
    *,
    k_cap: Optional[int] = None,
    mesh=None,
) -> tuple[jax.Array, BatchTopKAux]:
    """BatchTopK loss: mean_{b,m} ||e|| + auxk_alpha * auxk, with the dead-token counters.

    Order of the reference: select, count (add B to every counter, zero the fired ones), then a
    latent is dead if its counter >= dead_tokens_threshold, then auxk on the dead ones.

    `mesh`: the ("data", "latent") mesh the step runs on. With more than one device the batch
    top-k runs as `selection.batch_topk_mask_sharded` on the local (B/d, F/l) blocks (histogram
    psums or gathered local candidates) instead of a selection over the whole (B, F) matrix,
    which XLA would all-gather to every device. Same mask either way (exact)."""
    B = x_BMD.shape[0]
    f_BF = encode_relu(cfg, params, x_BMD)
    c = code_normalization(cfg, params.w_dec_MFD)
    if cfg.decoupled:
        f_sel, mask = select_train(cfg, f_BF, c, k, k_cap=k_cap, method=tcfg.selection_method)
    elif mesh is not None and mesh.size > 1:
        scores = jax.lax.stop_gradient(f_BF * c)
        mask = batch_topk_mask_sharded(scores, k, mesh=mesh, k_cap=k_cap, method=tcfg.selection_method)
        f_sel = f_BF * mask
    else:  # the same mask as select_train, bit for bit, from the faster bracketed selection
        c_sg = jax.lax.stop_gradient(c)
        mask = select_mask(f_BF, k, k_cap=k_cap, method=tcfg.selection_method,
                           transform=lambda f, j: f * c_sg[j])  # scores f·c, never stored
        f_sel = f_BF * mask
    x_hat = decode(cfg, params, f_sel)
    e = x_BMD - x_hat
    recon = reconstruction_loss(e, tcfg.use_mse_loss)

    fired_F = jnp.any(f_sel > 0, axis=tuple(range(f_sel.ndim - 1)))
    counters = jnp.minimum(tokens_since_fired_F + B, COUNTER_CAP)
    counters = jnp.where(fired_F, 0, counters).astype(jnp.int32)
    dead_F = counters >= tcfg.dead_tokens_threshold
    top_k_aux = tcfg.top_k_aux if tcfg.top_k_aux is not None else cfg.activation_dim // 2
    aux = auxk_loss(cfg, params, f_BF, e, dead_F, top_k_aux, mesh=mesh)
    loss = recon + tcfg.auxk_alpha * aux

    f_scaled = jax.lax.stop_gradient(f_sel * (c[None] if cfg.decoupled else c))
    pos = jnp.where(f_scaled > 0, f_scaled, jnp.inf)
    reduce_axes = (0, 2) if cfg.decoupled else None
    m = jnp.min(pos, axis=reduce_axes)
    m = jnp.where(jnp.isinf(m), 0.0, m)
    l0 = jnp.sum(f_sel > 0) / B
    out = BatchTopKAux(
        recon=recon,
        auxk=aux,
        min_active_score=m,
        tokens_since_fired_F=counters,
        num_dead=jnp.sum(dead_F),
        l0=l0.astype(jnp.float32),
        mse=jnp.mean(jnp.sum(jnp.square(e), axis=(1, 2))),
    )
    return loss, jax.tree.map(jax.lax.stop_gradient, out)


def update_threshold(threshold: jax.Array, min_active_score: jax.Array, beta: float) -> jax.Array:
    """theta <- m on its first update (theta < 0), then theta <- beta theta + (1 - beta) m."""
    return jnp.where(threshold < 0, min_active_score, beta * threshold + (1.0 - beta) * min_active_score)
