"""Steering: add α · a latent's decoder direction to the chat model's residual after block L and
generate, next to the unsteered generation with the same seed.

Directions are in the models' raw residual space (the crosscoder's input normalization undone:
`CrosscoderEdits.decode` of a one-hot code minus the decode of the zero code):

* `chat`: α · Σ_{j∈S} d_j^chat — the latent's chat decoder direction (the `steer` edit of
  `experiments/interventions.py`);
* `diff`: α · Σ_{j∈S} (d_j^chat − d_j^base) — what the latent adds in chat relative to base.

The edit applies at every position after the first (the BOS residual does not depend on the input)
— the prompt's and each generated token's — through the hook of `ModelSession.steer`. The prompt
is the text itself, or the chat's turns up to its last user message rendered with the chat
template's generation prompt (the model then writes the assistant's reply). Sampling is seeded
(`temperature` 0 = greedy) and the length bounded by the dashboard's `max_new_tokens`; both
generations run with the same seed so that the only difference is the edit.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxcoders.dashboard.inputs import DashboardError
from jaxcoders.dashboard.prompt import Prompt

DIRECTIONS = {"chat": "α · d_j^chat (the latent's chat decoder direction)",
              "diff": "α · (d_j^chat − d_j^base) (chat minus base decoder direction)"}
BASE, CHAT = 0, 1


@dataclasses.dataclass(frozen=True)
class SteerRequest:
    """latents: S (summed); alpha: the scale; kind: "chat" or "diff"; max_new_tokens ≥ 1; seed;
    temperature ≥ 0 (0 = greedy)."""

    latents: tuple
    alpha: float
    kind: str = "chat"
    max_new_tokens: int = 32
    seed: int = 0
    temperature: float = 0.0


def one_hot_codes(cfg, latents: Sequence[int]) -> np.ndarray:
    """Codes that switch on one latent each, (S, F), DECOUPLED (S, 2, F) (both models' codes), tied
    (S, 3, F) (the shared slot, which both models decode)."""
    S, F = len(latents), cfg.dict_size
    eye = np.zeros((S, F), np.float32)
    eye[np.arange(S), np.asarray(latents, np.int64)] = 1.0
    if cfg.is_tied:
        out = np.zeros((S, 3, F), np.float32)
        out[:, 0] = eye
        return out
    if cfg.is_batchtopk and cfg.decoupled:
        return np.stack([eye, eye], axis=1)
    return eye


def decoder_directions(cc, latents: Sequence[int]) -> np.ndarray:
    """(S, 2, D) raw-space decoder directions d_j^base, d_j^chat of the latents."""
    latents = cc.check_latents(latents)
    codes = one_hot_codes(cc.cfg, latents)
    zero = cc.decode(np.zeros((1,) + codes.shape[1:], np.float32))
    return cc.decode(codes) - zero


def steering_direction(cc, latents: Sequence[int], kind: str = "chat") -> np.ndarray:
    """(D,) Σ_j d_j^chat (kind "chat") or Σ_j (d_j^chat − d_j^base) (kind "diff"), before α."""
    if kind not in DIRECTIONS:
        raise DashboardError(f"unknown steering direction {kind!r}; choose one of {', '.join(DIRECTIONS)}")
    d = decoder_directions(cc, latents)
    v = d[:, CHAT] if kind == "chat" else d[:, CHAT] - d[:, BASE]
    return v.sum(0).astype(np.float32)


def generation_ids(session, prompt: Prompt) -> np.ndarray:
    """Token ids (T,) the generation continues: the text (BOS added), or the chat up to its last user
    message with the template's generation prompt."""
    from jaxcoders.extract import text as text_lib

    if not prompt.is_chat:
        ids, _ = text_lib.encode_texts(session.chat_tok, [prompt.text], session.spec.max_len)[0]
    else:
        msgs = prompt.message_dicts()
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        try:
            text = session.chat_tok.apply_chat_template(msgs[:last_user + 1], tokenize=False,
                                                        add_generation_prompt=True, **text_lib.CHAT_TEMPLATE_KWARGS)
        except Exception as e:  # the template's own error, e.g. an unsupported role
            raise DashboardError(f"the chat template cannot render this chat: {str(e).strip() or type(e).__name__}") \
                from None
        ids = np.asarray(session.chat_tok(text, add_special_tokens=False)["input_ids"], np.int32)[-session.spec.max_len:]
    if ids.size == 0:
        raise DashboardError("the prompt is empty: type some text, then press Analyse")
    return ids


def check_request(session, req: SteerRequest) -> None:
    if not req.latents:
        raise DashboardError("no latent to steer with; type a latent index")
    for j in req.latents:
        if not 0 <= int(j) < session.dict_size:
            raise DashboardError(f"latent {j} does not exist: this crosscoder has {session.dict_size} latents "
                                 f"(0–{session.dict_size - 1})")
    if not np.isfinite(req.alpha):
        raise DashboardError(f"α must be a finite number, got {req.alpha}")
    cap = session.spec.max_new_tokens
    if not 1 <= req.max_new_tokens <= cap:
        raise DashboardError(f"new tokens must be between 1 and {cap} (the dashboard's --max_new_tokens), "
                             f"got {req.max_new_tokens}")
    if not (req.temperature >= 0 and np.isfinite(req.temperature)):
        raise DashboardError(f"temperature must be ≥ 0 (0 = greedy), got {req.temperature}")
    if req.kind not in DIRECTIONS:
        raise DashboardError(f"unknown steering direction {req.kind!r}; choose one of {', '.join(DIRECTIONS)}")


def _generate(session, ids: np.ndarray, req: SteerRequest, direction) -> str:
    torch = session.torch
    x = torch.as_tensor(np.asarray(ids, np.int64)[None], device=session.device)
    tok = session.chat_tok
    kw = {"max_new_tokens": int(req.max_new_tokens), "attention_mask": torch.ones_like(x),
          "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
          "eos_token_id": tok.eos_token_id}
    if req.temperature > 0:
        kw.update(do_sample=True, temperature=float(req.temperature), top_k=None, top_p=None)
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    skip = 1 if tok.bos_token_id is not None and int(ids[0]) == tok.bos_token_id else 0
    torch.manual_seed(int(req.seed))
    with torch.inference_mode():
        if direction is None:
            out = session.chat.generate(input_ids=x, **kw)
        else:
            with session.steer(direction, skip_first=skip):
                out = session.chat.generate(input_ids=x, **kw)
    return tok.decode(out[0, x.shape[1]:].tolist(), skip_special_tokens=True)


def generate(session, prompt: Prompt, req: SteerRequest) -> dict:
    """{"prompt": the text the models continue, "unsteered": str, "steered": str, "direction_norm":
    ‖α·v‖, "residual_norm": mean ‖h_chat‖ after block L over the prompt, "formula": str}. Uncached:
    use `steer`."""
    check_request(session, req)
    ids = generation_ids(session, prompt)
    v = req.alpha * steering_direction(session.cc, list(req.latents), req.kind)
    with session.lock:
        hc = session.chat_residual(session.torch.as_tensor(np.asarray(ids, np.int64)[None], device=session.device))
        res_norm = float(hc[0].float().norm(dim=-1).mean())
        plain = _generate(session, ids, req, None)
        steered = _generate(session, ids, req, v)
    lat = ",".join(map(str, req.latents))
    formula = (f"h_chat + {req.alpha:g} · d_{{{lat}}}^chat" if req.kind == "chat"
               else f"h_chat + {req.alpha:g} · (d_{{{lat}}}^chat − d_{{{lat}}}^base)")
    return {"prompt": session.chat_tok.decode([int(i) for i in ids]), "unsteered": plain, "steered": steered,
            "direction_norm": float(np.linalg.norm(v)), "residual_norm": res_norm, "formula": formula}


def steer(session, prompt: Prompt, req: SteerRequest) -> dict:
    """`generate`, cached per (prompt, request) in the session."""
    check_request(session, req)
    return session.cached(("steer",) + prompt.key + (dataclasses.astuple(req),),
                          lambda: generate(session, prompt, req))
