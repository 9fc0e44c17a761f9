"""The research update's "twin" analysis (Minder et al., LessWrong 2025; docs/analysis.md): is an
exclusive latent's direction carried by other latents?

For each chat-only latent j (Δ > 0.9) the probe is its chat decoder row d^c_j, compared with
* the **shared** latents k (0.4 ≤ Δ ≤ 0.6) through their chat rows: cos(d^c_j, d^c_k);
* the **other-exclusive** latents, the base-only ones (Δ < 0.1), through their base rows:
  cos(d^c_j, d^b_k) — a base-only "twin" of a chat-only latent.
Base-only latents mirror it (probe d^b_j; shared latents' base rows; chat-only latents' chat rows).
Kept per exclusive latent and candidate set: the `top` (5) most similar latents and their cosines
(descending, ties to the lower index) and the maximum, classed against the thresholds
`low` / `high` (0.3 / 0.7): `high` (≥ high: a twin), `mid`, `low` (< low: no similar direction).

Columns (F,), NaN / "" for the other latents: `twin_<set>_index` and `twin_<set>_cos` (JSON lists),
`twin_<set>_max_cos`, `twin_<set>_class` for set in (shared, exclusive).
"""
from __future__ import annotations

import json

import numpy as np

from jaxcoders.analysis.decoder import relative_norm, tag_latents

SETS = ("shared", "exclusive")
LOW, HIGH, TOP = 0.3, 0.7, 5


def _unit(w):
    w = np.asarray(w, np.float32)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-30)


def top_similar(probe_SD, cand_KD, top: int = TOP, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each probe row its `top` most similar candidate rows by cosine: (index (S, t), cos (S, t)),
    t = min(top, K), descending (ties to the lower index)."""
    p, c = _unit(probe_SD), _unit(cand_KD)
    S, K = len(p), len(c)
    t = min(top, K)
    idx, cos = np.zeros((S, t), np.int64), np.zeros((S, t), np.float64)
    for s in range(0, S, chunk):
        sims = p[s:s + chunk] @ c.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :t]
        idx[s:s + chunk] = order
        cos[s:s + chunk] = np.take_along_axis(sims, order, axis=1)
    return idx, cos


def classify(max_cos, low: float = LOW, high: float = HIGH) -> np.ndarray:
    """'high' (≥ high), 'mid', 'low' (< low) per value; '' for NaN."""
    v = np.asarray(max_cos, np.float64)
    out = np.full(v.shape, "", object)
    ok = np.isfinite(v)
    out[ok] = "mid"
    out[ok & (v >= high)] = "high"
    out[ok & (v < low)] = "low"
    return out


def twin_analysis(w_dec_MFD, *, top: int = TOP, low: float = LOW, high: float = HIGH, tags=None) -> dict:
    """The twin columns (see the module docstring) and a summary: {"columns": {name: (F,)},
    "summary": {tag: {set: {"high": n, "mid": n, "low": n}}, "thresholds": ...}}.
    `tags` defaults to the Δnorm tags of `w_dec_MFD` (model 0 = base, 1 = chat)."""
    w = np.asarray(w_dec_MFD, np.float32)
    if w.ndim != 3 or w.shape[0] < 2:
        raise ValueError(f"the twin analysis needs base and chat decoders (M, F, D) with M ≥ 2; got {w.shape}")
    if not 0 <= low <= high:
        raise ValueError(f"the thresholds must satisfy 0 ≤ low ≤ high, got low={low}, high={high}")
    tags = tag_latents(relative_norm(w)) if tags is None else np.asarray(tags, object)
    F = w.shape[1]
    cols = {}
    for s in SETS:
        cols[f"twin_{s}_index"] = np.full(F, "", object)
        cols[f"twin_{s}_cos"] = np.full(F, "", object)
        cols[f"twin_{s}_max_cos"] = np.full(F, np.nan)
    summary = {}
    shared = np.flatnonzero(tags == "shared")
    for tag, probe, other_tag, other_row in (("chat-only", 1, "base-only", 0), ("base-only", 0, "chat-only", 1)):
        mine = np.flatnonzero(tags == tag)
        others = np.flatnonzero(tags == other_tag)
        for s, cand, row in (("shared", shared, probe), ("exclusive", others, other_row)):
            if not len(mine) or not len(cand):
                continue
            idx, cos = top_similar(w[probe, mine], w[row, cand], top=top)
            cols[f"twin_{s}_index"][mine] = [json.dumps([int(cand[i]) for i in r]) for r in idx]
            cols[f"twin_{s}_cos"][mine] = [json.dumps([round(float(c), 6) for c in r]) for r in cos]
            cols[f"twin_{s}_max_cos"][mine] = cos[:, 0]
    for s in SETS:
        cols[f"twin_{s}_class"] = classify(cols[f"twin_{s}_max_cos"], low, high)
    for tag in ("chat-only", "base-only"):
        sel = tags == tag
        summary[tag] = {"latents": int(sel.sum())}
        for s in SETS:
            c = cols[f"twin_{s}_class"][sel]
            summary[tag][s] = {k: int(np.sum(c == k)) for k in ("high", "mid", "low")}
    summary["thresholds"] = {"low": low, "high": high, "top": top}
    return {"columns": cols, "summary": summary}
