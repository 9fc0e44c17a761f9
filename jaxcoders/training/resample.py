"""Dead-latent resampling for the L1 crosscoder (docs/method.md §2, optional; `TrainConfig.resample_steps`).

The reference (`dictionary_learning` CrossCoderTrainer / CrossCoder.resample_neurons), after the
optimizer update of every step s with s % resample_steps == 0:

* dead = latents inactive (f·c <= eps on every token) for more than resample_steps / 2 batches;
* per token of the current batch the loss (mean over models of ||x_m − x̂_m||₂)², x̂ from the
  updated model; n = min(#dead, B) tokens are drawn with probability ∝ loss, without replacement;
* the first n dead latents (in index order) get, per model m, the encoder column
  W_enc[m, :, j] = x_m · 0.05 · (mean over alive latents of ||W_enc[m, :, j']||), the decoder row
  W_dec[m, j, :] = x_m / ||x_m||, b_enc[j] = 0; their Adam moments (encoder weight and bias,
  decoder weight) are zeroed;
* the LR warm-up restarts every resample_steps (`train.lr_schedule`).

Here the draw without replacement uses the Gumbel-top-k trick (same distribution as sequential
multinomial draws; not the same random numbers as torch), seeded by (seed, step), so runs are
reproducible and resumable. The sampled tokens are the model-space inputs (after the crosscoder's
own input normalization, where the weights live; the reference used the raw activations, which is
the same when normalization is off). Everything is jit-friendly and runs under the train step's
sharding.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.crosscoder import decode, encode_relu_flat
from jaxcoders.core.params import CrossCoderParams

ENC_SCALE = 0.05  # the reference crosscoder's factor on the mean alive encoder norm


class Resampled(NamedTuple):
    params: CrossCoderParams
    opt_state: object
    resampled_F: jax.Array  # bool (F,): latents re-initialized at this step
    source_F: jax.Array  # int32 (F,): batch row each resampled latent was drawn from (-1 = none)


def dead_for_resampling(steps_since_active_F: jax.Array, resample_steps: int) -> jax.Array:
    """bool (F,): inactive for more than resample_steps / 2 batches (the reference's rule)."""
    return steps_since_active_F > resample_steps / 2


def token_losses(cfg: CrossCoderConfig, params: CrossCoderParams, x_BMD: jax.Array) -> jax.Array:
    """(B,) (mean over models of ||x_m − x̂_m||₂)², x̂ of the (already normalized) input."""
    x_hat = decode(cfg, params, encode_relu_flat(cfg, params, x_BMD))
    return jnp.square(jnp.mean(jnp.linalg.norm(x_BMD - x_hat, axis=-1), axis=-1))


def sample_without_replacement(key: jax.Array, weights_B: jax.Array) -> jax.Array:
    """(B,) int32: a random order of the rows where each prefix is a weighted draw without
    replacement (Gumbel-top-k); zero-weight rows come last."""
    g = jax.random.gumbel(key, weights_B.shape, jnp.float32)
    logits = jnp.where(weights_B > 0, jnp.log(jnp.maximum(weights_B, 1e-30)) + g, -jnp.inf)
    return jnp.argsort(-logits, stable=True).astype(jnp.int32)


def resample_dead_latents(cfg: CrossCoderConfig, params: CrossCoderParams, opt_state, x_BMD: jax.Array,
                          dead_F: jax.Array, key: jax.Array) -> Resampled:
    """Re-initialize the first min(#dead, B) dead latents from loss-weighted tokens of `x_BMD`.

    params: the updated parameters; opt_state: the optimizer state after the update (every
    params-shaped subtree, i.e. Adam's mu and nu, gets the resampled latents' entries zeroed,
    except the decoder bias, as in the reference); x_BMD: (B, M, D) model-space inputs;
    dead_F: bool (F,). With no dead latent nothing changes."""
    B = x_BMD.shape[0]
    losses = jax.lax.stop_gradient(token_losses(cfg, params, x_BMD))
    order_B = sample_without_replacement(key, losses)
    rank_F = jnp.cumsum(dead_F.astype(jnp.int32)) - 1  # index among the dead latents
    n_ok = jnp.sum(losses > 0)
    resampled_F = dead_F & (rank_F < jnp.minimum(B, n_ok))
    source_F = jnp.where(resampled_F, order_B[jnp.clip(rank_F, 0, B - 1)], -1)
    vecs_FMD = x_BMD[jnp.maximum(source_F, 0)]  # (F, M, D)

    alive = ~dead_F
    enc_norms_MF = jnp.linalg.norm(params.w_enc_MDF, axis=1)
    alive_norm_M = jnp.sum(jnp.where(alive[None], enc_norms_MF, 0.0), axis=1) / jnp.maximum(jnp.sum(alive), 1)
    new_enc = jnp.transpose(vecs_FMD, (1, 2, 0)) * (ENC_SCALE * alive_norm_M)[:, None, None]  # (M, D, F)
    unit = vecs_FMD / jnp.maximum(jnp.linalg.norm(vecs_FMD, axis=-1, keepdims=True), 1e-12)
    new_dec = jnp.transpose(unit, (1, 0, 2))  # (M, F, D)
    r_enc, r_dec = resampled_F[None, None, :], resampled_F[None, :, None]
    params = params._replace(
        w_enc_MDF=jnp.where(r_enc, new_enc, params.w_enc_MDF),
        b_enc_F=jnp.where(resampled_F, 0.0, params.b_enc_F),
        w_dec_MFD=jnp.where(r_dec, new_dec, params.w_dec_MFD),
    )

    def reset(t):
        if not isinstance(t, CrossCoderParams):
            return t
        return t._replace(w_enc_MDF=jnp.where(r_enc, 0.0, t.w_enc_MDF), b_enc_F=jnp.where(resampled_F, 0.0, t.b_enc_F),
                          w_dec_MFD=jnp.where(r_dec, 0.0, t.w_dec_MFD))

    opt_state = jax.tree.map(reset, opt_state, is_leaf=lambda t: isinstance(t, CrossCoderParams))
    return Resampled(params, opt_state, resampled_F, source_F.astype(jnp.int32))
