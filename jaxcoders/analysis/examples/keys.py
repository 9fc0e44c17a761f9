"""Deterministic sample keys of the reservoirs: a pseudo-random 31-bit int32 key per (sequence, latent,
seed) (murmur3 finalizer), identical in numpy and on device; a bucket keeps its smallest keys
(bottom-k sampling). Keys broadcast like their inputs: (G, 1) rows × (1, S) latents -> (G, S)."""
from __future__ import annotations

import numpy as np


def _fmix32(h, xp):
    h = h ^ (h >> 16)
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def seed_word(seed: int) -> np.uint32:
    return np.uint32((int(seed) * 0x27D4EB2F + 0x165667B1) & 0xFFFFFFFF)


def sample_key(seq_start_row, latent, seed, xp=np):
    """31-bit int32 key of (sequence, latent, seed) (murmur3 finalizer); numpy (xp=np) or jax (xp=jnp,
    `seed` then may be a traced `seed_word(seed)`)."""
    with np.errstate(over="ignore"):
        r = xp.asarray(seq_start_row).astype(xp.uint32)
        lat = xp.asarray(latent).astype(xp.uint32)
        word = xp.asarray(seed if getattr(seed, "dtype", None) == np.uint32 else seed_word(seed), xp.uint32)
        h = _fmix32(r * xp.uint32(0x9E3779B1) + word, xp)
        h = _fmix32(h ^ (lat * xp.uint32(0x85EBCA77) + xp.uint32(0xC2B2AE3D)), xp)
        return (h >> 1).astype(xp.int32)
