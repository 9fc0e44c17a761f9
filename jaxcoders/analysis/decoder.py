"""Decoder-only latent metrics (docs/method.md §6): relative norm Δ, tags, decoder cosines, twins.

No activations needed. Model index 0 = base, 1 = chat. All metrics use the model's own decoder
(the crosscoder's input space).

* Δ_j = 0.5·((n_c − n_b)/max(n_c, n_b) + 1): 1 = chat-only, 0 = base-only (paper "Δnorm"). The
  reference's data frame stores 1 − Δ as `dec_norm_diff`; both columns are written.
* tags: chat-only Δ > 0.9, base-only Δ < 0.1, shared 0.4 ≤ Δ ≤ 0.6, else other.
* decoder_cos: cos(W_dec[base, j], W_dec[chat, j]).
* nearest-other-latent cosine (seed experiment 4, "twins"): for latent j and a pair of models
  (a, b), max_{k ≠ j} cos(W_dec[a, j], W_dec[b, k]) and its argmax. Pairs chat→chat, base→base
  (a near duplicate in the same model) and chat→base, base→chat (a chat-only latent whose chat
  direction is carried in base by another latent, usually a base-only twin). Computed in row
  chunks: memory O(chunk·F), compute F²·D per pair.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.analysis import stream

CHAT_ONLY, BASE_ONLY, SHARED = 0.9, 0.1, (0.4, 0.6)
TAGS = ("chat-only", "base-only", "shared", "other")


def relative_norm(w_dec_MFD, base: int = 0, chat: int = 1) -> np.ndarray:
    """Δ_j (F,) float64; NaN where both decoder rows are zero."""
    n = np.linalg.norm(np.asarray(w_dec_MFD, np.float64), axis=-1)
    nb, nc = n[base], n[chat]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * ((nc - nb) / np.maximum(nc, nb) + 1.0)


def tag_latents(delta, chat_only: float = CHAT_ONLY, base_only: float = BASE_ONLY,
                shared: tuple = SHARED) -> np.ndarray:
    """'chat-only' (Δ > 0.9), 'base-only' (Δ < 0.1), 'shared' (0.4 ≤ Δ ≤ 0.6) or 'other'."""
    delta = np.asarray(delta, np.float64)
    tags = np.full(delta.shape, "other", dtype=object)
    tags[(delta >= shared[0]) & (delta <= shared[1])] = "shared"
    tags[delta > chat_only] = "chat-only"
    tags[delta < base_only] = "base-only"
    return tags


def decoder_cosine(w_dec_MFD, a: int = 0, b: int = 1) -> np.ndarray:
    """cos(W_dec[a, j], W_dec[b, j]) (F,) float64; NaN for a zero row."""
    w = np.asarray(w_dec_MFD, np.float64)
    na, nb = np.linalg.norm(w[a], axis=-1), np.linalg.norm(w[b], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(w[a] * w[b], axis=-1) / (na * nb)


@functools.partial(jax.jit, static_argnames=("exclude_self",))
def _nearest_chunk(a_CD, b_FD, start, exclude_self: bool):
    sims = jnp.einsum("cd,fd->cf", a_CD, b_FD, precision=jax.lax.Precision.HIGHEST)
    if exclude_self:
        rows = start + jnp.arange(a_CD.shape[0])
        sims = jnp.where(rows[:, None] == jnp.arange(b_FD.shape[0])[None, :], -jnp.inf, sims)
    return jnp.max(sims, axis=1), jnp.argmax(sims, axis=1)


def nearest_cosine(a_FD, b_FD=None, *, exclude_self: bool = True, chunk: int = 1024):
    """For each row of a: the max cosine to a row of b (other than its own index) and that index.

    Returns (cos (F,) float64, index (F,) int64). Zero rows have cosine NaN and index -1."""
    a = np.asarray(a_FD, np.float32)
    b = a if b_FD is None else np.asarray(b_FD, np.float32)
    unit = lambda w: w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-30)
    an, bn = unit(a), jnp.asarray(unit(b))
    F = a.shape[0]
    chunk = max(1, min(chunk, F))
    cos, idx = np.empty(F, np.float64), np.empty(F, np.int64)
    for s in range(0, F, chunk):
        blk = an[s:s + chunk]
        n = blk.shape[0]
        if n < chunk:
            blk = np.concatenate([blk, np.zeros((chunk - n, blk.shape[1]), blk.dtype)])
        c, i = _nearest_chunk(jnp.asarray(blk), bn, s, exclude_self)
        cos[s:s + n], idx[s:s + n] = np.asarray(c)[:n], np.asarray(i)[:n]
    zero = (np.linalg.norm(a, axis=1) == 0)
    cos[zero], idx[zero] = np.nan, -1
    if F == 1 and exclude_self:
        cos[:], idx[:] = np.nan, -1
    return cos, idx


def decoder_metrics(model, *, nearest: bool = True, chunk: int = 1024) -> dict:
    """Per-latent decoder columns: norms, delta_norm, dec_norm_diff (= 1 − Δ, reference), tag,
    decoder_cos, and (nearest=True) nearest_<a>_<b>_cos / _index for the pairs above."""
    cfg, params, _ = stream.resolve_model(model)
    if cfg.num_models < 2:
        raise ValueError(f"decoder metrics compare a base and a chat decoder (M >= 2); this dictionary has M = "
                         f"{cfg.num_models} (a plain SAE: match two SAEs with jaxcoders.analysis.sae_match)")
    w = np.asarray(params.w_dec_MFD)
    names = stream.model_names(cfg.num_models)
    out = {}
    norms = np.linalg.norm(w.astype(np.float64), axis=-1)
    for m, name in enumerate(names):
        out[f"norm_{name}"] = norms[m]
    delta = relative_norm(w)
    out["delta_norm"] = delta
    out["dec_norm_diff"] = 1.0 - delta
    out["tag"] = tag_latents(delta)
    out["decoder_cos"] = decoder_cosine(w)
    if nearest:
        for a, b in ((1, 1), (0, 0), (1, 0), (0, 1)):
            cos, idx = nearest_cosine(w[a], w[b], chunk=chunk)
            out[f"nearest_{names[a]}_{names[b]}_cos"] = cos
            out[f"nearest_{names[a]}_{names[b]}_index"] = idx
    return out


def select_latents(model, which: str) -> Optional[np.ndarray]:
    """Latent indices for a CLI selector: 'all' (None), 'chat-only', 'base-only', 'shared',
    'exclusive' (chat-only ∪ base-only), or a comma-separated list of indices."""
    which = which.strip().lower().replace("_", "-")
    if which in ("all", ""):
        return None
    cfg, params, _ = stream.resolve_model(model)
    tags = tag_latents(relative_norm(params.w_dec_MFD))
    if which in ("chat-only", "base-only", "shared", "other"):
        return np.flatnonzero(tags == which)
    if which == "exclusive":
        return np.flatnonzero((tags == "chat-only") | (tags == "base-only"))
    try:
        return np.asarray([int(t) for t in which.split(",") if t.strip()], np.int64)
    except ValueError:
        raise ValueError(f"unknown latent selection {which!r}: use all, chat-only, base-only, shared, exclusive, "
                         "or comma-separated indices") from None
