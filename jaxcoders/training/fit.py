"""`fit`: train a crosscoder on in-memory batches (the library API; the store-backed loop with
checkpoints and metrics is `jaxcoders.training.loop`).

    model, losses = fit(model, batches, TrainConfig(...))
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.crosscoder import normalize_input
from jaxcoders.core.module import CrossCoder
from jaxcoders.progress import progress_bar
from jaxcoders.training.schedules import geometric_median, k_plan
from jaxcoders.training.state import init_train_state
from jaxcoders.training.step import make_train_step

_geometric_median_jit = jax.jit(geometric_median, static_argnames=("max_iter", "tol"))


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
      progress: show progress (a bar on a terminal, periodic lines otherwise).
      callback: called as `callback(step, metrics_numpy)` at each sync.
    Returns:
      (new `CrossCoder` with the trained parameters and buffers, `losses` (T,) float32 numpy:
      the loss of each step computed before its update).
    """
    tcfg = cfg if cfg is not None else TrainConfig()
    plan = k_plan(model.cfg, tcfg)
    mcfg = plan.model_cfg
    total_steps = tcfg.total_steps
    if total_steps is None and hasattr(batches, "__len__"):
        total_steps = len(batches)
    if mcfg.is_batchtopk and tcfg.top_k_aux is None and mcfg.activation_dim // 2 < 1:
        raise ValueError("activation_dim must be >= 2 for the auxk loss (or set top_k_aux)")

    state = init_train_state(model, tcfg, total_steps)
    step_fn = make_train_step(plan.step_cfg, tcfg, total_steps, k_cap=plan.k_cap)
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

    bar = progress_bar(total_steps, f"train {mcfg.architecture}", "step") if progress else None
    step = 0
    for step, x in enumerate(batches):
        _check_batch(mcfg, x, step)
        if step == 0 and mcfg.is_batchtopk and tcfg.init_b_dec_geometric_median:
            x0 = normalize_input(mcfg, state.buffers, jnp.asarray(x, jnp.float32))
            params = state.params._replace(b_dec_MD=_geometric_median_jit(x0))
            state = state._replace(params=params)
        k_t = plan.k_at(tcfg, step)
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

    buffers = state.buffers._replace(k=jnp.asarray(plan.k_target, jnp.int32))
    trained = CrossCoder(mcfg, params=state.params, buffers=buffers, reference_config=_updated_ref_cfg(model, mcfg))
    return trained, np.asarray(losses, np.float32)


def _updated_ref_cfg(model: CrossCoder, cfg: CrossCoderConfig) -> Optional[dict]:
    if not model.reference_config:
        return None
    out = dict(model.reference_config)
    if cfg.is_batchtopk:
        out["k"] = int(cfg.k)
    return out
