"""Training: the train state, the one jitted step factory, and `fit` over in-memory batches.

    state = init_train_state(model, tcfg)
    step_fn = make_train_step(model.cfg, tcfg)          # jitted, state donated
    state, metrics = step_fn(state, x_BMD, k_t)         # metrics stay on device

Schedules follow the reference (SPEC sections 2-3): LR warm-up with step 0 at LR 0, optional
linear decay; L1 coefficient warm-up (optional); BatchTopK k-annealing, theta EMA from
`threshold_start_step + 1`, geometric-median b_dec at step 0, torch-style global grad-norm clip.
"""
from __future__ import annotations

import functools

import logging
import math
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.crosscoder import (
    CrossCoder,
    CrossCoderBuffers,
    CrossCoderParams,
    normalize_input,
    tie_shared_rows,
)
from jaxcoders.losses import batchtopk_loss, l1_loss, update_threshold
from jaxcoders.sparse import batchtopk_loss_sparse, decoder_mode
from jaxcoders.tied import tied_loss

log = logging.getLogger(__name__)


class TrainState(NamedTuple):
    step: jax.Array  # () int32, number of updates done
    params: CrossCoderParams
    opt_state: Any
    buffers: CrossCoderBuffers  # threshold (updated by the EMA), k, normalization statistics
    tokens_since_fired_F: jax.Array  # (F,) int32, BatchTopK dead-latent counters
    steps_since_active_F: jax.Array  # (F,) int32, L1 dead tracking (batches since last active)


# ----------------------------------------------------------------------------- schedules


def lr_schedule(tcfg: TrainConfig, total_steps: Optional[int]) -> Callable[[jax.Array], jax.Array]:
    """LR at optimizer update `count` (0-based): warm-up count/warmup, then 1, then linear decay."""
    if tcfg.decay_start is not None and total_steps is None:
        raise ValueError("decay_start needs total_steps (TrainConfig.total_steps or a sized `batches`)")

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        factor = jnp.float32(1.0)
        if tcfg.warmup_steps > 0:  # with resampling the warm-up restarts every resample_steps
            since = jnp.mod(count, tcfg.resample_steps) if tcfg.resample_steps else count
            factor = jnp.minimum(since / tcfg.warmup_steps, 1.0)
        if tcfg.decay_start is not None:
            decay = (total_steps - count) / (total_steps - tcfg.decay_start)
            factor = jnp.where(count >= tcfg.decay_start, decay, factor)
        return tcfg.lr * factor

    return schedule


def k_at_step(tcfg: TrainConfig, k: int, step: int) -> int:
    """k-annealing (SPEC section 3): k(t) = max(1, round(k_max - (k_max - k) t / T)) for t < T."""
    k_max = tcfg.k_max if tcfg.k_max is not None else k
    T = tcfg.k_annealing_steps
    if T > 0 and k_max != k and step < T:
        return max(1, int(round(k_max - (k_max - k) * step / T)))
    return k


def l1_coefficient_at(tcfg: TrainConfig, step: jax.Array) -> jax.Array:
    if tcfg.l1_warmup_steps > 0:
        return tcfg.l1_coefficient * jnp.minimum(step.astype(jnp.float32) / tcfg.l1_warmup_steps, 1.0)
    return jnp.float32(tcfg.l1_coefficient)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: g * min(1, max_norm / (||g|| + 1e-6))."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(updates)))
        coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * coef, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(cfg: CrossCoderConfig, tcfg: TrainConfig, total_steps: Optional[int]) -> optax.GradientTransformation:
    chain = []
    clip = tcfg.clip_norm_for(cfg.architecture)
    if clip is not None:
        chain.append(clip_by_global_norm_torch(clip))
    chain.append(optax.scale_by_adam(b1=tcfg.adam_b1, b2=tcfg.adam_b2, eps=tcfg.adam_eps))
    chain.append(optax.scale_by_learning_rate(lr_schedule(tcfg, total_steps)))
    return optax.chain(*chain)


# ----------------------------------------------------------------------------- geometric median


def geometric_median(points_NMD: jax.Array, max_iter: int = 100, tol: float = 1e-5) -> jax.Array:
    """Per-model geometric median (M, D) by Weiszfeld iterations (reference semantics).

    Starts at the mean; weights 1/||p - guess|| per (point, model) normalized over points; stops
    when every model's update moves less than `tol`, or after `max_iter` iterations."""
    points = jnp.asarray(points_NMD, jnp.float32)

    def body(carry):
        i, guess, _ = carry
        w = 1.0 / jnp.linalg.norm(points - guess, axis=-1)  # (N, M)
        w = w / jnp.sum(w, axis=0, keepdims=True)
        new = jnp.sum(w[..., None] * points, axis=0)
        done = jnp.all(jnp.linalg.norm(new - guess, axis=-1) < tol)
        return i + 1, new, done

    def cond(carry):
        i, _, done = carry
        return jnp.logical_and(i < max_iter, jnp.logical_not(done))

    _, guess, _ = jax.lax.while_loop(cond, body, (0, jnp.mean(points, axis=0), jnp.bool_(False)))
    return guess


_geometric_median_jit = jax.jit(geometric_median, static_argnames=("max_iter", "tol"))


# ----------------------------------------------------------------------------- state and step


def init_train_state(model: CrossCoder, tcfg: TrainConfig, total_steps: Optional[int] = None) -> TrainState:
    # copies: the step donates its state, and the caller's model must stay intact
    params = jax.tree.map(jnp.copy, model.params)
    opt = make_optimizer(model.cfg, tcfg, total_steps)
    F = model.cfg.dict_size
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        opt_state=opt.init(params),
        buffers=jax.tree.map(jnp.copy, model.buffers),
        tokens_since_fired_F=jnp.zeros((F,), jnp.int32),
        steps_since_active_F=jnp.zeros((F,), jnp.int32),
    )


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
    from jaxcoders import sharding as shd

    params_abstract = jax.eval_shape(
        lambda: CrossCoderParams(
            jnp.zeros((cfg.num_models, cfg.activation_dim, cfg.encoder_width)), jnp.zeros((cfg.encoder_width,)),
            jnp.zeros((cfg.num_models, cfg.dict_size, cfg.activation_dim)), jnp.zeros((cfg.num_models, cfg.activation_dim)),
        )
    )
    state_sh = shd.named(mesh, shd.train_state_specs(opt, params_abstract))
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
    from jaxcoders.resample import dead_for_resampling, resample_dead_latents

    dead = dead_for_resampling(steps_since_active, tcfg.resample_steps)
    key = jax.random.fold_in(jax.random.key(tcfg.seed), step)

    def run(_):
        r = resample_dead_latents(cfg, params, opt_state, x, dead, key)
        return r.params, r.opt_state, jnp.sum(r.resampled_F).astype(jnp.int32)

    due = finite & (jnp.mod(step, tcfg.resample_steps) == 0) & jnp.any(dead)
    return jax.lax.cond(due, run, lambda _: (params, opt_state, jnp.int32(0)), None)


def shard_train_state(state: TrainState, cfg: CrossCoderConfig, tcfg: TrainConfig, mesh, total_steps=None) -> TrainState:
    """Place a (host or single-device) TrainState on `mesh` with the training shardings."""
    from jaxcoders import sharding as shd

    opt = make_optimizer(cfg, tcfg, total_steps)
    specs = shd.train_state_specs(opt, jax.eval_shape(lambda: state.params))
    shardings = shd.named(mesh, specs)
    # make_array_from_callback rather than device_put: on multi-host runs device_put asserts that
    # every process passes equal values, which NaN-filled buffers (unused normalization) fail.
    host = jax.device_get(state)
    return jax.tree.map(
        lambda a, sh: jax.make_array_from_callback(np.shape(a), sh, lambda idx, a=a: np.asarray(a)[idx]),
        host, shardings,
    )


# ----------------------------------------------------------------------------- fit


def _check_batch(cfg: CrossCoderConfig, x, index: int):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 3 or shape[1] != cfg.num_models or shape[2] != cfg.activation_dim:
        raise ValueError(
            f"batch {index} has shape {shape}; the crosscoder expects (B, M, D) = "
            f"(B, {cfg.num_models}, {cfg.activation_dim})"
        )
    if isinstance(x, np.ndarray) and not np.all(np.isfinite(x)):
        raise ValueError(f"batch {index} contains NaN or inf values; clean the activations before training")


def fit(
    model: CrossCoder,
    batches: Iterable,
    cfg: Optional[TrainConfig] = None,
    *,
    log_every: int = 100,
    progress: bool = False,
    callback: Optional[Callable[[int, dict], None]] = None,
):
    """Train `model` on in-memory batches; returns `(trained_model, losses)`.

    Args:
      model: a `CrossCoder` (fresh or imported); not modified.
      batches: iterable of (B, M, D) arrays (numpy or jax), or one (T, B, M, D) array.
      cfg: `TrainConfig` (defaults: the paper's).
      log_every: host sync interval (losses are fetched, non-finite batches reported).
      progress: show a tqdm progress bar.
      callback: called as `callback(step, metrics_numpy)` at each sync.
    Returns:
      (new `CrossCoder` with the trained parameters and buffers, `losses` (T,) float32 numpy:
      the loss of each step computed before its update).
    """
    tcfg = cfg if cfg is not None else TrainConfig()
    mcfg = model.cfg
    if mcfg.is_batchtopk:
        k_target = tcfg.k if tcfg.k is not None else mcfg.k
        if k_target > mcfg.dict_size:
            raise ValueError(f"k={k_target} is larger than dict_size={mcfg.dict_size}")
        mcfg = mcfg.replace(k=k_target)
        k_max = tcfg.k_max if tcfg.k_max is not None else k_target
        annealing = tcfg.k_annealing_steps > 0 and k_max != k_target
        step_cfg = mcfg.replace(k=k_max) if annealing else mcfg
        k_cap = k_max if annealing else None
    else:
        k_target, k_cap, step_cfg = 0, None, mcfg
    total_steps = tcfg.total_steps
    if total_steps is None and hasattr(batches, "__len__"):
        total_steps = len(batches)
    if mcfg.is_batchtopk and tcfg.top_k_aux is None and mcfg.activation_dim // 2 < 1:
        raise ValueError("activation_dim must be >= 2 for the auxk loss (or set top_k_aux)")

    state = init_train_state(model, tcfg, total_steps)
    step_fn = make_train_step(step_cfg, tcfg, total_steps, k_cap=k_cap)
    losses_dev, losses = [], []
    pending_flags = []

    def sync(upto_step: int):
        if not losses_dev:
            return
        vals = np.asarray(jax.device_get(jnp.stack(losses_dev)))
        flags = np.asarray(jax.device_get(jnp.stack(pending_flags)))
        if flags.any():
            bad = upto_step - len(flags) + int(np.argmax(flags))
            raise ValueError(
                f"batch {bad} contains NaN or inf values (the step was skipped); clean the activations "
                "before training"
            )
        losses.extend(vals.tolist())
        losses_dev.clear()
        pending_flags.clear()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=f"train {mcfg.architecture}", unit="step")
    step = 0
    for step, x in enumerate(batches):
        _check_batch(mcfg, x, step)
        if step == 0 and mcfg.is_batchtopk and tcfg.init_b_dec_geometric_median:
            x0 = normalize_input(mcfg, state.buffers, jnp.asarray(x, jnp.float32))
            params = state.params._replace(b_dec_MD=_geometric_median_jit(x0))
            state = state._replace(params=params)
        k_t = jnp.asarray(k_at_step(tcfg, k_target, step) if mcfg.is_batchtopk else 0, jnp.int32)
        state, metrics = step_fn(state, jnp.asarray(x), k_t)
        losses_dev.append(metrics["loss"])
        pending_flags.append(metrics["nonfinite_input"])
        if (step + 1) % log_every == 0:
            sync(step + 1)
            if callback is not None:
                callback(step, jax.tree.map(np.asarray, jax.device_get(metrics)))
        if bar is not None:
            bar.update(1)
    sync(step + 1)
    if bar is not None:
        bar.close()
    if not losses:
        raise ValueError("fit got no batches")

    buffers = state.buffers._replace(k=jnp.asarray(k_target, jnp.int32))
    trained = CrossCoder(mcfg, params=state.params, buffers=buffers, reference_config=_updated_ref_cfg(model, mcfg))
    return trained, np.asarray(losses, np.float32)


def _updated_ref_cfg(model: CrossCoder, cfg: CrossCoderConfig) -> Optional[dict]:
    if not model.reference_config:
        return None
    out = dict(model.reference_config)
    if cfg.is_batchtopk:
        out["k"] = int(cfg.k)
    return out
