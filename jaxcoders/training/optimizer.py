"""The optimizer of every architecture: torch-style global grad-norm clipping (where the
architecture's reference clips), Adam, and the LR schedule (docs/method.md §2–4)."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.training.schedules import lr_schedule


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
