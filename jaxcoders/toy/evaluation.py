"""Planted ground-truth benchmark for model diffing: does a crosscoder find what was planted, and
does it invent chat-only latents for concepts that are in fact shared (docs/method.md §6; the paper's
Complete Shrinkage / Latent Decoupling)?

For every trained crosscoder on the same synthetic data (`jaxcoders.toy.synthetic`):

* recovery: per planted feature, the best cosine of any latent's concatenated (base, chat)
  decoder pair with the feature's (base, chat) direction; "recovered" if > `recovered_cos`.
* chat-only latents: Δnorm ≥ 0.9 among latents that fire (tied: triples; their slot-ratio
  "chat corner" r_chat > 0.15, r_base < 0.04 is reported separately).
  Each is matched to the planted feature whose *chat* direction its chat decoder row is closest
  to. A chat-only latent matched to a feature that is present in the base model (shared, rotated,
  corr) is a **false chat-only latent**.
* Latent Scaling on those latents: flagged (not genuinely chat-specific) when ν^ε ≥ 0.2 or
  ν^r ≥ 0.5; kept otherwise (the paper's thresholds).
* tied: whether each correlation-shifted concept (A with B in chat) is captured by one triple
  (some triple's chat decoder row has cosine > `recovered_cos` with the normalized d_A + d_B).
"""
from __future__ import annotations

import numpy as np

from jaxcoders.toy.synthetic import PlantedDictionary, recovery

NU_ERROR_MAX, NU_RECON_MAX, DELTA_MIN = 0.2, 0.5, 0.9


def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def evaluate_crosscoder(model, planted: PlantedDictionary, x_eval, *, recovered_cos: float = 0.9,
                        latent_scaling_rows: int = 20000) -> dict:
    """Metrics of one trained crosscoder against the planted dictionary (see module docstring)."""
    cfg = model.cfg
    w_dec = np.asarray(model.params.w_dec_MFD, np.float64)
    kinds = planted.kinds
    rec = recovery(planted, w_dec)
    out = {"architecture": cfg.architecture}
    for kind in np.unique(kinds):
        sel = kinds == kind
        out[f"recovered_{kind}"] = f"{int((rec['max_cosine'][sel] > recovered_cos).sum())}/{int(sel.sum())}"
    n = np.linalg.norm(w_dec, axis=-1)
    delta = 0.5 * ((n[1] - n[0]) / np.maximum(np.maximum(n[0], n[1]), 1e-12) + 1.0)

    f = np.asarray(model.encode(x_eval[:8192]))
    if cfg.is_tied:
        from jaxcoders.analysis.slots import slot_statistics

        st = slot_statistics(model, x_eval[:8192])
        alive = (st["count_shared"] + st["count_base"] + st["count_chat"]) > 0
        chat_only = np.flatnonzero((delta >= DELTA_MIN) & alive)
        out["chat_corner_triples"] = int(len(st["chat_corner"]))
        out["l0"] = float((f > 0).sum(axis=(1, 2)).mean())
    else:
        fa = f if f.ndim == 2 else f.max(axis=1)
        alive = (fa > 0).any(axis=0)
        chat_only = np.flatnonzero((delta >= DELTA_MIN) & alive)
        out["l0"] = float((fa > 0).sum(axis=1).mean())
    out["alive"] = int(alive.sum())
    x_hat = np.asarray(model.decode(f))
    xe = x_eval[:8192]
    out["fve"] = float(np.mean([1 - np.var(xe[:, m] - x_hat[:, m], 0).sum() / np.var(xe[:, m], 0).sum()
                                for m in range(2)]))

    chat_dirs = _unit(planted.dict_chat_ID)
    present_in_base = np.linalg.norm(planted.dict_base_ID, axis=-1) > 0
    match = np.argmax(_unit(w_dec[1, chat_only]) @ chat_dirs.T, axis=1) if len(chat_only) else np.zeros(0, int)
    false_mask = present_in_base[match] if len(chat_only) else np.zeros(0, bool)
    out["chat_only_latents"] = int(len(chat_only))
    out["true_chat_only"] = int((~false_mask).sum())
    out["false_chat_only"] = int(false_mask.sum())

    if not cfg.is_tied and len(chat_only):
        from jaxcoders.analysis.scaling import latent_scaling

        ls = latent_scaling(model, x_eval[:latent_scaling_rows], latents=chat_only, batch_size=4096)
        nu_e, nu_r = ls["nu_error"], ls["nu_reconstruction"]
        kept = (nu_e < NU_ERROR_MAX) & (nu_r < NU_RECON_MAX)
        out["false_flagged_by_ls"] = f"{int((false_mask & ~kept).sum())}/{int(false_mask.sum())}"
        out["true_kept_by_ls"] = f"{int((~false_mask & kept).sum())}/{int((~false_mask).sum())}"
    else:
        out["false_flagged_by_ls"] = out["true_kept_by_ls"] = "n/a"

    if cfg.is_tied and planted.spec.n_corr_pairs:
        ia = np.flatnonzero(kinds == "corr_a")
        ib = np.flatnonzero(kinds == "corr_b")
        combo = _unit(planted.dict_chat_ID[ia] + planted.dict_chat_ID[ib])
        best = (combo @ _unit(w_dec[1]).T).max(axis=1)
        out["corr_concepts_in_one_triple"] = f"{int((best > recovered_cos).sum())}/{len(ia)}"
    return out
