"""`CrossCoder`: the Flax NNX shell around the pure crosscoder math (`jaxcoders.core.crosscoder`).

It owns the parameters (`nnx.Param`) and buffers (`Buffer` variables), validates inputs and calls
jitted pure functions; numpy or jax arrays in, jax arrays out.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.crosscoder import (
    code_normalization,
    decode_output,
    decoder_norms,
    encode,
    scaled_activations,
)
from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams, default_buffers, init_params


_encode_jit = jax.jit(encode, static_argnames=("cfg", "train", "method"))


_decode_jit = jax.jit(decode_output, static_argnames=("cfg",))


_scaled_jit = jax.jit(scaled_activations, static_argnames=("cfg", "train"))


_code_norm_jit = jax.jit(code_normalization, static_argnames=("cfg",))


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
