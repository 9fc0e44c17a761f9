"""Validation during training: pooled FVE per model, L0, dead fraction and Δnorm class counts over
a few held-out batches (docs/method.md §6)."""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.crosscoder import (
    code_normalization,
    decode,
    decoder_norms,
    encode_relu,
    normalize_input,
    select_threshold,
    select_train,
    tied_code,
)
from jaxcoders.training import sharding as shd
from jaxcoders.training.state import TrainState


def make_eval_step(cfg: CrossCoderConfig):
    """Jitted accumulation of pooled validation statistics for one batch."""

    def eval_step(params, buffers, x_BMD):
        out = _eval_sums(params, buffers, x_BMD)
        out["nonfinite"] = jnp.sum(~jnp.isfinite(x_BMD.astype(jnp.float32))).astype(jnp.float32)
        return out

    def _eval_sums(params, buffers, x_BMD):
        x = normalize_input(cfg, buffers, x_BMD.astype(jnp.float32))
        if cfg.is_tied:
            f = tied_code(cfg, params, x)  # (B, 3, F)
            e = x - decode(cfg, params, f)
            fired = jnp.any(f > 0, axis=(0, 1))
            return {
                "sum_x_MD": jnp.sum(x, 0), "sum_x2_MD": jnp.sum(x * x, 0),
                "sum_e_MD": jnp.sum(e, 0), "sum_e2_MD": jnp.sum(e * e, 0),
                "n": jnp.float32(x.shape[0]), "l0_sum": jnp.sum(f > 0).astype(jnp.float32),
                "fired_F": fired,
            }
        f_BF = encode_relu(cfg, params, x)
        if cfg.is_batchtopk:
            c = code_normalization(cfg, params.w_dec_MFD)
            f_thr = select_threshold(cfg, f_BF, c, buffers.threshold)
            f_top, _ = select_train(cfg, f_BF, c, cfg.k)
            # before theta exists (theta < 0) the inference code is the training selection
            unset = jnp.any(buffers.threshold < 0)
            f = jnp.where(unset, f_top, f_thr)
        else:
            f = f_BF
        e = x - decode(cfg, params, f)
        fired = jnp.any(f > 0, axis=tuple(range(f.ndim - 1)))
        return {
            "sum_x_MD": jnp.sum(x, 0), "sum_x2_MD": jnp.sum(x * x, 0),
            "sum_e_MD": jnp.sum(e, 0), "sum_e2_MD": jnp.sum(e * e, 0),
            "n": jnp.float32(x.shape[0]), "l0_sum": jnp.sum(f > 0) / (f.shape[1] if f.ndim == 3 else 1),
            "fired_F": fired,
        }

    return jax.jit(eval_step)


def as_global_batch(x, mesh, batch_size: int):
    """A loader's batch as the global (B, M, D) array sharded on "data" (loaders may already
    yield global arrays; otherwise `x` holds this process's rows)."""
    if isinstance(x, jax.Array) and x.shape[0] == batch_size and not x.is_fully_addressable:
        return x
    if isinstance(x, jax.Array) and x.shape[0] == batch_size and jax.process_count() == 1:
        return jax.device_put(x, shd.named(mesh, shd.batch_spec()))
    return shd.global_batch(np.asarray(x), mesh)


def evaluate(cfg, state: TrainState, batches: Iterable, mesh, eval_step) -> dict:
    acc = None
    for x in batches:
        out = eval_step(state.params, state.buffers, as_global_batch(x, mesh, None))
        if acc is None:
            acc = out
        else:
            acc = {k: (acc[k] | out[k]) if k == "fired_F" else acc[k] + out[k] for k in acc}
    if acc is None:
        return {}
    acc = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float64), acc)
    if acc["nonfinite"] > 0:
        raise ValueError(f"the validation data contains {int(acc['nonfinite'])} NaN or inf values; remove those rows "
                         "from the validation split (or train without validation: --config.data.val_split='' / "
                         "--config.run.eval_every=0)")
    n = acc["n"]
    var_x = acc["sum_x2_MD"] / n - (acc["sum_x_MD"] / n) ** 2
    var_e = acc["sum_e2_MD"] / n - (acc["sum_e_MD"] / n) ** 2
    fve = 1.0 - var_e.sum(-1) / var_x.sum(-1)  # pooled over the whole validation set, per model
    norms = np.asarray(jax.device_get(decoder_norms(state.params.w_dec_MFD)), np.float64)
    delta = 0.5 * ((norms[1] - norms[0]) / np.maximum(np.maximum(norms[0], norms[1]), 1e-12) + 1.0)
    out = {f"val/fve_model{m}": float(fve[m]) for m in range(len(fve))}
    out.update({
        "val/l0": float(acc["l0_sum"] / n),
        "val/dead_fraction": float(1.0 - acc["fired_F"].mean()),
        "val/chat_only": int((delta > 0.9).sum()),
        "val/base_only": int((delta < 0.1).sum()),
        "val/shared": int(((delta >= 0.4) & (delta <= 0.6)).sum()),
    })
    return out
