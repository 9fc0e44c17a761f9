"""Device mesh, partition specs and multi-host helpers.

The mesh has two named axes: "data" (the batch is split over it) and "latent" (the F axis of
every per-latent array is split over it). Parameters:

    w_enc (M, D, F)  -> P(None, None, "latent")     b_enc (F,)  -> P("latent")
    w_dec (M, F, D)  -> P(None, "latent", None)     b_dec (M, D) -> replicated
    tokens_since_fired / steps_since_active (F,) -> P("latent")
    threshold, k, normalization statistics, step -> replicated
    batch (B, M, D) -> P("data", None, None)

Optimizer state follows the parameters (Adam's moments have the parameters' shardings). The
encoder forward is then a local matmul plus a reduction over nothing (D is not sharded), the
decoder forward a local matmul plus a psum over "latent" that XLA inserts; the batch top-k runs
over the globally sharded (B, F) score matrix.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams

DATA, LATENT = "data", "latent"


def initialize_distributed_if_needed() -> None:
    """Call `jax.distributed.initialize()` once on multi-host runs (TPU pods, SLURM, or when the
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables are set). Must run
    before any other JAX call."""
    import os

    env_set = all(os.environ.get(v) for v in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))
    on_tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
    if not (env_set or on_tpu_pod):
        return
    if getattr(initialize_distributed_if_needed, "_done", False):
        return
    if env_set:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
    initialize_distributed_if_needed._done = True


def make_mesh(data: Optional[int] = None, latent: Optional[int] = None, devices=None) -> Mesh:
    """A ("data", "latent") mesh over `devices` (default: all global devices).

    `data`/`latent` of None (or 0) take what is left: with both unset, all devices go to "data"."""
    devices = list(jax.devices()) if devices is None else list(devices)
    n = len(devices)
    data = data or None
    latent = latent or None
    if data is None and latent is None:
        data, latent = n, 1
    elif data is None:
        if n % latent:
            raise ValueError(f"--mesh_latent={latent} does not divide the {n} available devices")
        data = n // latent
    elif latent is None:
        if n % data:
            raise ValueError(f"--mesh_data={data} does not divide the {n} available devices")
        latent = n // data
    if data * latent != n:
        raise ValueError(
            f"mesh data={data} x latent={latent} = {data * latent} devices, but {n} are available; "
            "choose sizes whose product is the device count (or leave one unset)"
        )
    return Mesh(np.asarray(devices).reshape(data, latent), (DATA, LATENT))


def auto_mesh_shape(dict_size: int, batch_size: int, devices=None) -> tuple[int, int]:
    """Default (data, latent) sizes: the latent axis spans the devices of one host (when F
    divides), the data axis spans hosts. Sharding F inside a host keeps the per-device optimizer
    state small and the latent-axis collectives on the fast intra-host links."""
    devices = list(jax.devices()) if devices is None else list(devices)
    n = len(devices)
    local = max(1, n // max(1, jax.process_count()))
    latent = local if (dict_size % local == 0 and batch_size % (n // local) == 0) else 1
    return n // latent, latent


def param_specs() -> CrossCoderParams:
    return CrossCoderParams(P(None, None, LATENT), P(LATENT), P(None, LATENT, None), P(None, None))


def buffer_specs() -> CrossCoderBuffers:
    return CrossCoderBuffers(*(P() for _ in CrossCoderBuffers._fields))


def batch_spec() -> P:
    return P(DATA, None, None)


def check_shapes(cfg: CrossCoderConfig, batch_size: int, mesh: Mesh) -> None:
    """Trace-time checks with actionable messages."""
    n_data, n_latent = mesh.shape[DATA], mesh.shape[LATENT]
    if cfg.dict_size % n_latent:
        raise ValueError(
            f"dict_size={cfg.dict_size} is not divisible by the latent mesh axis ({n_latent}); "
            "choose a dict_size that is a multiple of --mesh_latent"
        )
    if batch_size % n_data:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the data mesh axis ({n_data}); "
            "choose a batch size that is a multiple of --mesh_data"
        )
    if batch_size * cfg.dict_size > 2**31 - 1:
        raise ValueError(
            f"batch_size * dict_size = {batch_size * cfg.dict_size} exceeds the int32 index limit of the "
            "batch top-k; lower the batch size"
        )


def named(mesh: Mesh, tree_of_specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), tree_of_specs, is_leaf=lambda x: isinstance(x, P))


def opt_state_specs(optimizer: optax.GradientTransformation, params_abstract: CrossCoderParams) -> Any:
    """Partition specs of `optimizer.init(params)`: parameter-shaped leaves follow the
    parameters, everything else (step counts) is replicated."""
    state_abstract = jax.eval_shape(optimizer.init, params_abstract)
    return optax.tree_map_params(
        optimizer,
        lambda _, spec: spec,
        state_abstract,
        param_specs(),
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )


def global_batch(local_batch_BMD, mesh: Mesh):
    """A global (B, M, D) array sharded on "data" from this process's rows of the batch.

    Each process passes only the rows its devices hold (its slice of the global batch, in
    process order); single-process runs pass the whole batch."""
    sharding = NamedSharding(mesh, batch_spec())
    return jax.make_array_from_process_local_data(sharding, np.asarray(local_batch_BMD))
