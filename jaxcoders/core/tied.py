"""The tied crosscoder's loss and schedules (docs/method.md §4): latents come in (shared, base, chat) triples.

Per latent index i there are three encoder slots and one decoder pair:

    f_k = ReLU(sum_m x_m W_enc[m, :, i, k] + b_enc[i, k]),  k in {shared, base, chat}
    x̂_base = (f_shared + f_base) W_dec[0] + b_dec[0]
    x̂_chat = (f_shared + f_chat) W_dec[1] + b_dec[1]
    loss = mean_b sum_{m,d} (x̂ - x)^2 + λ(t) mean_b sum_i f_shared,i (n_base,i + n_chat,i)
           + η λ(t) mean_b sum_i (f_base,i n_base,i + f_chat,i n_chat,i)

Storage: the encoder lives in the ordinary `CrossCoderParams` with `w_enc_MDF` of shape
(M, D, 3F) and `b_enc_F` of shape (3F,), latent-major and slot-minor (column 3i + k), so that
sharding the last axis over "latent" keeps every triple on the device that holds its decoder rows.
The public code layout is (B, 3, F) with slots [shared, base, chat].

With η = 1 a shared latent costs exactly as much as the (base, chat) pair that reproduces it, so
the objective cannot prefer shared over exclusive; η > 1 makes exclusive slots more expensive.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.crosscoder import BASE, CHAT, SHARED, decode, decoder_norms, model_codes, tied_code


class TiedAux(NamedTuple):
    recon: jax.Array  # mean_b sum_{m,d} e^2
    sparsity_shared: jax.Array
    sparsity_exclusive: jax.Array
    l0_slots: jax.Array  # (3,) mean active latents per token per slot
    l0: jax.Array
    mse: jax.Array
    fired_F: jax.Array  # bool (F,): any slot of triple i active in the batch


def tied_loss(cfg: CrossCoderConfig, tcfg: TrainConfig, params, x_BMD: jax.Array, lam: jax.Array):
    f = tied_code(cfg, params, x_BMD)
    e = x_BMD - decode(cfg, params, model_codes(f))
    recon = jnp.mean(jnp.sum(jnp.square(e), axis=(1, 2)))
    n = decoder_norms(params.w_dec_MFD)  # (2, F)
    sparsity_shared = jnp.mean(jnp.sum(f[:, SHARED] * (n[0] + n[1]), axis=-1))
    sparsity_excl = jnp.mean(jnp.sum(f[:, BASE] * n[0] + f[:, CHAT] * n[1], axis=-1))
    loss = recon + lam * sparsity_shared + tcfg.eta * lam * sparsity_excl
    active = f > 0
    l0_slots = jnp.mean(jnp.sum(active, axis=-1).astype(jnp.float32), axis=0)
    aux = TiedAux(recon, sparsity_shared, sparsity_excl, l0_slots, jnp.sum(l0_slots), recon,
                  jnp.any(active, axis=(0, 1)))
    return loss, jax.tree.map(jax.lax.stop_gradient, aux)


def tied_lambda_warmup_steps(total_steps: int) -> int:
    """docs/method.md §4: λ warms up linearly over the first 5% of steps."""
    return max(1, int(0.05 * total_steps))


def tied_decay_start(total_steps: int) -> int:
    """docs/method.md §4: LR constant for 80% of the run, then linear decay to 0."""
    return int(0.8 * total_steps)


def tied_train_config(total_steps: int, **overrides) -> TrainConfig:
    """The reference tied run's schedule (lr 5e-5, λ = 2, η = 2, clip 1) for `total_steps`."""
    kw = dict(lr=5e-5, warmup_steps=0, l1_coefficient=2.0, eta=2.0, grad_clip_norm=1.0,
              l1_warmup_steps=tied_lambda_warmup_steps(total_steps), decay_start=tied_decay_start(total_steps),
              total_steps=total_steps)
    kw.update(overrides)
    return TrainConfig(**kw)


def slot_ratio(count, count_shared) -> np.ndarray:
    """count / count_shared, with x/0 = inf for x > 0 and 0/0 = 0 (a triple whose shared slot never
    fires but whose chat slot does is as chat-specific as it gets)."""
    count = np.asarray(count, np.float64)
    shared = np.asarray(count_shared, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = count / shared
    return np.where(shared > 0, r, np.where(count > 0, np.inf, 0.0))
