"""Slot statistics of a tied crosscoder (docs/method.md §4): how often each of a latent's shared,
base and chat slots fires, and the chat / base corners of the (r_chat, r_base) plane."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.core.crosscoder import BASE, CHAT, SHARED, normalize_input, tied_code
from jaxcoders.core.tied import slot_ratio


def slot_statistics(model, acts_NMD, batch_size: int = 4096, corner=(0.15, 0.04)) -> dict:
    """Per-latent firing counts of each slot on (normalized) inputs and the ratios of docs/method.md §4.

    Returns numpy arrays: count_shared/base/chat (F,), r_base = count_base / count_shared,
    r_chat = count_chat / count_shared (see `slot_ratio`), l0 per slot and total, and
    the chat corner (r_chat > corner[0] and r_base < corner[1]) and base corner (mirrored)."""
    cfg = model.cfg
    params, buffers = model.params, model.buffers

    @jax.jit
    def count(x):
        f = tied_code(cfg, params, normalize_input(cfg, buffers, x))
        return jnp.sum(f > 0, axis=0)  # (3, F)

    counts = np.zeros((3, cfg.dict_size), np.int64)
    n = len(acts_NMD)
    for s in range(0, n, batch_size):
        counts += np.asarray(count(jnp.asarray(np.asarray(acts_NMD[s:s + batch_size], np.float32))))
    r_base, r_chat = slot_ratio(counts[BASE], counts[SHARED]), slot_ratio(counts[CHAT], counts[SHARED])
    l0 = counts.sum(axis=1) / max(n, 1)
    return {
        "count_shared": counts[SHARED], "count_base": counts[BASE], "count_chat": counts[CHAT],
        "r_base": r_base, "r_chat": r_chat,
        "l0_shared": float(l0[SHARED]), "l0_base": float(l0[BASE]), "l0_chat": float(l0[CHAT]),
        "l0_total": float(l0.sum()),
        "chat_corner": np.flatnonzero((r_chat > corner[0]) & (r_base < corner[1])),
        "base_corner": np.flatnonzero((r_base > corner[0]) & (r_chat < corner[1])),
    }
