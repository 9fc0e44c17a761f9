"""The crosscoder side of the examples: loading it (tied crosscoders included) and the codes of the
selected latents — of a batch (B, C, F) for the pass, and of example windows (E, C, W) re-encoded
with one encoder column per example for the window fill (C code channels, see `channels`)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcoders.core.crosscoder import code_normalization, encode, normalize_input
from jaxcoders.core.ops import matmul
from jaxcoders.analysis import stream


def load_model(model):
    """(cfg, params, buffers) from a CrossCoder / triple / crosscoder spec (a path, a workdir, gs://,
    a hub repo; tied crosscoders included: `jaxcoders.io.reference.load_reference`)."""
    return stream.resolve_model(model)


def batch_codes(cfg, params, buffers, x_BMD):
    """Device codes (B, C, F) of a batch: `encode`'s codes with the channel axis always present."""
    f = encode(cfg, params, buffers, x_BMD)
    return f[:, None, :] if f.ndim == 2 else f


def _latent_codes(cfg, params, buffers, pre, lat):
    """Codes (..., C) of latents `lat` (broadcast against pre) from their pre-activations: pre (...)
    (pre (..., 3) for the tied slots). The inference semantics of `encode`, one latent at a time
    (BatchTopK's threshold f·c > θ is per entry)."""
    f = jax.nn.relu(pre)
    if cfg.is_tied:
        return f
    if not cfg.is_batchtopk:
        return f[..., None]
    c = code_normalization(cfg, params.w_dec_MFD)
    if cfg.decoupled:
        return jnp.stack([f * (f * c[m][lat] > buffers.threshold[m]) for m in range(c.shape[0])], axis=-1)
    return (f * (f * c[lat] > buffers.threshold))[..., None]


def _encoder_columns(cfg, params, lat):
    """Encoder weights (M, D, *lat.shape[, 3]) and biases of latents `lat` (tied: the 3 slot columns)."""
    if cfg.is_tied:
        cols = 3 * lat[..., None] + jnp.arange(3)  # slot-minor columns 3i + k
        return params.w_enc_MDF[:, :, cols], params.b_enc_F[cols]
    return params.w_enc_MDF[:, :, lat], params.b_enc_F[lat]


@functools.partial(jax.jit, static_argnames=("cfg",))
def window_codes(params, buffers, x_UMD, rows_EW, lat_E, *, cfg):
    """Codes (E, C, W) of latent lat_E[e] at the rows x_UMD[rows_EW[e]]: one encoder column per
    example, E·W·M·D·C work (scattered windows of many different latents)."""
    x = normalize_input(cfg, buffers, x_UMD.astype(jnp.float32))[rows_EW]  # (E, W, M, D)
    w, b = _encoder_columns(cfg, params, lat_E)
    eq = "ewmd,mdek->ewk" if cfg.is_tied else "ewmd,mde->ew"
    pre = matmul(cfg, eq, x, w) + b[:, None]
    return jnp.moveaxis(_latent_codes(cfg, params, buffers, pre, lat_E[:, None]), -1, 1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def window_codes_dense(params, buffers, x_UMD, rows_EW, lat_L, pos_E, *, cfg):
    """The same as `window_codes` through the dense (U, L) codes of the chunk's distinct rows and
    latents (lat_L, pos_E = example e's index into it): U·L·M·D work, for overlapping windows."""
    x = normalize_input(cfg, buffers, x_UMD.astype(jnp.float32))
    w, b = _encoder_columns(cfg, params, lat_L)
    pre = matmul(cfg, "umd,mdlk->ulk" if cfg.is_tied else "umd,mdl->ul", x, w) + b
    codes = _latent_codes(cfg, params, buffers, pre, lat_L[None, :])  # (U, L, C)
    return jnp.moveaxis(codes[rows_EW, pos_E[:, None]], -1, 1)
