"""Per-step schedules of training (docs/method.md §2–3): the LR warm-up and decay, k-annealing,
the L1 coefficient warm-up; and the pieces every training driver sets up the same way: the k plan
(the step is built for k_max and told k(t) each step) and the geometric-median b_dec of step 0.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxcoders.config import CrossCoderConfig, TrainConfig


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
    """k-annealing (docs/method.md §3): k(t) = max(1, round(k_max - (k_max - k) t / T)) for t < T."""
    k_max = tcfg.k_max if tcfg.k_max is not None else k
    T = tcfg.k_annealing_steps
    if T > 0 and k_max != k and step < T:
        return max(1, int(round(k_max - (k_max - k) * step / T)))
    return k


def l1_coefficient_at(tcfg: TrainConfig, step: jax.Array) -> jax.Array:
    if tcfg.l1_warmup_steps > 0:
        return tcfg.l1_coefficient * jnp.minimum(step.astype(jnp.float32) / tcfg.l1_warmup_steps, 1.0)
    return jnp.float32(tcfg.l1_coefficient)


class KPlan(NamedTuple):
    """How a run treats BatchTopK's k: the model's final k, the config the step is compiled for
    (k_max under k-annealing) and the static cap of the traced k(t) (None = no annealing)."""

    model_cfg: CrossCoderConfig  # the trained model's config (k = the target k)
    step_cfg: CrossCoderConfig
    k_target: int  # 0 for L1 and tied
    k_cap: Optional[int]

    def k_at(self, tcfg: TrainConfig, step: int) -> jax.Array:
        """k(t) as the int32 scalar the step takes (0 for L1 and tied)."""
        return jnp.asarray(k_at_step(tcfg, self.k_target, step) if self.model_cfg.is_batchtopk else 0, jnp.int32)


def k_plan(model_cfg: CrossCoderConfig, tcfg: TrainConfig) -> KPlan:
    """The k plan of a run: TrainConfig.k (or the model's k) is the target; k-annealing compiles the
    step for k_max and feeds k(t) (docs/method.md §3)."""
    if not model_cfg.is_batchtopk:
        return KPlan(model_cfg, model_cfg, 0, None)
    k_target = tcfg.k if tcfg.k is not None else model_cfg.k
    if k_target > model_cfg.dict_size:
        raise ValueError(f"k={k_target} is larger than dict_size={model_cfg.dict_size}")
    model_cfg = model_cfg.replace(k=k_target)
    k_max = tcfg.k_max if tcfg.k_max is not None else k_target
    if tcfg.k_annealing_steps > 0 and k_max != k_target:
        return KPlan(model_cfg, model_cfg.replace(k=k_max), k_target, k_max)
    return KPlan(model_cfg, model_cfg, k_target, None)


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
