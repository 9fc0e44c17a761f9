"""The paper's baseline: two separate SAEs (one per model, M = 1 dictionaries) whose latents are
matched by decoder cosine (docs/paper.md).

With decoders W_base (F_b, D) and W_chat (F_c, D) of the base model's and the chat model's SAE:
for every chat-SAE latent i, its best base-SAE match argmax_k cos(W_chat[i], W_base[k]) and that
cosine, and the same from base to chat; a pair is *mutual* when each is the other's best match.
A chat-SAE latent without a base match above `low` (0.3) has no similar direction in the base SAE
— the SAE baseline's notion of "chat-specific"; above `high` (0.7) it is matched. Dead latents
(alive mask False) are left out of both the candidates and the counts.
"""
from __future__ import annotations

import numpy as np

from jaxcoders.analysis.twins import HIGH, LOW, classify, top_similar


def match_saes(w_base_FD, w_chat_GD, *, alive_base=None, alive_chat=None, low: float = LOW,
               high: float = HIGH) -> dict:
    """{"chat": {column: (F_c,)}, "base": {column: (F_b,)}, "summary": {...}}; columns `latent`,
    `alive`, `match` (best latent of the other SAE, -1 if none), `match_cos`, `mutual`, `class`
    ('high' / 'mid' / 'low' / '' when dead)."""
    wb, wc = np.asarray(w_base_FD, np.float32), np.asarray(w_chat_GD, np.float32)
    if wb.ndim != 2 or wc.ndim != 2 or wb.shape[1] != wc.shape[1]:
        raise ValueError(f"the two SAE decoders must be (F, D) with the same D; got {wb.shape} and {wc.shape}")
    ab = np.ones(len(wb), bool) if alive_base is None else np.asarray(alive_base, bool)
    ac = np.ones(len(wc), bool) if alive_chat is None else np.asarray(alive_chat, bool)
    out = {}
    for name, w, alive, other_w, other_alive in (("chat", wc, ac, wb, ab), ("base", wb, ab, wc, ac)):
        cand = np.flatnonzero(other_alive)
        match = np.full(len(w), -1, np.int64)
        cos = np.full(len(w), np.nan)
        mine = np.flatnonzero(alive)
        if len(mine) and len(cand):
            idx, c = top_similar(w[mine], other_w[cand], top=1)
            match[mine], cos[mine] = cand[idx[:, 0]], c[:, 0]
        out[name] = {"latent": np.arange(len(w)), "alive": alive, "match": match, "match_cos": cos,
                     "class": classify(cos, low, high)}
    for name, other in (("chat", "base"), ("base", "chat")):
        m = out[name]["match"]
        back = out[other]["match"]
        out[name]["mutual"] = np.asarray([j >= 0 and back[j] == i for i, j in enumerate(m)], bool)
    summary = {"thresholds": {"low": low, "high": high},
               "mutual_pairs": int(out["chat"]["mutual"].sum())}
    for name in ("chat", "base"):
        c = out[name]["class"]
        summary[name] = {"latents": int(len(c)), "alive": int(out[name]["alive"].sum()),
                         **{k: int(np.sum(c == k)) for k in ("high", "mid", "low")},
                         "median_match_cos": float(np.nanmedian(out[name]["match_cos"]))
                         if np.isfinite(out[name]["match_cos"]).any() else None}
    out["summary"] = summary
    return out
