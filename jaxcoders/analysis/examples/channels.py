"""The per-token channels of the examples: the device codes (one shared code, per model for DECOUPLED,
per slot for tied) and the named output channels made from them (`activation`, each model's
contribution norm, tied's scaled slots), with their scales (C, F) and definitions."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxcoders.core.crosscoder import SLOTS, summed_code_normalization
from jaxcoders.analysis import stream


def code_channels(cfg) -> tuple[str, ...]:
    """Names of the per-token codes kept on device: one shared code, per model (DECOUPLED) or per slot (tied)."""
    if cfg.is_tied:
        return SLOTS
    if cfg.is_batchtopk and cfg.decoupled:
        return stream.model_names(cfg.num_models)
    return ("code",)


def output_channels(cfg) -> tuple[str, ...]:
    names = ("activation",) + stream.model_names(cfg.num_models)
    return names + (("slot_shared", "slot_base", "slot_chat") if cfg.is_tied else ())


def channel_scales(cfg, params) -> np.ndarray:
    """(C, F): the factor turning each device code into its share of the ranking activation."""
    w = np.asarray(params.w_dec_MFD, np.float64)
    n = np.linalg.norm(w, axis=-1)  # (M, F)
    if cfg.is_tied:
        return np.stack([n[0] + n[1], n[0], n[1]])
    if cfg.is_batchtopk and cfg.decoupled:
        return n  # c_m = n_m
    return np.asarray(summed_code_normalization(cfg, jnp.asarray(w, jnp.float32)), np.float64)[None]


def channel_values(cfg, params, codes_ECW: np.ndarray, latents: np.ndarray, norms_scales=None) -> dict:
    """Named per-token channels (output_channels) from device codes (E, C, W) of latents (E,).
    norms_scales: precomputed ((M, F) decoder norms, (C, F) channel_scales)."""
    if norms_scales is None:
        norms_scales = (np.linalg.norm(np.asarray(params.w_dec_MFD, np.float64), axis=-1), channel_scales(cfg, params))
    n, sc = norms_scales[0][:, latents], norms_scales[1][:, latents]  # (M, E), (C, E)
    codes = np.asarray(codes_ECW, np.float64)
    out = {"activation": np.einsum("ecw,ce->ew", codes, sc)}
    for m, name in enumerate(stream.model_names(cfg.num_models)):
        if cfg.is_tied:
            f_m = codes[:, 0] + codes[:, 1 + m]
        elif codes.shape[1] > 1:
            f_m = codes[:, m]
        else:
            f_m = codes[:, 0]
        out[name] = f_m * n[m][:, None]
    if cfg.is_tied:
        for k, slot in enumerate(("slot_shared", "slot_base", "slot_chat")):
            out[slot] = codes[:, k] * sc[k][:, None]
    return {k: v.astype(np.float32) for k, v in out.items()}


def channel_docs(cfg) -> dict:
    """{output channel: its definition} for examples.json."""
    d = {"activation": "ranking activation per token (dashboards' f·c; DECOUPLED Σ_m f_m n_m; tied Σ scaled slots)"}
    for m, name in enumerate(stream.model_names(cfg.num_models)):
        code = ("shared + " + name + " slot code" if cfg.is_tied else
                f"{name} code" if (cfg.is_batchtopk and cfg.decoupled) else "the shared code")
        d[name] = f"{name} model's contribution norm f_m·‖d_j^{name}‖ (f_m = {code})"
    if cfg.is_tied:
        d.update(slot_shared="f_shared·(n_base + n_chat)", slot_base="f_base·n_base", slot_chat="f_chat·n_chat")
    return d
