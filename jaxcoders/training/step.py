"""The one jitted train step factory (docs/method.md §2–4):

    step_fn = make_train_step(model_cfg, train_cfg)      # jitted, state donated
    state, metrics = step_fn(state, x_BMD, k_t)          # metrics stay on device

L1, BatchTopK (dense or sparse path) and tied share it; with a mesh the state is sharded as
`state.train_state_specs` and the batch on "data". A batch with NaN/inf changes nothing.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.crosscoder import normalize_input
from jaxcoders.core.losses import batchtopk_loss, l1_loss, update_threshold
from jaxcoders.core.params import CrossCoderParams, tie_shared_rows
from jaxcoders.core.sparse_batchtopk import batchtopk_loss_sparse, decoder_mode
from jaxcoders.core.tied import tied_loss
from jaxcoders.training import sharding as shd
from jaxcoders.training.optimizer import make_optimizer
from jaxcoders.training.resample import dead_for_resampling, resample_dead_latents
from jaxcoders.training.schedules import l1_coefficient_at
from jaxcoders.training.state import TrainState, train_state_specs


def make_train_step(
    cfg: CrossCoderConfig,
    tcfg: TrainConfig,
    total_steps: Optional[int] = None,
    *,
    k_cap: Optional[int] = None,
    jit: bool = True,
    mesh=None,
):
    """The train step `(state, x_BMD, k_t) -> (state, metrics)`.

    With a `mesh` (see `jaxcoders.sharding`), the step is jitted with the state sharded as
    `sharding.train_state_specs` and the batch on the "data" axis; metrics are replicated.

    x_BMD: raw activations (normalized inside when the model normalizes its inputs).
    k_t: () int32, BatchTopK's k for this step (k-annealing; ignored for L1); `k_cap` is its
    static upper bound (default: no annealing, k_t must equal cfg.k).
    A batch with NaN/inf leaves the state unchanged and sets metrics["nonfinite_input"]."""
    if tcfg.resample_steps and (cfg.architecture != "l1" or cfg.n_shared_latents):
        raise ValueError("resample_steps (dead-latent resampling) is implemented for the L1 crosscoder without "
                         f"shared latents; got architecture={cfg.architecture!r}, n_shared_latents="
                         f"{cfg.n_shared_latents} (BatchTopK revives dead latents with its auxk loss)")
    opt = make_optimizer(cfg, tcfg, total_steps)

    def step_fn(state: TrainState, x_BMD: jax.Array, k_t: jax.Array):
        x = normalize_input(cfg, state.buffers, x_BMD.astype(jnp.float32))
        finite = jnp.all(jnp.isfinite(x))
        x = jnp.where(finite, x, 0.0)
        if cfg.is_batchtopk:
            k_arg = cfg.k if k_cap is None else k_t
            mode = decoder_mode(cfg, tcfg, x.shape[0], k=cfg.k if k_cap is None else k_cap,
                                num_devices=1 if mesh is None else mesh.size)
            loss_fn = (batchtopk_loss_sparse if mode == "sparse"
                       else functools.partial(batchtopk_loss, mesh=mesh))
            (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=2, has_aux=True)(
                cfg, tcfg, state.params, x, state.tokens_since_fired_F, k_arg, k_cap=k_cap
            )
        else:
            coef = l1_coefficient_at(tcfg, state.step)
            loss_fn = tied_loss if cfg.is_tied else l1_loss
            (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=2, has_aux=True)(
                cfg, tcfg, state.params, x, coef
            )

        # The optimizer update runs under a cond on `finite` (a non-finite batch leaves parameters
        # and moments unchanged) rather than a select between new and old state afterwards: with
        # the state donated, the select kept old and new alive together and XLA copied every
        # parameter and moment (profiled on CPU at D=512 F=8192 B=2048: the optimizer's passes
        # took ~420 ms per step under load, ~100 ms with the cond).
        def update(_):
            updates, opt_state = opt.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            if cfg.n_shared_latents:  # keep the stored copies of the shared block identical
                params = params._replace(w_dec_MFD=tie_shared_rows(cfg, params.w_dec_MFD))
            return params, opt_state

        params, opt_state = jax.lax.cond(finite, update, lambda _: (state.params, state.opt_state), None)
        buffers = state.buffers
        tokens_since_fired = state.tokens_since_fired_F
        steps_since_active = state.steps_since_active_F
        metrics = {"loss": loss, "recon": aux.recon, "mse": aux.mse, "l0": aux.l0}
        if cfg.is_batchtopk:
            new_theta = update_threshold(buffers.threshold, aux.min_active_score, tcfg.threshold_beta)
            theta = jnp.where(state.step > tcfg.threshold_start_step, new_theta, buffers.threshold)
            buffers = buffers._replace(threshold=theta, k=jnp.asarray(k_t, jnp.int32))
            tokens_since_fired = aux.tokens_since_fired_F
            metrics.update(auxk=aux.auxk, num_dead=aux.num_dead, threshold=theta)
        elif cfg.is_tied:
            steps_since_active = jnp.where(aux.fired_F, 0, jnp.minimum(steps_since_active + 1, 2**30))
            metrics.update(sparsity_shared=aux.sparsity_shared, sparsity_exclusive=aux.sparsity_exclusive,
                           l0_shared=aux.l0_slots[0], l0_base=aux.l0_slots[1], l0_chat=aux.l0_slots[2],
                           num_dead=jnp.sum(~aux.fired_F))
        else:
            steps_since_active = jnp.where(aux.dead_F, jnp.minimum(steps_since_active + 1, 2**30), 0)
            metrics.update(sparsity=aux.sparsity, num_dead=jnp.sum(aux.dead_F))
            if tcfg.resample_steps:
                params, opt_state, n_res = _maybe_resample(cfg, tcfg, state.step, params, opt_state, x,
                                                           steps_since_active, finite)
                metrics["resampled"] = n_res
        # a non-finite batch changes nothing (the loop reports it at its next sync); the big arrays
        # were already left alone by the cond above, the small ones are selected here
        small_new = (state.step + 1, buffers, tokens_since_fired, steps_since_active)
        small_old = (state.step, state.buffers, state.tokens_since_fired_F, state.steps_since_active_F)
        step, buffers, tokens_since_fired, steps_since_active = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), small_new, small_old)
        new_state = TrainState(step, params, opt_state, buffers, tokens_since_fired, steps_since_active)
        metrics["nonfinite_input"] = jnp.logical_not(finite)
        return new_state, metrics

    if not jit:
        return step_fn
    if mesh is None:
        return jax.jit(step_fn, donate_argnums=(0,))
    params_abstract = jax.eval_shape(
        lambda: CrossCoderParams(
            jnp.zeros((cfg.num_models, cfg.activation_dim, cfg.encoder_width)), jnp.zeros((cfg.encoder_width,)),
            jnp.zeros((cfg.num_models, cfg.dict_size, cfg.activation_dim)), jnp.zeros((cfg.num_models, cfg.activation_dim)),
        )
    )
    state_sh = shd.named(mesh, train_state_specs(opt, params_abstract))
    batch_sh = shd.named(mesh, shd.batch_spec())
    replicated = shd.named(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(state_sh, batch_sh, replicated),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )


def _maybe_resample(cfg, tcfg, step, params, opt_state, x, steps_since_active, finite):
    """`jaxcoders.resample` at steps s with s % resample_steps == 0 (after the update, on this
    batch, as the reference); returns (params, opt_state, number of latents resampled)."""
    dead = dead_for_resampling(steps_since_active, tcfg.resample_steps)
    key = jax.random.fold_in(jax.random.key(tcfg.seed), step)

    def run(_):
        r = resample_dead_latents(cfg, params, opt_state, x, dead, key)
        return r.params, r.opt_state, jnp.sum(r.resampled_F).astype(jnp.int32)

    due = finite & (jnp.mod(step, tcfg.resample_steps) == 0) & jnp.any(dead)
    return jax.lax.cond(due, run, lambda _: (params, opt_state, jnp.int32(0)), None)
