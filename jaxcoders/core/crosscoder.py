"""The crosscoder: pure functions over a params NamedTuple, and a thin Flax NNX shell.

Shapes (docs/method.md §1): B batch, M models (index 0 = base, 1 = chat), D d_model, F latents.

    pre_BF  = sum_m x_BMD[:, m] @ w_enc_MDF[m] + b_enc_F        f_BF = ReLU(pre_BF)
    x̂_BMD[:, m] = f @ w_dec_MFD[m] + b_dec_MD[m]

Code normalization c (docs/method.md §1) scales the code for the L1 penalty, for BatchTopK
selection and for the "latent activation" reported by statistics (`f * c`); decoding always uses
the unscaled code f.

BatchTopK (docs/method.md §3): training keeps the k*B largest entries of the scaled score `f * c`
over the whole batch (values: the unscaled f); inference keeps `f_j` where `f_j c_j > theta`
(strictly). DECOUPLED code: per model scores `f * ||W_dec[m]||`, per-model selection and theta,
codes of shape (B, M, F).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxcoders.config import CodeNormalization, CrossCoderConfig
from jaxcoders.core.ops import bf16_runs_natively, einsum_bf16, matmul, safe_sqrt
from jaxcoders.core.params import NORM_EPS, CrossCoderBuffers, CrossCoderParams, tie_shared_rows
from jaxcoders.core.selection.exact import batch_topk_mask

SHARED, BASE, CHAT = 0, 1, 2  # tied crosscoder slots (docs/method.md §4)
SLOTS = ("shared", "base", "chat")


def decoder_norms(w_dec_MFD: jax.Array) -> jax.Array:
    """n_{m,j} = ||W_dec[m, j, :]||_2, shape (M, F)."""
    return safe_sqrt(jnp.sum(jnp.square(w_dec_MFD), axis=-1))


def code_normalization(cfg: CrossCoderConfig, w_dec_MFD: jax.Array) -> jax.Array:
    """c_j of docs/method.md §1: (F,), or (M, F) for DECOUPLED."""
    w_dec_MFD = tie_shared_rows(cfg, w_dec_MFD)
    n_MF = decoder_norms(w_dec_MFD)
    kind = cfg.code_normalization
    if kind == CodeNormalization.CROSSCODER:
        return n_MF.sum(0)
    if kind == CodeNormalization.SAE:
        return safe_sqrt(jnp.sum(jnp.square(w_dec_MFD), axis=(0, 2)))
    if kind == CodeNormalization.MIXED:
        sae = safe_sqrt(jnp.sum(jnp.square(w_dec_MFD), axis=(0, 2)))
        return cfg.code_normalization_alpha_sae * sae + cfg.code_normalization_alpha_cc * n_MF.sum(0)
    if kind == CodeNormalization.NONE:
        return jnp.ones(w_dec_MFD.shape[1], w_dec_MFD.dtype)
    if kind == CodeNormalization.DECOUPLED:
        return n_MF
    raise ValueError(f"unsupported code normalization {kind}")


def summed_code_normalization(cfg: CrossCoderConfig, w_dec_MFD: jax.Array) -> jax.Array:
    """(F,) normalization used for "latent activation" reporting and the L1 penalty.

    DECOUPLED sums the per-model norms (the reference's `get_activations`)."""
    c = code_normalization(cfg, w_dec_MFD)
    return c.sum(0) if cfg.decoupled else c


def encode_relu(cfg: CrossCoderConfig, params: CrossCoderParams, x_BMD: jax.Array) -> jax.Array:
    """f_BF = ReLU(sum_m x_m W_enc[m] + b_enc) on (already normalized) inputs."""
    pre_BF = matmul(cfg, "bmd,mdf->bf", x_BMD, params.w_enc_MDF) + params.b_enc_F
    return jax.nn.relu(pre_BF)


def encode_relu_flat(cfg: CrossCoderConfig, params: CrossCoderParams, x_BMD: jax.Array) -> jax.Array:
    """`crosscoder.encode_relu` as one (B, M·D) @ (M·D, F) matmul (same dtype policy).

    The same forward; its transpose gives dW_enc directly in the parameter's (M·D, F) layout,
    where the einsum form made XLA:CPU produce it as (F, M·D) and transpose it inside each of the
    optimizer's elementwise passes (measured: L1 step at D=512 F=8192 B=2048 ~5 % faster)."""
    if cfg.compute_dtype == "bfloat16" and bf16_runs_natively("bmd,bf->mdf") and not bf16_runs_natively("bk,bf->kf"):
        # XLA:CPU multiplies the 3-D form's dW_enc natively, the flat form's only widened to f32
        # (448 against 134 GFLOP/s at D=512 F=8192 B=2048 on an AMX Xeon; L1 step 729 -> 414 ms)
        return encode_relu(cfg, params, x_BMD)
    B = x_BMD.shape[0]
    w = params.w_enc_MDF.reshape(-1, params.w_enc_MDF.shape[-1])
    x = x_BMD.reshape(B, -1)
    if cfg.compute_dtype == "bfloat16":
        pre = einsum_bf16("bk,kf->bf", x, w)
    else:
        pre = jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    return jax.nn.relu(pre + params.b_enc_F)


def tied_code(cfg: CrossCoderConfig, params, x_BMD: jax.Array) -> jax.Array:
    """f (B, 3, F): ReLU codes of the three slots."""
    f = encode_relu(cfg, params, x_BMD)  # (B, 3F), column 3i + k
    B = f.shape[0]
    return jnp.transpose(f.reshape(B, cfg.dict_size, 3), (0, 2, 1))


def model_codes(f_B3F: jax.Array) -> jax.Array:
    """Per-model codes (B, 2, F): [shared + base, shared + chat]."""
    return jnp.stack([f_B3F[:, SHARED] + f_B3F[:, BASE], f_B3F[:, SHARED] + f_B3F[:, CHAT]], axis=1)


def batchtopk_scores(cfg: CrossCoderConfig, f_BF: jax.Array, c: jax.Array) -> jax.Array:
    """Selection score f * c: (B, F), or (B, M, F) for DECOUPLED."""
    if cfg.decoupled:
        return f_BF[:, None, :] * c[None, :, :]
    return f_BF * c


def select_train(
    cfg: CrossCoderConfig,
    f_BF: jax.Array,
    c: jax.Array,
    k: int | jax.Array,
    *,
    k_cap: Optional[int] = None,
    method: str = "topk",
) -> tuple[jax.Array, jax.Array]:
    """Training-mode batch top-k: returns (code, mask).

    code: unscaled f kept where selected, (B, F) or (B, M, F) for DECOUPLED; mask: bool, same shape.
    The selection itself is not differentiated (the mask is a constant)."""
    scores = jax.lax.stop_gradient(batchtopk_scores(cfg, f_BF, c))
    if cfg.decoupled:
        scores_MBF = jnp.moveaxis(scores, 1, 0)
        mask_MBF = jax.vmap(lambda s: batch_topk_mask(s, k, k_cap=k_cap, method=method))(scores_MBF)
        mask = jnp.moveaxis(mask_MBF, 0, 1)
        return f_BF[:, None, :] * mask, mask
    mask = batch_topk_mask(scores, k, k_cap=k_cap, method=method)
    return f_BF * mask, mask


def select_threshold(cfg: CrossCoderConfig, f_BF: jax.Array, c: jax.Array, threshold: jax.Array):
    """Inference-mode BatchTopK: keep f where f*c > theta (strict). DECOUPLED: per-model theta."""
    scores = batchtopk_scores(cfg, f_BF, c)
    if cfg.decoupled:
        mask = scores > threshold[None, :, None]
        return f_BF[:, None, :] * mask
    return f_BF * (scores > threshold)


def decode(cfg: CrossCoderConfig, params: CrossCoderParams, f: jax.Array, *, add_bias: bool = True):
    """x̂ (B, M, D) from a code f of shape (B, F) (shared), (B, M, F) (per model) or, for the tied
    crosscoder, (B, 3, F) (slots shared, base, chat)."""
    w_dec = tie_shared_rows(cfg, params.w_dec_MFD)
    if cfg.is_tied and f.ndim == 3 and f.shape[1] == 3:
        f = model_codes(f)
    if f.ndim == 2:
        x_BMD = matmul(cfg, "bf,mfd->bmd", f, w_dec)
    else:
        x_BMD = matmul(cfg, "bmf,mfd->bmd", f, w_dec)
    if add_bias:
        x_BMD = x_BMD + params.b_dec_MD
    return x_BMD


def normalize_input(cfg: CrossCoderConfig, buffers: CrossCoderBuffers, x_BMD: jax.Array) -> jax.Array:
    """(x - mean) * s (docs/method.md §5); identity when the model has no input normalization."""
    if not cfg.input_normalization:
        return x_BMD
    scale = jnp.reshape(buffers.act_scale, (-1, 1))  # () -> (1,1); (M,) -> (M,1)
    return (x_BMD - buffers.act_mean_MD) * scale


def denormalize_output(cfg: CrossCoderConfig, buffers: CrossCoderBuffers, y_BMD: jax.Array) -> jax.Array:
    """y / (s + 1e-8) + mean (docs/method.md §5); identity without input normalization."""
    if not cfg.input_normalization:
        return y_BMD
    scale = jnp.reshape(buffers.act_scale, (-1, 1))
    return y_BMD / (scale + NORM_EPS) + buffers.act_mean_MD


def encode(
    cfg: CrossCoderConfig,
    params: CrossCoderParams,
    buffers: CrossCoderBuffers,
    x_BMD: jax.Array,
    *,
    train: bool = False,
    method: str = "topk",
) -> jax.Array:
    """The model's code for raw inputs x (normalized here if the model normalizes its inputs).

    L1: f (B, F). BatchTopK: inference (threshold) or training-mode batch top-k selection;
    (B, M, F) for DECOUPLED. Tied: (B, 3, F), slots [shared, base, chat]."""
    x_BMD = normalize_input(cfg, buffers, x_BMD)
    if cfg.is_tied:
        return tied_code(cfg, params, x_BMD)
    f_BF = encode_relu(cfg, params, x_BMD)
    if not cfg.is_batchtopk:
        return f_BF
    c = code_normalization(cfg, params.w_dec_MFD)
    if train:
        return select_train(cfg, f_BF, c, cfg.k, method=method)[0]
    return select_threshold(cfg, f_BF, c, buffers.threshold)


def scaled_activations(cfg, params, buffers, x_BMD, *, train: bool = False) -> jax.Array:
    """The "latent activation" f * c of statistics and dashboards, (B, F) (DECOUPLED: summed over models)."""
    f = encode(cfg, params, buffers, x_BMD, train=train)
    if cfg.is_tied:  # (B, 3, F): shared slot scaled by n_base + n_chat, exclusive slots by their own norm
        n = decoder_norms(params.w_dec_MFD)
        return f * jnp.stack([n[0] + n[1], n[0], n[1]])[None]
    if cfg.decoupled and cfg.is_batchtopk:
        return jnp.sum(f * code_normalization(cfg, params.w_dec_MFD)[None], axis=1)
    return f * summed_code_normalization(cfg, params.w_dec_MFD)


def decode_output(cfg, params, buffers, f) -> jax.Array:
    """Decode and map back to the raw activation space."""
    return denormalize_output(cfg, buffers, decode(cfg, params, f))
