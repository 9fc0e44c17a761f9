"""Mesh helpers of the analysis passes, on top of `jaxcoders.sharding` (the training mesh).

Tokens are split over "data"; latents (encoder columns, decoder rows and every per-latent
accumulator) over "latent", exactly as in training, so a training mesh can be passed in unchanged.
"""
from __future__ import annotations

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcoders.training.sharding import DATA, LATENT, batch_spec, buffer_specs, make_mesh, param_specs  # noqa: F401


def axis_size(mesh: Mesh, name: str) -> int:
    return int(mesh.shape[name]) if name in mesh.shape else 1


def sharding(mesh: Mesh, *spec) -> NamedSharding:
    return NamedSharding(mesh, P(*spec))


def latent_spec(shape: tuple, num_latents: int, mesh: Mesh) -> P:
    """Shard the last axis over "latent" when it is the latent axis and divides evenly; else replicate.

    Accumulators keep the latent axis last by convention; an unrelated axis of the same length
    would only be sharded needlessly (still correct)."""
    n = axis_size(mesh, LATENT)
    if shape and shape[-1] == num_latents and n > 1 and num_latents % n == 0:
        return P(*([None] * (len(shape) - 1)), LATENT)
    return P()
