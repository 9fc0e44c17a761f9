"""The tied crosscoder's checkpoint layout (docs/method.md §4, §7): the reference's torch state dict
(W_enc (2, D, 3, F), b_enc (3, F), W_dec (F, 2, D), b_dec (2, D)) or our safetensors export, with
its `cfg.json`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderParams, default_buffers, normalization_buffers
from jaxcoders.files import is_url, write_files


TIED_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


def params_from_reference(state: dict):
    """CrossCoderParams from the reference tied state dict: W_enc (2, D, 3, F), b_enc (3, F),
    W_dec (F, 2, D), b_dec (2, D)."""
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


NORM_KEYS = ("normalisation_factor", "normalization_factor", "norm_scaling_factors", "normalisation_factors")


def load_tied_reference(path, normalization_factors=None) -> CrossCoder:
    """A tied crosscoder from the reference's checkpoint: a torch state dict (`*.pt`) or our
    safetensors export (`*.safetensors`), with its `*_cfg.json` (or `cfg.json`) beside it.

    The reference trains and analyses on inputs scaled per model (x_m · factor_m). Those factors are
    restored from the cfg (`normalisation_factor`, as our export writes them, or the other spellings
    in NORM_KEYS; `activation_mean` too when present) or from `normalization_factors` (M,), so that
    the loaded model reads raw activations (docs/method.md §4–5)."""
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

        try:
            state = load_file(str(p))
        except Exception as e:  # truncated or not a safetensors file
            raise ValueError(f"{p} is not a readable safetensors file ({e})") from e
    else:
        try:
            import torch
        except ImportError as e:
            raise ValueError(f"{p} is a torch file: install torch (pip install torch==2.13.0) to read it") from e
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        state = {k.split("_orig_mod.")[-1]: v.float().numpy() for k, v in sd.items()}
    for name, arr in state.items():
        if np.issubdtype(np.asarray(arr).dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"{p}: {name} holds NaN/inf values; the checkpoint is broken (re-export it)")
    params = params_from_reference(state)
    M, D, F3 = params.w_enc_MDF.shape
    cfg_json = {}
    for cand in (p.with_name(p.stem + "_cfg.json"), p.parent / "cfg.json", p.parent / "_cfg.json"):
        if cand.is_file():
            cfg_json = json.loads(cand.read_text())
            break
    factors = normalization_factors
    if factors is None:
        factors = next((cfg_json[k] for k in NORM_KEYS if cfg_json.get(k) is not None), None)
    cfg = CrossCoderConfig(M, D, F3 // 3, architecture="tied", input_normalization=factors is not None)
    buffers = default_buffers(cfg)
    if factors is not None:
        factors = np.asarray(factors, np.float32).reshape(-1)
        if factors.size not in (1, M):
            raise ValueError(f"{p}: {factors.size} normalization factors for {M} models")
        mean = np.asarray(cfg_json.get("activation_mean") or np.zeros((M, D)), np.float32).reshape(M, D)
        buffers = normalization_buffers(buffers, mean, per_model_scale=np.broadcast_to(factors, (M,)))
    model = CrossCoder(cfg, params=params, buffers=buffers)
    model.reference_config = cfg_json or None
    return model


TIED_EXPORT_FILES = ("model.safetensors", "cfg.json")


def tied_export_files(model) -> dict[str, bytes]:
    """The files of a tied export: `model.safetensors` (reference key names and shapes) + `cfg.json`
    (with the input normalization, when the model has one: `normalisation_factor` per model)."""
    from safetensors.numpy import save

    cfg = {k: v for k, v in (model.reference_config or {}).items() if k not in NORM_KEYS + ("activation_mean",)}
    cfg.update({"d_in": model.cfg.activation_dim, "dict_size": model.cfg.dict_size, "n_models": 2,
                "architecture": "tied"})
    if model.cfg.input_normalization:  # the reference's per-model factors (+ our mean, when not zero)
        b = model.buffers
        cfg["normalisation_factor"] = np.broadcast_to(np.asarray(b.act_scale, np.float64).reshape(-1),
                                                      (model.cfg.num_models,)).tolist()
        mean = np.asarray(b.act_mean_MD, np.float64)
        if np.any(mean != 0):
            cfg["activation_mean"] = mean.tolist()
    return {"model.safetensors": save(params_to_reference(model.cfg, model.params)),
            "cfg.json": json.dumps(cfg, indent=2, sort_keys=True).encode()}


def save_tied(model, out_dir, *, overwrite: bool = False) -> Path:
    """Export a tied crosscoder (`tied_export_files`) into `out_dir` (`jaxcoders.files.write_files`:
    atomic per file; a directory holding other files is refused unless `overwrite`)."""
    write_files(out_dir, tied_export_files(model), own_names=TIED_EXPORT_FILES, overwrite=overwrite,
                what="crosscoder export")
    return out_dir if is_url(out_dir) else Path(out_dir)
