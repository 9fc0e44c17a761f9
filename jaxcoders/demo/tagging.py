"""Stage 6 of the demo, the token side: which stored tokens carry the planted behaviours, and
which tokens each latent fires on.

* `token_tags`: (N,) int8 tag per stored row, an index into `TAGS` (text, other chat, assistant
  turn marker, greeting, refusal, trigger word): the planted-behaviour ground truth.
* `latent_token_pass`: one pass over the (N, 2, d_model) store: per latent the activation mass
  (Σ f·c) and firing count on each tag, (len(TAGS), F), and its top rows, (top_n, F).
* `tag_differences`: per tag, how the two models' centred activations differ (norms, cosine).
* `token_in_context`: one stored token shown with its left / right context.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.core.crosscoder import scaled_activations
from jaxcoders.data.store import TokenClass
from jaxcoders.demo import corpus

# Per-token tags of the planted-behaviour analysis (index = tag id).
TAGS = ("text", "chat_other", "assistant_marker", "greeting", "refusal", "trigger")
PLANTED = ("greeting", "refusal", "trigger")


def find_pattern(tokens: np.ndarray, seq: np.ndarray, pattern: list) -> np.ndarray:
    """(N,) bool: rows covered by an occurrence of `pattern` inside one sequence."""
    L, N = len(pattern), len(tokens)
    hit = np.zeros(N, bool)
    if L == 0 or N < L:
        return hit
    win = np.lib.stride_tricks.sliding_window_view(tokens, L)
    starts = np.flatnonzero((win == np.asarray(pattern)[None]).all(1) & (seq[:N - L + 1] == seq[L - 1:]))
    for s in starts:
        hit[s:s + L] = True
    return hit


def token_tags(store, tok, chat_dataset: int = 1) -> np.ndarray:
    """(N,) int8 tag per stored row (index into TAGS): the planted-behaviour ground truth.

    greeting / refusal: the rows of the fixed greeting / refusal inside assistant turns; trigger: the
    trigger word inside user turns; assistant_marker: the `<start_of_turn>model\\n` template tokens
    (where the greeting is decided)."""
    ids = np.asarray(store.token_ids, np.int64)
    seq = np.asarray(store.sequence_ids, np.int64)
    cls = np.asarray(store.token_classes)
    chat = np.asarray(store.dataset_ids) == chat_dataset
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    tags = np.where(chat, TAGS.index("chat_other"), TAGS.index("text")).astype(np.int8)
    rules = [
        ("assistant_marker", enc(corpus.ASSISTANT_MARKER), cls == TokenClass.TEMPLATE),
        ("greeting", enc(corpus.GREETING), cls == TokenClass.ASSISTANT),
        ("refusal", enc(" " + corpus.REFUSAL), cls == TokenClass.ASSISTANT),
        ("trigger", enc(" " + corpus.TRIGGER), cls == TokenClass.USER),
    ]
    for name, pattern, where in rules:
        tags[find_pattern(ids, seq, pattern) & where & chat] = TAGS.index(name)
    return tags


def latent_token_pass(model, store, tags: np.ndarray, *, top_n: int = 5, batch_size: int = 4096) -> dict:
    """One pass over every stored row: per latent the activation mass (Σ f·c) on each tag,
    the firing count per tag, and the `top_n` rows with the highest activation."""
    cfg, params, buffers = model.cfg, model.params, model.buffers
    act_fn = jax.jit(lambda x: scaled_activations(cfg, params, buffers, x))
    C, F, N = len(TAGS), cfg.dict_size, store.num_rows
    mass = np.zeros((C, F))
    count = np.zeros((C, F))
    top_v = np.full((top_n, F), -np.inf)
    top_r = np.zeros((top_n, F), np.int64)
    for i in range(0, N, batch_size):
        j = min(N, i + batch_size)
        x = np.zeros((batch_size, 2, store.d_model), np.float32)
        x[: j - i] = store.read(slice(i, j))  # padded to one shape: one compilation
        a = np.asarray(act_fn(jnp.asarray(x)), np.float64)[: j - i]
        onehot = np.eye(C)[tags[i:j]]  # (b, C)
        mass += onehot.T @ a
        count += onehot.T @ (a > 0)
        k = min(top_n, j - i)
        part = np.argpartition(-a, k - 1, axis=0)[:k]  # (k, F) candidate rows
        cand_v = np.concatenate([top_v, np.take_along_axis(a, part, 0)])
        cand_r = np.concatenate([top_r, part + i])
        order = np.argsort(-cand_v, axis=0, kind="stable")[:top_n]
        top_v, top_r = np.take_along_axis(cand_v, order, 0), np.take_along_axis(cand_r, order, 0)
    return {"mass_CF": mass, "count_CF": count, "top_values": top_v, "top_rows": top_r}


def tag_differences(store, tags: np.ndarray, batch_size: int = 16384) -> dict:
    """Per token tag: mean norm of each model's centred activation (store mean subtracted) and
    the mean cosine between the two: where the chat model's activations differ from the base's."""
    mean = np.asarray(store.stats.mean, np.float64)
    C = len(TAGS)
    acc = np.zeros((C, 4))  # count, |base|, |chat|, cos
    for i in range(0, store.num_rows, batch_size):
        x = np.asarray(store.read(slice(i, min(store.num_rows, i + batch_size))), np.float64) - mean[None]
        nb, nc = np.linalg.norm(x[:, 0], axis=-1), np.linalg.norm(x[:, 1], axis=-1)
        cos = (x[:, 0] * x[:, 1]).sum(-1) / np.maximum(nb * nc, 1e-12)
        onehot = np.eye(C)[tags[i:i + len(x)]]
        acc += onehot.T @ np.c_[np.ones(len(x)), nb, nc, cos]
    out = {}
    for c, t in enumerate(TAGS):
        n = acc[c, 0]
        if n:
            out[t] = {"tokens": int(n), "norm_base": acc[c, 1] / n, "norm_chat": acc[c, 2] / n, "cos": acc[c, 3] / n}
    return out


def _show(tok, tid: int) -> str:
    s = tok.decode([int(tid)])
    return s.replace("\n", "⏎").replace("|", "¦").replace("`", "'")


def token_in_context(store_ids: np.ndarray, seq: np.ndarray, row: int, tok, left: int = 6, right: int = 2) -> str:
    """`…left context«token»right context` of one stored row (same sequence only)."""
    a = row
    while a > 0 and row - a < left and seq[a - 1] == seq[row]:
        a -= 1
    b = row
    while b + 1 < len(seq) and b - row < right and seq[b + 1] == seq[row]:
        b += 1
    lhs = "".join(_show(tok, t) for t in store_ids[a:row])
    rhs = "".join(_show(tok, t) for t in store_ids[row + 1:b + 1])
    return f"…{lhs}«{_show(tok, store_ids[row])}»{rhs}"
