"""Logit lens of latents: which tokens a decoder direction promotes and suppresses through a model's
final norm and unembedding (docs/analysis.md).

For latent j and model m (base: the base decoder row through the base model; chat: the chat row
through the chat model), in the model's raw residual space (the crosscoder's input normalization
folded out, `fold_normalization`):

    logits_j = W_U (g ⊙ c(d^m_j))    (V,)

W_U (V, D) = the model's output embedding (the LM head; a head bias, which is the same for every
direction, is left out); g (D,) = the linear gain of its final norm (RMSNorm: its weight, Gemma's
1 + weight; LayerNorm: its weight) and c = mean-centring for a LayerNorm (identity for RMSNorm).
The norm's division by the residual's RMS and Gemma-2's final logit soft-capping are positive
scalings / monotone, so they do not change the ranking. The top `k` logits are the promoted tokens,
the bottom `k` the suppressed ones (ties: lower token id first); only ids the tokenizer knows
(id < len(tokenizer)) are ranked. A zero decoder row promotes nothing (empty lists).

Columns (the dashboard's contract): `logit_lens_<model>_promoted` and `logit_lens_<model>_suppressed`
for model in (base, chat), each a JSON-encoded list of the token strings (`tokenizer.decode([id])`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.analysis import stream

MODELS = ("base", "chat")


@dataclasses.dataclass(frozen=True)
class Unembedding:
    """A model's readout: W_U (V, D) float32, the final norm's gain g (D,), whether it mean-centres."""

    weight_VD: np.ndarray
    gain_D: np.ndarray
    center: bool = False


def lens_logits(directions_SD, unemb: Unembedding) -> np.ndarray:
    """W_U (g ⊙ c(d)) for each direction: (S, V) float32."""
    d = np.asarray(directions_SD, np.float32)
    if unemb.center:
        d = d - d.mean(axis=1, keepdims=True)
    return (d * np.asarray(unemb.gain_D, np.float32)[None]) @ np.asarray(unemb.weight_VD, np.float32).T


@functools.partial(jax.jit, static_argnames=("k", "center"))
def _lens_top(d_SD, w_VD, gain_D, k: int, center: bool):
    if center:
        d_SD = d_SD - jnp.mean(d_SD, axis=1, keepdims=True)
    lg = jnp.einsum("sd,vd->sv", d_SD * gain_D[None], w_VD, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(lg, k)[1], jax.lax.top_k(-lg, k)[1]


def logit_lens(directions_SD, unemb: Unembedding, *, k: int = 10, vocab: Optional[int] = None,
               chunk: int = 256) -> dict:
    """Top-k promoted / suppressed ids of each direction ({"promoted": (S, k), "suppressed": (S, k)}
    int64, -1 rows for zero directions), in chunks of `chunk` directions (memory O(chunk · V), work
    S · D · V)."""
    d = np.asarray(directions_SD, np.float32)
    V = unemb.weight_VD.shape[0] if vocab is None else min(vocab, unemb.weight_VD.shape[0])
    k = min(k, V)
    w = jnp.asarray(np.asarray(unemb.weight_VD, np.float32)[:V])
    g = jnp.asarray(np.asarray(unemb.gain_D, np.float32))
    pro, sup = np.full((len(d), k), -1, np.int64), np.full((len(d), k), -1, np.int64)
    chunk = max(1, min(chunk, len(d) or 1))
    for s in range(0, len(d), chunk):
        blk = d[s:s + chunk]
        n = len(blk)
        if n < chunk:  # one compiled shape
            blk = np.concatenate([blk, np.zeros((chunk - n, d.shape[1]), np.float32)])
        p, q = _lens_top(jnp.asarray(blk), w, g, k, bool(unemb.center))
        pro[s:s + n], sup[s:s + n] = np.asarray(p)[:n], np.asarray(q)[:n]
    zero = ~np.any(d != 0, axis=1)
    pro[zero], sup[zero] = -1, -1
    return {"promoted": pro, "suppressed": sup}


def final_norm_gain(norm) -> tuple[np.ndarray, bool]:
    """(g (D,), center) of a torch final-norm module: g = (N(x) − N(−x)) / 2x at the alternating ±1
    vector x (RMS 1, mean 0), exact for RMSNorm (any weight convention) and LayerNorm."""
    import torch

    weight = next((p for p in norm.parameters()), None)
    D = int(weight.shape[0]) if weight is not None else int(getattr(norm, "normalized_shape", [0])[0])
    x = torch.ones(D, dtype=torch.float32)
    x[1::2] = -1.0
    with torch.no_grad():
        norm32 = norm.float() if weight is not None and weight.dtype != torch.float32 else norm
        g = (norm32(x[None]) - norm32(-x[None]))[0] / (2 * x)
    name = type(norm).__name__.lower()
    return g.double().numpy().astype(np.float32), ("layernorm" in name and "rms" not in name)


def load_unembedding(model_name: str, flag: str = "--model") -> Unembedding:
    """W_U and the final norm of a causal LM (torch, loaded on the CPU in float32)."""
    from jaxcoders.extract.models import ModelError, load_causal_lm

    model = load_causal_lm(model_name, dtype="float32", flag=flag)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    norm = getattr(decoder, "norm", None) or getattr(decoder, "final_layernorm", None)
    head = model.get_output_embeddings()
    if norm is None or head is None:
        raise ModelError(f"{flag}={model_name}: cannot find the final norm and the LM head of "
                         f"{type(model).__name__}; the logit lens needs both.")
    gain, center = final_norm_gain(norm)
    w = head.weight.detach().float().cpu().numpy()
    return Unembedding(w, gain, center)


def raw_decoder(model) -> np.ndarray:
    """The decoder rows in the models' raw residual space, (M, F, D) float32."""
    from jaxcoders.core.params import fold_normalization

    cfg, params, buffers = stream.resolve_model(model)
    _, folded, _ = fold_normalization(cfg, params, buffers)
    return np.asarray(folded.w_dec_MFD, np.float32)


def token_strings(tokenizer, ids_SK) -> list[str]:
    """Per row a JSON list of the tokens' strings (-1 entries left out)."""
    cache: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in cache:
            cache[i] = tokenizer.decode([i], clean_up_tokenization_spaces=False) if tokenizer is not None else f"<{i}>"
        return cache[i]

    return [json.dumps([text(int(i)) for i in row if i >= 0], ensure_ascii=False) for row in np.asarray(ids_SK)]


def logit_lens_columns(model, unembeddings: dict, tokenizer=None, *, k: int = 10) -> dict:
    """{f"logit_lens_{m}_promoted" / "_suppressed": (F,) JSON strings} for each model m in
    `unembeddings` ({"base": Unembedding, "chat": Unembedding}); ids are ranked among the first
    len(tokenizer) ids."""
    w = raw_decoder(model)
    names = stream.model_names(w.shape[0])
    vocab = len(tokenizer) if tokenizer is not None else None
    out = {}
    for name, unemb in unembeddings.items():
        if name not in names:
            raise ValueError(f"no model {name!r} in this crosscoder (models: {', '.join(names)})")
        if unemb.weight_VD.shape[1] != w.shape[2]:
            raise ValueError(f"the {name} model's residual width is {unemb.weight_VD.shape[1]} but the crosscoder "
                             f"has D = {w.shape[2]}; use the models the crosscoder was trained on")
        res = logit_lens(w[names.index(name)], unemb, k=k, vocab=vocab)
        out[f"logit_lens_{name}_promoted"] = np.asarray(token_strings(tokenizer, res["promoted"]), object)
        out[f"logit_lens_{name}_suppressed"] = np.asarray(token_strings(tokenizer, res["suppressed"]), object)
    return out


def add_logit_lens(table, model, base_model: str, chat_model: str, *, k: int = 10, tokenizer=None):
    """The latent table with the logit-lens columns of both models (base through `base_model`, chat
    through `chat_model`; token strings from `tokenizer`, default the chat model's). Returns the table."""
    if tokenizer is None:
        from jaxcoders.extract.models import load_tokenizer

        tokenizer = load_tokenizer(chat_model, None, "--chat_model")
    unemb = {"base": load_unembedding(base_model, "--base_model"), "chat": load_unembedding(chat_model, "--chat_model")}
    for key, col in logit_lens_columns(model, unemb, tokenizer, k=k).items():
        table[key] = col
    return table
