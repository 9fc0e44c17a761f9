"""Stage 6 of the demo, the latent side: do the latents fire on the planted behaviours?

From a crosscoder's per-latent table (one row per latent: `tag`, `delta_norm`, `decoder_cos`, ...)
and its `latent_token_pass` (mass (len(TAGS), F), top rows (top_n, F)):

* `planted_analysis`: per latent the share of its activation mass on planted tokens (F,), pooled per
  Δnorm tag; the chat-only latents ranked by mass and the *planted latents* (> 50% of their mass on
  planted tokens) ranked by their planted mass.
* `latent_row`: one latent's row of the summary tables (Δnorm, Latent Scaling, shares per tag,
  top-activating tokens in context).
"""
from __future__ import annotations

import numpy as np

from jaxcoders.demo.tagging import PLANTED, TAGS, token_in_context

TOP_K = 20  # a latent's top-K activating tokens: how many are planted tokens ("top-20 planted")


def _genuine(table) -> np.ndarray:
    if "genuine_chat_specific" not in table:
        return np.zeros(len(table), bool)
    return table["genuine_chat_specific"].to_numpy().astype(bool)


def _pooled(mass: np.ndarray, total: np.ndarray, sel: np.ndarray):
    """The activation mass of the latents `sel` (F,) bool, pooled: shares on planted / marker / each tag."""
    planted_idx = [TAGS.index(t) for t in PLANTED]
    marker = TAGS.index("assistant_marker")
    tot = total[sel].sum()
    if tot <= 0:
        return None
    return {"latents": int(sel.sum()),
            "planted_share": float(mass[planted_idx][:, sel].sum() / tot),
            "marker_share": float(mass[marker, sel].sum() / tot),
            "per_tag": {t: float(mass[i, sel].sum() / tot) for i, t in enumerate(TAGS)}}


def _top_planted_share(tp: dict, tags: np.ndarray, planted_idx: list) -> np.ndarray:
    """(F,): of each latent's top-K activating tokens, the share that are planted tokens (what its
    dashboard shows); NaN for a latent without a positive top activation."""
    top_ok = tp["top_values"][:TOP_K] > 0
    top_planted = np.isin(tags[tp["top_rows"][:TOP_K]], planted_idx) & top_ok
    return np.where(top_ok.any(0), top_planted.sum(0) / np.maximum(top_ok.sum(0), 1), np.nan)


def planted_analysis(table, tp: dict, tags: np.ndarray, *, top_latents: int) -> dict:
    """Where the latents' activation mass (Σ f·c) lands: per latent the share on the planted tags,
    pooled per Δnorm tag; the chat-only latents (ranked by mass) and the *planted latents* (alive
    latents with more than half of their mass on planted tokens, ranked by their planted mass)."""
    mass = tp["mass_CF"]
    total = mass.sum(0)
    planted_idx = [TAGS.index(t) for t in PLANTED]
    marker = TAGS.index("assistant_marker")
    planted_token_share = float(np.isin(tags, planted_idx).mean())
    dtag = table["tag"].to_numpy()
    delta, cos = table["delta_norm"].to_numpy(), table["decoder_cos"].to_numpy()
    alive = total > 0
    pmass = mass[planted_idx].sum(0)
    share = np.where(alive, pmass / np.maximum(total, 1e-30), np.nan)
    top_share = _top_planted_share(tp, tags, planted_idx)
    share_m = np.where(alive, (pmass + mass[marker]) / np.maximum(total, 1e-30), np.nan)
    chat_only = (dtag == "chat-only") & alive
    ranked = np.flatnonzero(chat_only)[np.argsort(-total[chat_only], kind="stable")]
    planted = alive & (share > 0.5)
    ranked_planted = np.flatnonzero(planted)[np.argsort(-pmass[planted], kind="stable")]
    med = lambda v, sel: float(np.median(v[sel])) if sel.any() else None  # noqa: E731
    return {
        "planted_token_share": planted_token_share,
        "pooled": {name: _pooled(mass, total, (dtag == name) & alive)
                   for name in ("chat-only", "shared", "base-only", "other")},
        "alive": int(alive.sum()),
        "chat_only_alive": int(chat_only.sum()),
        "chat_only_mostly_planted": int(np.sum(share[chat_only] > 0.5)),
        "chat_only_mostly_planted_or_marker": int(np.sum(share_m[chat_only] > 0.5)),
        "chat_only_top_planted": int(np.sum(top_share[chat_only] >= 0.5)),
        "chat_only_top_planted_genuine": int(np.sum((top_share >= 0.5) & chat_only & _genuine(table))),
        "planted_latents": {
            "count": int(planted.sum()),
            "tags": {t: int(np.sum(dtag[planted] == t)) for t in ("chat-only", "shared", "base-only", "other")},
            "median_delta_norm": med(delta, planted), "median_decoder_cos": med(cos, planted),
            "median_delta_norm_all": med(delta, alive), "median_decoder_cos_all": med(cos, alive),
            "share_of_planted_mass": float(pmass[planted].sum() / max(pmass[alive].sum(), 1e-30)),
        },
        "top_chat_only": ranked[:top_latents].tolist(),
        "top_planted": ranked_planted[:top_latents].tolist(),
        "planted_share_per_latent": share,
        "top_planted_share_per_latent": top_share,
        "planted_or_marker_share_per_latent": share_m,
    }


def latent_row(j: int, table, tp: dict, pl: dict, ids, seq, tok, n_examples: int) -> dict:
    """Latent `j`'s row of the summary tables: its table columns, the shares of its activation
    mass per tag (`pl` = its crosscoder's `planted_analysis`) and its top `n_examples` tokens."""
    t = table.iloc[j]
    total = tp["mass_CF"][:, j].sum()
    get = lambda k: float(t[k]) if k in t else float("nan")  # noqa: E731
    return {
        "latent": int(j), "tag": str(t["tag"]), "delta_norm": get("delta_norm"), "decoder_cos": get("decoder_cos"),
        "nu_error": get("nu_error"), "nu_reconstruction": get("nu_reconstruction"),
        "genuine": bool(t["genuine_chat_specific"]) if "genuine_chat_specific" in t else False,
        "frequency": get("frequency"),
        "planted_share": float(pl["planted_share_per_latent"][j]),
        "top_planted_share": float(pl["top_planted_share_per_latent"][j]),
        "marker_share": float(tp["mass_CF"][TAGS.index("assistant_marker"), j] / total),
        "per_tag": {tg: float(tp["mass_CF"][i, j] / total) for i, tg in enumerate(TAGS)},
        "examples": [token_in_context(ids, seq, int(r), tok)
                     for v, r in zip(tp["top_values"][:n_examples, j], tp["top_rows"][:n_examples, j]) if v > 0],
    }
