"""Online analysis of one prompt: both models to layer L once, the crosscoder's latents per token.

A `Prompt` is plain text (tokenized with the chat tokenizer, BOS added: what
`experiments/inspect_prompt.py --prompt` does) or a chat (messages rendered with the chat model's
template, token classes as in extraction: `jaxcoders.extract.text.encode_chats`).

`analyze(session, prompt)` runs `session.residuals(ids)` — the only model forward — encodes the
(h_base, h_chat) pairs with the crosscoder and keeps the non-zero entries of the code, so a large
dictionary costs memory per firing latent, not T × F. The result is cached per prompt in the
session (`ModelSession.cached`): every widget afterwards (top-k, latent pool, highlighted latent)
reads the cached `PromptAnalysis`.

Per entry (token t, latent j) it keeps the examples' channels (`jaxcoders.analysis.examples.
channel_values`, the same numbers the report shows): `activation` = f·c (the ranking activation of
dashboards), `base` / `chat` = each model's contribution norm f_m·‖d_j^m‖ (for a shared code
`activation = base + chat`; a chat-only latent's activation sits almost entirely in `chat`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxcoders.dashboard.inputs import DashboardError

POOLS = ("all", "chat-only", "base-only", "shared", "other", "exclusive")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """Plain `text`, or `messages` ((role, content), ...) for a chat."""

    text: str = ""
    messages: tuple = ()

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def key(self) -> tuple:
        return ("chat", self.messages) if self.messages else ("text", self.text)

    def message_dicts(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]


def make_prompt(text: Optional[str] = None, *, system: str = "", user: str = "", assistant: str = "") -> Prompt:
    """A text prompt (`text` given) or a chat of the non-empty turns; DashboardError when empty."""
    if text is not None:
        if not text.strip():
            raise DashboardError("the prompt is empty: type some text, then press Analyse")
        return Prompt(text=text)
    turns = tuple((r, c) for r, c in (("system", system), ("user", user), ("assistant", assistant)) if c and c.strip())
    if not any(r == "user" for r, _ in turns):
        raise DashboardError("the chat has no user message: type one, then press Analyse")
    return Prompt(messages=turns)


def encode(session, prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
    """(token ids (T,) int32, token classes (T,) uint8) of a prompt, checked against both models."""
    from jaxcoders.extract import text as text_lib

    try:
        if prompt.is_chat:
            if not session.has_chat_template:
                raise DashboardError(f"--chat_model={session.spec.chat_model} has no chat template; use a text prompt")
            ids, cls = text_lib.encode_chats(session.chat_tok, [prompt.message_dicts()], session.spec.max_len)[0]
        else:
            ids, cls = text_lib.encode_texts(session.chat_tok, [prompt.text], session.spec.max_len)[0]
        text_lib.check_ids(ids, session.mismatch, session.base_tok, session.chat_tok, session.vocab_limits)
    except text_lib.DataError as e:
        raise DashboardError(str(e)) from None
    if ids.size == 0:
        raise DashboardError("the prompt has no tokens; type some text")
    return ids, cls


@dataclasses.dataclass
class PromptAnalysis:
    """One prompt through both models and the crosscoder (T tokens, N non-zero (token, latent) entries).

    ids (T,) int32; texts (T,) decoded tokens; classes (T,) token class names; l0 (T,) latents firing;
    t_idx, f_idx (N,) int64 token and latent of each entry (sorted by token, then activation, high
    first); activation, base, chat (N,) float32 (f·c and the two models' contributions);
    tags, delta_norm (F,) per latent; truncated: the prompt was cut to max_len tokens."""

    ids: np.ndarray
    texts: list
    classes: list
    l0: np.ndarray
    t_idx: np.ndarray
    f_idx: np.ndarray
    activation: np.ndarray
    base: np.ndarray
    chat: np.ndarray
    tags: np.ndarray
    delta_norm: np.ndarray
    truncated: bool = False

    @property
    def num_tokens(self) -> int:
        return int(self.ids.size)

    def pool_mask(self, pool: str = "all", latents: Optional[Sequence[int]] = None) -> np.ndarray:
        """(N,) bool: entries whose latent is in the pool (a tag group, or the given latents)."""
        if latents is not None:
            return np.isin(self.f_idx, np.asarray(list(latents), np.int64))
        if pool == "all":
            return np.ones(self.f_idx.shape, bool)
        if pool not in POOLS:
            raise DashboardError(f"unknown latent pool {pool!r}; choose one of {', '.join(POOLS)}")
        tags = self.tags[self.f_idx]
        if pool == "exclusive":
            return (tags == "chat-only") | (tags == "base-only")
        return tags == pool

    def token_rows(self, top: int = 5, pool: str = "all") -> list[dict]:
        """Per token: {position, id, text, class, l0, top: [{latent, activation, base, chat, tag,
        delta_norm}]} with the `top` latents of the pool by f·c (the `inspect_prompt` table, plus the
        base / chat contributions)."""
        if top < 1:
            raise DashboardError(f"top must be ≥ 1, got {top}")
        keep = self.pool_mask(pool) & (self.activation > 0)
        rows = [{"position": t, "id": int(self.ids[t]), "text": self.texts[t], "class": self.classes[t],
                 "l0": int(self.l0[t]), "top": []} for t in range(self.num_tokens)]
        for n in np.flatnonzero(keep):  # entries are sorted by token, activation descending
            r = rows[int(self.t_idx[n])]
            if len(r["top"]) < top:
                j = int(self.f_idx[n])
                r["top"].append({"latent": j, "activation": float(self.activation[n]), "base": float(self.base[n]),
                                 "chat": float(self.chat[n]), "tag": str(self.tags[j]),
                                 "delta_norm": float(self.delta_norm[j])})
        return rows

    def trace(self, j: int) -> dict[str, np.ndarray]:
        """Latent j over the prompt: {"activation", "base", "chat"}, each (T,) float32 (0 where silent)."""
        sel = self.f_idx == j
        out = {}
        for name in ("activation", "base", "chat"):
            v = np.zeros(self.num_tokens, np.float32)
            v[self.t_idx[sel]] = getattr(self, name)[sel]
            out[name] = v
        return out

    def ranked_latents(self, pool: str = "all", limit: int = 50) -> list[tuple[int, float]]:
        """[(latent, max f·c over the prompt's tokens but BOS)] of the pool, strongest first (BOS
        residuals are input-independent outliers; a latent firing only there ranks by it)."""
        keep = self.pool_mask(pool) & (self.activation > 0)
        not_bos = np.asarray([c != "bos" for c in self.classes], bool)[self.t_idx]
        if (keep & not_bos).any():
            keep &= not_bos
        best: dict[int, float] = {}
        for j, a in zip(self.f_idx[keep].tolist(), self.activation[keep].tolist()):
            if a > best.get(j, 0.0):
                best[j] = a
        return sorted(best.items(), key=lambda x: (-x[1], x[0]))[:limit]


def latent_facts(session):
    """(tags (F,), Δnorm (F,), ((M, F) decoder norms, (C, F) channel scales)), computed once per session."""
    facts = getattr(session, "latent_facts", None)
    if facts is None:
        from jaxcoders.analysis.examples import channel_scales

        cc = session.cc
        w = np.asarray(cc.model.params.w_dec_MFD, np.float64)
        facts = (np.asarray(cc.tags()), np.asarray(cc.relative_norm()),
                 (np.linalg.norm(w, axis=-1), channel_scales(cc.cfg, cc.model.params)))
        session.latent_facts = facts
    return facts


def compute(session, prompt: Prompt) -> PromptAnalysis:
    """Both models to layer L (one forward each), the crosscoder's codes, the channels of the non-zero
    entries. Uncached: use `analyze`."""
    from jaxcoders.analysis.examples import channel_values
    from jaxcoders.data.store import TokenClass
    from jaxcoders.interventions.codes import InterventionError

    ids, cls = encode(session, prompt)
    hb, hc = session.residuals(ids)
    try:
        codes = session.cc.codes(hb, hc)  # (T, F), DECOUPLED (T, 2, F), tied (T, 3, F)
    except InterventionError as e:
        raise DashboardError(str(e)) from None
    codes = codes[:, None, :] if codes.ndim == 2 else codes
    t_idx, f_idx = np.nonzero(np.any(codes != 0, axis=1))
    tags, delta, norms_scales = latent_facts(session)
    cfg, params = session.cc.cfg, session.cc.model.params
    ch = channel_values(cfg, params, codes[t_idx, :, f_idx][:, :, None], f_idx, norms_scales)
    act, base, chat = ch["activation"][:, 0], ch["base"][:, 0], ch["chat"][:, 0]
    order = np.lexsort((f_idx, -act, t_idx))
    t_idx, f_idx, act, base, chat = t_idx[order], f_idx[order], act[order], base[order], chat[order]
    T = int(ids.size)
    l0 = np.bincount(t_idx[act > 0], minlength=T)
    texts = [session.chat_tok.decode([int(i)]) for i in ids]
    names = [TokenClass(int(c)).name.lower() for c in cls]
    return PromptAnalysis(ids=ids, texts=texts, classes=names, l0=l0, t_idx=t_idx.astype(np.int64),
                          f_idx=f_idx.astype(np.int64), activation=act, base=base, chat=chat, tags=tags,
                          delta_norm=delta, truncated=T >= session.spec.max_len)


def analyze(session, prompt: Prompt) -> PromptAnalysis:
    """`compute`, cached per prompt in the session (the models run once per distinct prompt)."""
    return session.cached(("prompt",) + prompt.key, lambda: compute(session, prompt))
