"""Crosscoder parameters and buffers: the NamedTuples, initialisation (docs/method.md §1, §4) and
input-normalization statistics (§5).

Shapes: M models (0 = base, 1 = chat), D d_model, F latents; the tied crosscoder stores its encoder
as (M, D, 3F), latent-major and slot-minor (column 3i + k).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.config import CodeNormalization, CrossCoderConfig


NORM_EPS = 1e-8  # docs/method.md §5: s = target_rms / sqrt(sum std^2 + 1e-8); denorm y / (s + 1e-8)


class CrossCoderParams(NamedTuple):
    """Trainable parameters (float32)."""

    w_enc_MDF: jax.Array
    b_enc_F: jax.Array
    w_dec_MFD: jax.Array
    b_dec_MD: jax.Array


class CrossCoderBuffers(NamedTuple):
    """Non-trained state that travels with the model (and with reference checkpoints).

    threshold: BatchTopK inference theta in scaled units, () or (M,) for DECOUPLED; -1 = unset
      (then every positive latent passes). Unused for L1 (kept at -1).
    k: () int32, BatchTopK k (0 for L1).
    act_mean_MD, act_std_MD: input normalization statistics, NaN-filled when unused.
    act_scale: () (one global scale, docs/method.md §5) or (M,) (per-model scalars); 1 when unused.
    target_rms: () float32, the normalization's target RMS (reference field; 1.0 by default).
    """

    threshold: jax.Array
    k: jax.Array
    act_mean_MD: jax.Array
    act_std_MD: jax.Array
    act_scale: jax.Array
    target_rms: jax.Array


def tie_shared_rows(cfg: CrossCoderConfig, w_dec_MFD: jax.Array) -> jax.Array:
    """Shared-latent variant: the first `n_shared_latents` rows of every model are model 0's.

    The forward pass only ever reads model 0's copy, so the block is identical across models by
    construction (and gradients of the other copies are zero)."""
    S = cfg.n_shared_latents
    if not S:
        return w_dec_MFD
    shared = jnp.broadcast_to(w_dec_MFD[:1, :S], (w_dec_MFD.shape[0] - 1, S, w_dec_MFD.shape[2]))
    return w_dec_MFD.at[1:, :S].set(shared)


def init_params(cfg: CrossCoderConfig, key: jax.Array) -> CrossCoderParams:
    """The reference's initialisation (docs/method.md §1), not bit-identical to torch's RNG.

    kaiming_uniform (gain sqrt 2, torch's fan-in convention: F for a (D, F) matrix, D*F for an
    (M, D, F) tensor); optional column rescale to `norm_init_scale`; decoder = encoder transpose
    or its own kaiming init; biases zero."""
    M, D, F = cfg.num_models, cfg.activation_dim, cfg.dict_size
    if cfg.is_tied:
        return init_tied_params(cfg, key)
    k_enc, k_dec = jax.random.split(key)

    def kaiming(key, shape):
        fan_in = shape[1] * int(np.prod(shape[2:])) if len(shape) > 2 else shape[1]
        bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

    if cfg.same_init_for_all_models:
        w_enc = jnp.broadcast_to(kaiming(k_enc, (D, F)), (M, D, F))
    else:
        w_enc = kaiming(k_enc, (M, D, F))
    if cfg.norm_init_scale is not None:
        w_enc = w_enc / jnp.linalg.norm(w_enc, axis=1, keepdims=True) * cfg.norm_init_scale
    if cfg.init_with_transpose:
        w_dec = jnp.transpose(w_enc, (0, 2, 1))
    else:
        if cfg.same_init_for_all_models:
            w_dec = jnp.broadcast_to(kaiming(k_dec, (F, D)), (M, F, D))
        else:
            w_dec = kaiming(k_dec, (M, F, D))
        if cfg.norm_init_scale is not None:
            w_dec = w_dec / jnp.linalg.norm(w_dec, axis=2, keepdims=True) * cfg.norm_init_scale
    w_dec = tie_shared_rows(cfg, jnp.asarray(w_dec, jnp.float32))
    return CrossCoderParams(
        w_enc_MDF=jnp.asarray(w_enc, jnp.float32),
        b_enc_F=jnp.zeros((F,), jnp.float32),
        w_dec_MFD=jnp.asarray(w_dec, jnp.float32),
        b_dec_MD=jnp.zeros((M, D), jnp.float32),
    )


def init_tied_params(cfg: CrossCoderConfig, key: jax.Array, decoder_norm: float = 0.08):
    """Reference init: decoder rows random directions of norm 0.08, every encoder slot = W_dec^T."""
    M, D, F = cfg.num_models, cfg.activation_dim, cfg.dict_size
    w_dec = jax.random.normal(key, (M, F, D), jnp.float32)
    w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True) * decoder_norm
    w_enc = jnp.repeat(jnp.transpose(w_dec, (0, 2, 1))[..., None], 3, axis=-1).reshape(M, D, 3 * F)
    return CrossCoderParams(w_enc, jnp.zeros((3 * F,), jnp.float32), w_dec, jnp.zeros((M, D), jnp.float32))


def default_buffers(cfg: CrossCoderConfig) -> CrossCoderBuffers:
    M, D = cfg.num_models, cfg.activation_dim
    theta_shape = (M,) if cfg.decoupled else ()
    return CrossCoderBuffers(
        threshold=jnp.full(theta_shape, -1.0, jnp.float32),
        k=jnp.asarray(cfg.k if cfg.is_batchtopk else 0, jnp.int32),
        act_mean_MD=jnp.full((M, D), jnp.nan, jnp.float32),
        act_std_MD=jnp.full((M, D), jnp.nan, jnp.float32),
        act_scale=jnp.asarray(1.0, jnp.float32),
        target_rms=jnp.asarray(1.0, jnp.float32),
    )


def normalization_buffers(
    buffers: CrossCoderBuffers,
    mean_MD,
    std_MD=None,
    *,
    target_rms: float = 1.0,
    per_model_scale=None,
) -> CrossCoderBuffers:
    """Buffers with input normalization statistics set (docs/method.md §5).

    Either the global scale `s = target_rms / sqrt(sum_{m,d} std^2 + 1e-8)` from `std_MD`, or the
    simpler per-model scalars `per_model_scale` (M,), e.g. sqrt(D) / E||x_m||."""
    mean_MD = jnp.asarray(mean_MD, jnp.float32)
    if per_model_scale is not None:
        scale = jnp.asarray(per_model_scale, jnp.float32)
        std = jnp.full(mean_MD.shape, jnp.nan, jnp.float32) if std_MD is None else jnp.asarray(std_MD, jnp.float32)
    else:
        if std_MD is None:
            raise ValueError("the global normalization scale needs std_MD (or pass per_model_scale)")
        std = jnp.asarray(std_MD, jnp.float32)
        scale = jnp.asarray(target_rms / math.sqrt(float(jnp.sum(jnp.square(std))) + NORM_EPS), jnp.float32)
    return buffers._replace(
        act_mean_MD=mean_MD, act_std_MD=std, act_scale=scale, target_rms=jnp.asarray(target_rms, jnp.float32)
    )


def fold_normalization(cfg: CrossCoderConfig, params: CrossCoderParams, buffers: CrossCoderBuffers):
    """An equivalent model without input normalization: the normalizer folded into the weights.

    Encoder: W' = s W, b' = b - sum_m s_m mean_m W_m. Decoder: W' = W / (s+eps), b' = b/(s+eps) + mean.
    The code normalization of the folded model changes by 1/(s+eps) per model, so theta is
    rescaled; with per-model scales this is exact only for L1 and DECOUPLED (a single BatchTopK
    threshold cannot follow per-model rescaling, which raises)."""
    if not cfg.input_normalization:
        return cfg, params, buffers
    M = cfg.num_models
    s_M = jnp.broadcast_to(jnp.reshape(buffers.act_scale, (-1,)), (M,))
    uniform = bool(jnp.all(s_M == s_M[0]))
    if cfg.is_batchtopk and not cfg.decoupled and not uniform:
        raise ValueError(
            "cannot fold per-model normalization scales into a non-DECOUPLED BatchTopK crosscoder: "
            "its selection would change; export with the global scale instead"
        )
    mean = buffers.act_mean_MD
    w_enc = params.w_enc_MDF * s_M[:, None, None]
    b_enc = params.b_enc_F - jnp.einsum("md,mdf->f", s_M[:, None] * mean, params.w_enc_MDF,
                                         precision=jax.lax.Precision.HIGHEST)
    inv = 1.0 / (s_M + NORM_EPS)
    w_dec = params.w_dec_MFD * inv[:, None, None]
    b_dec = params.b_dec_MD * inv[:, None] + mean
    threshold = buffers.threshold
    if cfg.is_batchtopk:
        if cfg.decoupled:
            threshold = jnp.where(threshold >= 0, threshold * inv, threshold)
        elif cfg.code_normalization != CodeNormalization.NONE:
            threshold = jnp.where(threshold >= 0, threshold * inv[0], threshold)
    new_cfg = cfg.replace(input_normalization=False)
    new_buffers = default_buffers(new_cfg)._replace(threshold=threshold, k=buffers.k)
    return new_cfg, CrossCoderParams(w_enc, b_enc, w_dec, b_dec), new_buffers
