"""BatchTopK selection: which entries of a (B, F) score matrix survive batch-global top-k.

Training-mode BatchTopK keeps the `k * B` largest entries of the whole score matrix (not per
token; SPEC section 3). The selection is not differentiated: callers multiply the unscaled code by
the boolean mask, so gradients flow to the kept entries only.

Tie rule (deterministic, documented): among entries equal to the cut value, those with the
smaller flat index (row-major over (B, F)) are kept first. `lax.top_k` orders equal values by
index, which gives exactly this rule.

Methods:
  "topk": `lax.top_k` over the flattened matrix (the reference method).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

METHODS = ("topk",)

_INT32_MAX = 2**31 - 1


def check_index_limits(num_entries: int) -> None:
    """Index-based selection needs flat indices that fit int32 (checked at trace time)."""
    if num_entries > _INT32_MAX:
        raise ValueError(
            f"batch top-k over {num_entries} entries exceeds the int32 index limit (2^31 - 1); "
            "use a smaller batch per device or shard the latent axis"
        )


def batch_topk_mask(
    scores_BF: jax.Array,
    k: int | jax.Array,
    *,
    k_cap: Optional[int] = None,
    method: str = "topk",
) -> jax.Array:
    """Boolean mask (B, F) of the `k * B` largest entries of `scores_BF`.

    Args:
      scores_BF: (B, F) float scores (e.g. ReLU code times code normalization), >= 0.
      k: per-token budget; a Python int, or a traced int32 scalar when `k_cap` is given
        (k-annealing changes k every step without recompiling).
      k_cap: static upper bound on `k` (needed when `k` is traced).
      method: selection method, one of `METHODS`.
    Returns:
      bool (B, F), exactly `min(k * B, B * F)` entries True.
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {METHODS}")
    B, F = scores_BF.shape
    check_index_limits(B * F)
    flat = scores_BF.reshape(-1)
    if isinstance(k, int) and k_cap is None:
        n_keep = min(k * B, B * F)
        _, idx = jax.lax.top_k(flat, n_keep)
        mask = jnp.zeros((B * F,), bool).at[idx].set(True)
        return mask.reshape(B, F)
    if k_cap is None:
        raise ValueError("a traced k needs a static k_cap")
    n_cap = min(k_cap * B, B * F)
    _, idx = jax.lax.top_k(flat, n_cap)  # sorted descending, ties by index
    n_keep = jnp.minimum(jnp.asarray(k, jnp.int32) * B, n_cap)
    keep = jnp.arange(n_cap) < n_keep
    mask = jnp.zeros((B * F,), bool).at[idx].max(keep)
    return mask.reshape(B, F)
