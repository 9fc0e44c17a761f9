"""The crosscoder: pure functions over a params NamedTuple, and a thin Flax NNX shell.

Shapes (SPEC.md section 1): B batch, M models (index 0 = base, 1 = chat), D d_model, F latents.

    pre_BF  = sum_m x_BMD[:, m] @ w_enc_MDF[m] + b_enc_F        f_BF = ReLU(pre_BF)
    x̂_BMD[:, m] = f @ w_dec_MFD[m] + b_dec_MD[m]

Code normalization c (SPEC section 1) scales the code for the L1 penalty, for BatchTopK
selection and for the "latent activation" reported by statistics (`f * c`); decoding always uses
the unscaled code f.

BatchTopK (SPEC section 3): training keeps the k*B largest entries of the scaled score `f * c`
over the whole batch (values: the unscaled f); inference keeps `f_j` where `f_j c_j > theta`
(strictly). DECOUPLED code: per model scores `f * ||W_dec[m]||`, per-model selection and theta,
codes of shape (B, M, F).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcoders.config import CodeNormalization, CrossCoderConfig
from jaxcoders.selection import batch_topk_mask

NORM_EPS = 1e-8  # SPEC section 5: s = target_rms / sqrt(sum std^2 + 1e-8); denorm y / (s + 1e-8)


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
    act_scale: () (one global scale, SPEC section 5) or (M,) (per-model scalars); 1 when unused.
    target_rms: () float32, the normalization's target RMS (reference field; 1.0 by default).
    """

    threshold: jax.Array
    k: jax.Array
    act_mean_MD: jax.Array
    act_std_MD: jax.Array
    act_scale: jax.Array
    target_rms: jax.Array


# ----------------------------------------------------------------------------- math core


def _transpose_equations(eq: str) -> tuple[str, str]:
    """For `eq` = "A,B->C": the einsums giving d/dA ("C,B->A") and d/dB ("A,C->B") of a two-operand
    contraction. Valid when no index is repeated inside an operand and every index of each operand
    appears in the other operand or the output (true of every contraction in this package)."""
    ins, out = eq.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    for s, other in ((sa, sb + out), (sb, sa + out)):
        if len(set(s)) != len(s) or not set(s) <= set(other):
            raise ValueError(f"einsum_bf16 cannot transpose {eq!r}")
    return f"{out},{sb}->{sa}", f"{sa},{out}->{sb}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_bf16(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum with bfloat16 inputs and float32 accumulation and output, whose backward multiplies in
    bfloat16 too: the cotangent is rounded to bf16 and each gradient is a bf16 x bf16 -> f32 product.

    Plain autodiff of a bf16 einsum with f32 output multiplies the f32 cotangent by the f32-cast
    operand instead: an f32 matmul at default precision (TF32 on NVIDIA GPUs, measured on an H200 at
    the Gemma-2-2B size: the three backward matmuls of the L1 step took 28.6 of its 49 ms)."""
    return bf16_product(eq, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


def _einsum_bf16_fwd(eq, a, b):
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    out = bf16_product(eq, a16, b16)
    # zero-size arrays carry the input dtypes (residuals must be arrays)
    return out, (a16, b16, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _einsum_bf16_bwd(eq, res, g):
    a16, b16, a_dt, b_dt = res
    eq_a, eq_b = _transpose_equations(eq)
    g16 = g.astype(jnp.bfloat16)
    da = bf16_product(eq_a, g16, b16).astype(a_dt.dtype)
    db = bf16_product(eq_b, a16, g16).astype(b_dt.dtype)
    return da, db


def bf16_product(eq: str, x16: jax.Array, y16: jax.Array) -> jax.Array:
    """bf16 x bf16 -> f32 einsum. XLA:CPU rejects some such dot forms ("Unsupported element type for
    DotThunk"), so on CPU the bf16 values are widened first: f32 products of bf16 values are exact,
    so the result is the same up to summation order."""
    if jax.default_backend() == "cpu":
        return jnp.einsum(eq, x16.astype(jnp.float32), y16.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST,
                          preferred_element_type=jnp.float32)
    return jnp.einsum(eq, x16, y16, preferred_element_type=jnp.float32)


einsum_bf16.defvjp(_einsum_bf16_fwd, _einsum_bf16_bwd)


def _matmul(cfg: CrossCoderConfig, eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum under the dtype policy: float32 at full precision, or bf16 inputs with f32 accumulation
    (forward and backward: `einsum_bf16`)."""
    if cfg.compute_dtype == "bfloat16":
        return einsum_bf16(eq, a, b)
    return jnp.einsum(eq, a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def safe_sqrt(s: jax.Array) -> jax.Array:
    """sqrt(s) for s >= 0 whose gradient at s = 0 is 0 instead of inf (so ||0|| has gradient 0,
    as torch's norm backward defines it, not NaN). Same values as jnp.sqrt."""
    ok = s > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, s, 1.0)), 0.0)


def decoder_norms(w_dec_MFD: jax.Array) -> jax.Array:
    """n_{m,j} = ||W_dec[m, j, :]||_2, shape (M, F)."""
    return safe_sqrt(jnp.sum(jnp.square(w_dec_MFD), axis=-1))


def tie_shared_rows(cfg: CrossCoderConfig, w_dec_MFD: jax.Array) -> jax.Array:
    """Shared-latent variant: the first `n_shared_latents` rows of every model are model 0's.

    The forward pass only ever reads model 0's copy, so the block is identical across models by
    construction (and gradients of the other copies are zero)."""
    S = cfg.n_shared_latents
    if not S:
        return w_dec_MFD
    shared = jnp.broadcast_to(w_dec_MFD[:1, :S], (w_dec_MFD.shape[0] - 1, S, w_dec_MFD.shape[2]))
    return w_dec_MFD.at[1:, :S].set(shared)


def code_normalization(cfg: CrossCoderConfig, w_dec_MFD: jax.Array) -> jax.Array:
    """c_j of SPEC section 1: (F,), or (M, F) for DECOUPLED."""
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
    pre_BF = _matmul(cfg, "bmd,mdf->bf", x_BMD, params.w_enc_MDF) + params.b_enc_F
    return jax.nn.relu(pre_BF)


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
        from jaxcoders.tied import model_codes

        f = model_codes(f)
    if f.ndim == 2:
        x_BMD = _matmul(cfg, "bf,mfd->bmd", f, w_dec)
    else:
        x_BMD = _matmul(cfg, "bmf,mfd->bmd", f, w_dec)
    if add_bias:
        x_BMD = x_BMD + params.b_dec_MD
    return x_BMD


def normalize_input(cfg: CrossCoderConfig, buffers: CrossCoderBuffers, x_BMD: jax.Array) -> jax.Array:
    """(x - mean) * s (SPEC section 5); identity when the model has no input normalization."""
    if not cfg.input_normalization:
        return x_BMD
    scale = jnp.reshape(buffers.act_scale, (-1, 1))  # () -> (1,1); (M,) -> (M,1)
    return (x_BMD - buffers.act_mean_MD) * scale


def denormalize_output(cfg: CrossCoderConfig, buffers: CrossCoderBuffers, y_BMD: jax.Array) -> jax.Array:
    """y / (s + 1e-8) + mean (SPEC section 5); identity without input normalization."""
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
        from jaxcoders.tied import tied_code

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


# ----------------------------------------------------------------------------- initialisation


def init_params(cfg: CrossCoderConfig, key: jax.Array) -> CrossCoderParams:
    """The reference's initialisation (SPEC section 1), not bit-identical to torch's RNG.

    kaiming_uniform (gain sqrt 2, torch's fan-in convention: F for a (D, F) matrix, D*F for an
    (M, D, F) tensor); optional column rescale to `norm_init_scale`; decoder = encoder transpose
    or its own kaiming init; biases zero."""
    M, D, F = cfg.num_models, cfg.activation_dim, cfg.dict_size
    if cfg.is_tied:
        from jaxcoders.tied import init_tied_params

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
    """Buffers with input normalization statistics set (SPEC section 5).

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


# ----------------------------------------------------------------------------- jitted entry points

_encode_jit = jax.jit(encode, static_argnames=("cfg", "train", "method"))
_decode_jit = jax.jit(decode_output, static_argnames=("cfg",))
_scaled_jit = jax.jit(scaled_activations, static_argnames=("cfg", "train"))
_code_norm_jit = jax.jit(code_normalization, static_argnames=("cfg",))


# ----------------------------------------------------------------------------- NNX shell


class Buffer(nnx.Variable):
    """Non-trainable model state (threshold, k, normalization statistics)."""


def _get(var: nnx.Variable):
    """A Variable's array across flax versions (`.value` is deprecated in newer NNX)."""
    return var.get_value() if hasattr(var, "get_value") else var.value


def _set(var: nnx.Variable, value) -> None:
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:
        var.value = value


def _validate_input(cfg: CrossCoderConfig, x, name: str = "x") -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (B, M, D) = (B, {cfg.num_models}, {cfg.activation_dim}); got {x.shape}")
    if x.shape[1] != cfg.num_models:
        raise ValueError(
            f"{name} has {x.shape[1]} models on axis 1 but the crosscoder was built for M={cfg.num_models} "
            f"(shape {x.shape}; expected (B, {cfg.num_models}, {cfg.activation_dim}))"
        )
    if x.shape[2] != cfg.activation_dim:
        raise ValueError(
            f"{name} has activation dim {x.shape[2]} but the crosscoder expects D={cfg.activation_dim} "
            f"(shape {x.shape})"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a float array, got dtype {x.dtype}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf values; clean the activations before encoding")
    return x.astype(jnp.float32)


class CrossCoder(nnx.Module):
    """A crosscoder (L1 or BatchTopK) as a Flax NNX module.

    Holds `CrossCoderParams` as `nnx.Param`s and `CrossCoderBuffers` as `Buffer` variables; the
    math lives in the pure functions of this module. Inputs may be numpy or jax arrays.

    Args:
      cfg: the static `CrossCoderConfig`.
      rngs: nnx.Rngs for a fresh initialisation (ignored when `params` is given).
      params, buffers: existing state (e.g. from `jaxcoders.load_reference`).
      reference_config: the reference `config.json` dict this model came from (re-written on export).
    """

    def __init__(
        self,
        cfg: CrossCoderConfig,
        *,
        rngs: Optional[nnx.Rngs] = None,
        params: Optional[CrossCoderParams] = None,
        buffers: Optional[CrossCoderBuffers] = None,
        reference_config: Optional[dict] = None,
    ):
        self.cfg = cfg
        if params is None:
            rngs = rngs if rngs is not None else nnx.Rngs(0)
            params = init_params(cfg, rngs.params())
        buffers = buffers if buffers is not None else default_buffers(cfg)
        self.w_enc_MDF = nnx.Param(jnp.asarray(params.w_enc_MDF, jnp.float32))
        self.b_enc_F = nnx.Param(jnp.asarray(params.b_enc_F, jnp.float32))
        self.w_dec_MFD = nnx.Param(jnp.asarray(params.w_dec_MFD, jnp.float32))
        self.b_dec_MD = nnx.Param(jnp.asarray(params.b_dec_MD, jnp.float32))
        self.threshold = Buffer(jnp.asarray(buffers.threshold, jnp.float32))
        self.k = Buffer(jnp.asarray(buffers.k, jnp.int32))
        self.act_mean_MD = Buffer(jnp.asarray(buffers.act_mean_MD, jnp.float32))
        self.act_std_MD = Buffer(jnp.asarray(buffers.act_std_MD, jnp.float32))
        self.act_scale = Buffer(jnp.asarray(buffers.act_scale, jnp.float32))
        self.target_rms = Buffer(jnp.asarray(buffers.target_rms, jnp.float32))
        self.reference_config = dict(reference_config) if reference_config else None

    # --- state as NamedTuples (for the pure core, jit, sharding and checkpoints)
    _PARAM_FIELDS = ("w_enc_MDF", "b_enc_F", "w_dec_MFD", "b_dec_MD")
    _BUFFER_FIELDS = ("threshold", "k", "act_mean_MD", "act_std_MD", "act_scale", "target_rms")

    @property
    def params(self) -> CrossCoderParams:
        return CrossCoderParams(*(_get(getattr(self, n)) for n in self._PARAM_FIELDS))

    @property
    def buffers(self) -> CrossCoderBuffers:
        return CrossCoderBuffers(*(_get(getattr(self, n)) for n in self._BUFFER_FIELDS))

    def set_state(self, params: Optional[CrossCoderParams] = None, buffers: Optional[CrossCoderBuffers] = None):
        """Replace parameters and/or buffers in place (shapes must match)."""
        for fields, values in ((self._PARAM_FIELDS, params), (self._BUFFER_FIELDS, buffers)):
            if values is None:
                continue
            for name, value in zip(fields, values):
                var = getattr(self, name)
                value = jnp.asarray(value, _get(var).dtype)
                if value.shape != _get(var).shape:
                    raise ValueError(f"{name}: shape {value.shape} does not match the model's {_get(var).shape}")
                _set(var, value)
        return self

    # --- public API
    def encode(self, x, train: bool = False, method: str = "topk") -> jax.Array:
        """Code of x (B, M, D): (B, F), (B, M, F) for BatchTopK DECOUPLED, (B, 3, F) for tied.

        `train=True` uses BatchTopK's training-mode batch top-k selection (no threshold)."""
        x = _validate_input(self.cfg, x)
        return _encode_jit(self.cfg, self.params, self.buffers, x, train=train, method=method)

    def decode(self, f) -> jax.Array:
        """x̂ (B, M, D) from a code (B, F) or (B, M, F)."""
        f = jnp.asarray(f, jnp.float32)
        F, M = self.cfg.dict_size, self.cfg.num_models
        ok_mid = (M, 3) if self.cfg.is_tied else (M,)
        if f.ndim not in (2, 3) or f.shape[-1] != F or (f.ndim == 3 and f.shape[1] not in ok_mid):
            raise ValueError(f"code must have shape (B, {F}) or (B, {' or '.join(map(str, ok_mid))}, {F}); got {f.shape}")
        return _decode_jit(self.cfg, self.params, self.buffers, f)

    def __call__(self, x, train: bool = False) -> jax.Array:
        """Reconstruction x̂ (B, M, D) of x."""
        return self.decode(self.encode(x, train=train))

    def get_activations(self, x, train: bool = False) -> jax.Array:
        """Scaled latent activations f * c, (B, F) (DECOUPLED: summed over models)."""
        x = _validate_input(self.cfg, x)
        return _scaled_jit(self.cfg, self.params, self.buffers, x, train=train)

    def code_normalization(self) -> jax.Array:
        """c: (F,), or (M, F) for DECOUPLED."""
        return _code_norm_jit(self.cfg, self.params.w_dec_MFD)

    def decoder_norms(self) -> jax.Array:
        """(M, F) decoder row norms."""
        return decoder_norms(self.params.w_dec_MFD)

    @property
    def num_models(self) -> int:
        return self.cfg.num_models

    @property
    def activation_dim(self) -> int:
        return self.cfg.activation_dim

    @property
    def dict_size(self) -> int:
        return self.cfg.dict_size

    def __repr__(self) -> str:  # nnx's default repr dumps every array
        c = self.cfg
        extra = f", k={c.k}" if c.is_batchtopk else ""
        return (f"CrossCoder({c.architecture}, M={c.num_models}, D={c.activation_dim}, F={c.dict_size}, "
                f"code_normalization={c.code_normalization.name}{extra})")

    __str__ = __repr__
