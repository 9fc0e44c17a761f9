"""The tied crosscoder (SPEC.md section 4): latents come in (shared, base, chat) triples.

Per latent index i there are three encoder slots and one decoder pair:

    f_k = ReLU(sum_m x_m W_enc[m, :, i, k] + b_enc[i, k]),  k in {shared, base, chat}
    x̂_base = (f_shared + f_base) W_dec[0] + b_dec[0]
    x̂_chat = (f_shared + f_chat) W_dec[1] + b_dec[1]
    loss = mean_b sum_{m,d} (x̂ - x)^2 + λ(t) mean_b sum_i f_shared,i (n_base,i + n_chat,i)
           + η λ(t) mean_b sum_i (f_base,i n_base,i + f_chat,i n_chat,i)

Storage: the encoder lives in the ordinary `CrossCoderParams` with `w_enc_MDF` of shape
(M, D, 3F) and `b_enc_F` of shape (3F,), latent-major and slot-minor (column 3i + k), so that
sharding the last axis over "latent" keeps every triple on the device that holds its decoder rows.
The public code layout is (B, 3, F) with slots [shared, base, chat].

With η = 1 a shared latent costs exactly as much as the (base, chat) pair that reproduces it, so
the objective cannot prefer shared over exclusive; η > 1 makes exclusive slots more expensive.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.config import CrossCoderConfig, TrainConfig

SHARED, BASE, CHAT = 0, 1, 2
SLOTS = ("shared", "base", "chat")


def tied_code(cfg: CrossCoderConfig, params, x_BMD: jax.Array) -> jax.Array:
    """f (B, 3, F): ReLU codes of the three slots."""
    from jaxcoders.crosscoder import encode_relu

    f = encode_relu(cfg, params, x_BMD)  # (B, 3F), column 3i + k
    B = f.shape[0]
    return jnp.transpose(f.reshape(B, cfg.dict_size, 3), (0, 2, 1))


def model_codes(f_B3F: jax.Array) -> jax.Array:
    """Per-model codes (B, 2, F): [shared + base, shared + chat]."""
    return jnp.stack([f_B3F[:, SHARED] + f_B3F[:, BASE], f_B3F[:, SHARED] + f_B3F[:, CHAT]], axis=1)


class TiedAux(NamedTuple):
    recon: jax.Array  # mean_b sum_{m,d} e^2
    sparsity_shared: jax.Array
    sparsity_exclusive: jax.Array
    l0_slots: jax.Array  # (3,) mean active latents per token per slot
    l0: jax.Array
    mse: jax.Array
    fired_F: jax.Array  # bool (F,): any slot of triple i active in the batch


def tied_loss(cfg: CrossCoderConfig, tcfg: TrainConfig, params, x_BMD: jax.Array, lam: jax.Array):
    from jaxcoders.crosscoder import decode, decoder_norms

    f = tied_code(cfg, params, x_BMD)
    e = x_BMD - decode(cfg, params, model_codes(f))
    recon = jnp.mean(jnp.sum(jnp.square(e), axis=(1, 2)))
    n = decoder_norms(params.w_dec_MFD)  # (2, F)
    sparsity_shared = jnp.mean(jnp.sum(f[:, SHARED] * (n[0] + n[1]), axis=-1))
    sparsity_excl = jnp.mean(jnp.sum(f[:, BASE] * n[0] + f[:, CHAT] * n[1], axis=-1))
    loss = recon + lam * sparsity_shared + tcfg.eta * lam * sparsity_excl
    active = f > 0
    l0_slots = jnp.mean(jnp.sum(active, axis=-1).astype(jnp.float32), axis=0)
    aux = TiedAux(recon, sparsity_shared, sparsity_excl, l0_slots, jnp.sum(l0_slots), recon,
                  jnp.any(active, axis=(0, 1)))
    return loss, jax.tree.map(jax.lax.stop_gradient, aux)


def init_tied_params(cfg: CrossCoderConfig, key: jax.Array, decoder_norm: float = 0.08):
    """Reference init: decoder rows random directions of norm 0.08, every encoder slot = W_dec^T."""
    from jaxcoders.crosscoder import CrossCoderParams

    M, D, F = cfg.num_models, cfg.activation_dim, cfg.dict_size
    w_dec = jax.random.normal(key, (M, F, D), jnp.float32)
    w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True) * decoder_norm
    w_enc = jnp.repeat(jnp.transpose(w_dec, (0, 2, 1))[..., None], 3, axis=-1).reshape(M, D, 3 * F)
    return CrossCoderParams(w_enc, jnp.zeros((3 * F,), jnp.float32), w_dec, jnp.zeros((M, D), jnp.float32))


def tied_lambda_warmup_steps(total_steps: int) -> int:
    """SPEC section 4: λ warms up linearly over the first 5% of steps."""
    return max(1, int(0.05 * total_steps))


def tied_decay_start(total_steps: int) -> int:
    """SPEC section 4: LR constant for 80% of the run, then linear decay to 0."""
    return int(0.8 * total_steps)


def tied_train_config(total_steps: int, **overrides) -> TrainConfig:
    """The reference tied run's schedule (lr 5e-5, λ = 2, η = 2, clip 1) for `total_steps`."""
    kw = dict(lr=5e-5, warmup_steps=0, l1_coefficient=2.0, eta=2.0, grad_clip_norm=1.0,
              l1_warmup_steps=tied_lambda_warmup_steps(total_steps), decay_start=tied_decay_start(total_steps),
              total_steps=total_steps)
    kw.update(overrides)
    return TrainConfig(**kw)


# ----------------------------------------------------------------------------- slot statistics


def slot_ratio(count, count_shared) -> np.ndarray:
    """count / count_shared, with x/0 = inf for x > 0 and 0/0 = 0 (a triple whose shared slot never
    fires but whose chat slot does is as chat-specific as it gets)."""
    count = np.asarray(count, np.float64)
    shared = np.asarray(count_shared, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = count / shared
    return np.where(shared > 0, r, np.where(count > 0, np.inf, 0.0))


def slot_statistics(model, acts_NMD, batch_size: int = 4096, corner=(0.15, 0.04)) -> dict:
    """Per-latent firing counts of each slot on (normalized) inputs and the ratios of SPEC section 4.

    Returns numpy arrays: count_shared/base/chat (F,), r_base = count_base / count_shared,
    r_chat = count_chat / count_shared (see `slot_ratio`), l0 per slot and total, and
    the chat corner (r_chat > corner[0] and r_base < corner[1]) and base corner (mirrored)."""
    from jaxcoders.crosscoder import normalize_input

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


# ----------------------------------------------------------------------------- reference checkpoints

TIED_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


def params_from_reference(state: dict):
    """CrossCoderParams from the reference tied state dict: W_enc (2, D, 3, F), b_enc (3, F),
    W_dec (F, 2, D), b_dec (2, D)."""
    from jaxcoders.crosscoder import CrossCoderParams

    missing = [k for k in TIED_KEYS if k not in state]
    if missing:
        raise ValueError(f"not a tied crosscoder state dict: missing {missing} (found {sorted(state)[:8]})")
    w_enc = np.asarray(state["W_enc"], np.float32)
    if w_enc.ndim != 4 or w_enc.shape[2] != 3:
        raise ValueError(f"W_enc must have shape (2, D, 3, F), got {w_enc.shape}")
    M, D, _, F = w_enc.shape
    b_enc = np.asarray(state["b_enc"], np.float32)
    w_dec = np.asarray(state["W_dec"], np.float32)
    b_dec = np.asarray(state["b_dec"], np.float32)
    for name, arr, want in (("b_enc", b_enc, (3, F)), ("W_dec", w_dec, (F, M, D)), ("b_dec", b_dec, (M, D))):
        if arr.shape != want:
            raise ValueError(f"{name} has shape {arr.shape}, expected {want}")
    return CrossCoderParams(
        np.ascontiguousarray(np.transpose(w_enc, (0, 1, 3, 2)).reshape(M, D, 3 * F)),
        np.ascontiguousarray(b_enc.T.reshape(3 * F)),
        np.ascontiguousarray(np.transpose(w_dec, (1, 0, 2))),
        b_dec,
    )


def params_to_reference(cfg: CrossCoderConfig, params) -> dict:
    M, D, F = cfg.num_models, cfg.activation_dim, cfg.dict_size
    w_enc = np.asarray(params.w_enc_MDF, np.float32).reshape(M, D, F, 3)
    return {
        "W_enc": np.ascontiguousarray(np.transpose(w_enc, (0, 1, 3, 2))),
        "b_enc": np.ascontiguousarray(np.asarray(params.b_enc_F, np.float32).reshape(F, 3).T),
        "W_dec": np.ascontiguousarray(np.transpose(np.asarray(params.w_dec_MFD, np.float32), (1, 0, 2))),
        "b_dec": np.ascontiguousarray(np.asarray(params.b_dec_MD, np.float32)),
    }


def load_tied_reference(path) -> "object":
    """A tied crosscoder from the reference's checkpoint: a torch state dict (`*.pt`) or our
    safetensors export (`*.safetensors`), with its `*_cfg.json` (or `cfg.json`) beside it."""
    from jaxcoders.crosscoder import CrossCoder

    p = Path(path)
    if p.is_dir():
        cands = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.pt"))
        if not cands:
            raise ValueError(f"{p} holds no tied crosscoder (*.pt or *.safetensors)")
        p = cands[0]
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        state = load_file(str(p))
    else:
        try:
            import torch
        except ImportError as e:
            raise ValueError(f"{p} is a torch file: install torch (pip install torch==2.13.0) to read it") from e
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        state = {k.split("_orig_mod.")[-1]: v.float().numpy() for k, v in sd.items()}
    params = params_from_reference(state)
    M, D, F3 = params.w_enc_MDF.shape
    cfg_json = {}
    for cand in (p.with_name(p.stem + "_cfg.json"), p.parent / "cfg.json", p.parent / "_cfg.json"):
        if cand.is_file():
            cfg_json = json.loads(cand.read_text())
            break
    cfg = CrossCoderConfig(M, D, F3 // 3, architecture="tied")
    model = CrossCoder(cfg, params=params)
    model.reference_config = cfg_json or None
    return model


def save_tied(model, out_dir) -> Path:
    """Export a tied crosscoder as `model.safetensors` (reference key names and shapes) + `cfg.json`."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(params_to_reference(model.cfg, model.params), str(out / "model.safetensors"))
    cfg = dict(model.reference_config or {})
    cfg.update({"d_in": model.cfg.activation_dim, "dict_size": model.cfg.dict_size, "n_models": 2,
                "architecture": "tied"})
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out
