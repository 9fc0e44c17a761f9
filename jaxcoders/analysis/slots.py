"""Slot statistics of a tied crosscoder (docs/method.md §4): how often each of a latent's shared,
base and chat slots fires, and the chat / base corners of the (r_chat, r_base) plane.

* `slot_statistics(model, acts)`: counts and ratios over an in-memory array;
* `TiedSlotsAccumulator`: the same inside `stream.run_pass` (what `analyze` runs on a tied export),
  plus per-slot counts per label class (e.g. per dataset), per-slot max activations, L0 per slot,
  and the research update's outlier filter: triples active on fewer than `RARE_FRACTION` of the
  tokens get no ratios (NaN) and are left out of the corners.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.analysis.stream import kahan_add, kahan_init, kahan_value
from jaxcoders.core.crosscoder import BASE, CHAT, SHARED, SLOTS, decoder_norms, normalize_input, tied_code
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


RARE_FRACTION = 5e-4  # the research update's outlier filter: active on < 0.05 % of the tokens
CORNER = (0.15, 0.04)  # chat corner: r_chat > 0.15 and r_base < 0.04 (base corner mirrored)


@dataclasses.dataclass(frozen=True)
class TiedSlotsAccumulator:
    """Per-slot firing counts (3, F), per label class (C, 3, F), and max scaled activations (3, F)
    of a tied crosscoder's inference code. groups: ((label name, class names), ...)."""

    groups: tuple = ()

    def aux(self, cfg, params):
        return {}

    def init(self, cfg, aux, dtype):
        F = cfg.dict_size
        st = {"count": np.zeros((3, F), np.uint32), "any": np.zeros((F,), np.uint32),
              "tokens": np.zeros((), np.uint32), "max_act": np.zeros((3, F), dtype),
              "k": kahan_init({"sum_act": (3, F)}, dtype)}
        for name, classes in self.groups:
            st[f"count/{name}"] = np.zeros((len(classes), 3, F), np.uint32)
        return st

    def update(self, cfg, params, aux, state, fwd):
        f = fwd.f  # (B, 3, F), padded rows 0
        n = decoder_norms(params.w_dec_MFD)  # (2, F)
        act = f * jnp.stack([n[0] + n[1], n[0], n[1]])[None]  # the slots' scaled activations
        active = f > 0
        new = dict(state)
        new["count"] = state["count"] + jnp.sum(active, axis=0, dtype=jnp.uint32)
        new["any"] = state["any"] + jnp.sum(jnp.any(active, axis=1), axis=0, dtype=jnp.uint32)
        new["tokens"] = state["tokens"] + jnp.sum(fwd.valid_B > 0, dtype=jnp.uint32)
        new["max_act"] = jnp.maximum(state["max_act"], jnp.max(act, axis=0))
        new["k"] = kahan_add(state["k"], {"sum_act": jnp.sum(act, axis=0)})
        for name, classes in self.groups:
            onehot = (fwd.labels[name][:, None] == jnp.arange(len(classes))[None, :]).astype(jnp.uint32)  # (B, C)
            new[f"count/{name}"] = state[f"count/{name}"] + jnp.einsum(
                "bc,bsf->csf", onehot, active.astype(jnp.uint32), preferred_element_type=jnp.uint32)
        return new

    def finalize(self, cfg, params, aux, state):
        counts = np.asarray(state["count"], np.int64)
        tokens = max(int(state["tokens"]), 1)
        rare = np.asarray(state["any"], np.float64) / tokens < RARE_FRACTION
        r_base = slot_ratio(counts[BASE], counts[SHARED])
        r_chat = slot_ratio(counts[CHAT], counts[SHARED])
        r_base[rare] = np.nan
        r_chat[rare] = np.nan
        with np.errstate(invalid="ignore"):
            chat_corner = (r_chat > CORNER[0]) & (r_base < CORNER[1])
            base_corner = (r_base > CORNER[0]) & (r_chat < CORNER[1])
        sums = kahan_value(state["k"])["sum_act"]
        latent = {"r_base": r_base, "r_chat": r_chat, "rare": rare, "chat_corner": chat_corner,
                  "base_corner": base_corner, "frequency": np.asarray(state["any"], np.float64) / tokens}
        for i, slot in enumerate(SLOTS):
            latent[f"count_{slot}"] = counts[i]
            latent[f"frequency_{slot}"] = counts[i] / tokens
            latent[f"max_activation_{slot}"] = np.asarray(state["max_act"][i], np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                latent[f"mean_activation_{slot}"] = np.where(counts[i] > 0, sums[i] / np.maximum(counts[i], 1), 0.0)
            for name, classes in self.groups:
                per = np.asarray(state[f"count/{name}"], np.int64)
                for c, cls in enumerate(classes):
                    latent[f"count_{slot}/{name}={cls}"] = per[c, i]
        l0 = counts.sum(axis=1) / tokens
        scalar = {"l0_shared": float(l0[SHARED]), "l0_base": float(l0[BASE]), "l0_chat": float(l0[CHAT]),
                  "l0": float(l0.sum()), "rare_latents": int(rare.sum()), "chat_corner": int(chat_corner.sum()),
                  "base_corner": int(base_corner.sum()), "rare_fraction": RARE_FRACTION,
                  "corner_thresholds": {"r_chat_min": CORNER[0], "r_base_max": CORNER[1]}}
        return {"latent": latent, "scalar": scalar}


def make_accumulator(labels=None, label_classes=None) -> TiedSlotsAccumulator:
    """The slots accumulator with per-class counts for every label stream given (e.g. datasets)."""
    groups = []
    for name, lab in sorted((labels or {}).items()):
        classes = (label_classes or {}).get(name)
        if classes is None:
            k = int(np.max(np.asarray(lab))) + 1 if len(lab) else 0
            classes = [str(i) for i in range(max(k, 1))]
        groups.append((str(name), tuple(str(c) for c in classes)))
    return TiedSlotsAccumulator(groups=tuple(groups))
