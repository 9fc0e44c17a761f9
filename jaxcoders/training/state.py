"""The train state: parameters, optimizer moments, buffers and dead-latent counters, with the
partition specs that place it on a ("data", "latent") mesh (`jaxcoders.training.sharding`)."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams
from jaxcoders.training import sharding as shd
from jaxcoders.training.optimizer import make_optimizer


class TrainState(NamedTuple):
    step: jax.Array  # () int32, number of updates done
    params: CrossCoderParams
    opt_state: Any
    buffers: CrossCoderBuffers  # threshold (updated by the EMA), k, normalization statistics
    tokens_since_fired_F: jax.Array  # (F,) int32, BatchTopK dead-latent counters
    steps_since_active_F: jax.Array  # (F,) int32, L1 dead tracking (batches since last active)


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


def train_state_specs(optimizer, params_abstract):
    """Specs for `jaxcoders.train.TrainState`."""
    return TrainState(
        step=P(),
        params=shd.param_specs(),
        opt_state=shd.opt_state_specs(optimizer, params_abstract),
        buffers=shd.buffer_specs(),
        tokens_since_fired_F=P(shd.LATENT),
        steps_since_active_F=P(shd.LATENT),
    )


def shard_train_state(state: TrainState, cfg: CrossCoderConfig, tcfg: TrainConfig, mesh, total_steps=None) -> TrainState:
    """Place a (host or single-device) TrainState on `mesh` with the training shardings."""
    opt = make_optimizer(cfg, tcfg, total_steps)
    specs = train_state_specs(opt, jax.eval_shape(lambda: state.params))
    shardings = shd.named(mesh, specs)
    # make_array_from_callback rather than device_put: on multi-host runs device_put asserts that
    # every process passes equal values, which NaN-filled buffers (unused normalization) fail.
    host = jax.device_get(state)
    return jax.tree.map(
        lambda a, sh: jax.make_array_from_callback(np.shape(a), sh, lambda idx, a=a: np.asarray(a)[idx]),
        host, shardings,
    )
