"""Online analysis: a prompt or a chat in, the top crosscoder latents of every token out.

Both models run to block L only (`jaxcoders.extract.models.LayerActivations`: the later blocks are
not even loaded) on the same token ids; the crosscoder encodes each (h_b, h_c) pair and the `top`
latents by scaled activation f·c (the dashboard activation, docs/method.md §6) are listed per token
with their Δnorm tag. A chat is rendered with the chat model's template (token classes as in
extraction); a plain prompt is tokenized with the chat model's tokenizer (BOS added), so template
markup typed into it becomes the template's special tokens.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np

from jaxcoders.data.store import TokenClass
from jaxcoders.interventions.codes import InterventionError


def inspect_prompt(base_model: str, chat_model: str, crosscoder, layer: int, *, prompt: Optional[str] = None,
                   chat: Any = None, top: int = 5, latents: Optional[Sequence[int]] = None, max_len: int = 1024,
                   device: str = "auto", model_dtype: str = "float32") -> dict:
    """Per-token top latents. `chat`: a list of {role, content} (or its JSON string); `latents`: rank
    only these (e.g. the chat-only latents). Returns a JSON-able dict (see `format_table`)."""
    import torch

    from jaxcoders.extract import models as models_lib
    from jaxcoders.extract import text as text_lib
    from jaxcoders.extract.models import load_tokenizer
    from jaxcoders.interventions.codes import CrosscoderEdits

    if (prompt is None) == (chat is None):
        raise InterventionError("give exactly one of --prompt and --chat.")
    if top < 1:
        raise InterventionError(f"--top must be ≥ 1, got {top}.")
    infos = {"--base_model": models_lib.load_config(base_model, None, "--base_model"),
             "--chat_model": models_lib.load_config(chat_model, None, "--chat_model")}
    models_lib.check_layer(layer, infos)
    cc = crosscoder if isinstance(crosscoder, CrosscoderEdits) else CrosscoderEdits(crosscoder)
    if cc.activation_dim != infos["--base_model"].d_model:
        raise InterventionError(f"--crosscoder has D = {cc.activation_dim} but the models' hidden size is "
                         f"{infos['--base_model'].d_model}; use the crosscoder trained on these models.")
    base_tok = load_tokenizer(base_model, None, "--base_model")
    chat_tok = load_tokenizer(chat_model, None, "--chat_model")
    if chat is not None:
        if not getattr(chat_tok, "chat_template", None):
            raise InterventionError(f"--chat_model={chat_model} has no chat template; use --prompt instead of --chat.")
        msgs = text_lib.normalize_messages(chat)
        if not msgs:
            raise InterventionError("--chat holds no messages.")
        ids, cls = text_lib.encode_chats(chat_tok, [msgs], max_len)[0]
    else:
        if not prompt:
            raise InterventionError("--prompt is empty.")
        ids, cls = text_lib.encode_texts(chat_tok, [prompt], max_len)[0]
    limits = {f"{flag}={info.name}": info.vocab_size for flag, info in infos.items()}
    text_lib.check_ids(ids, text_lib.tokenizer_mismatch(base_tok, chat_tok), base_tok, chat_tok, limits)

    dev = models_lib.resolve_device(device)
    hs = []
    for flag, name in (("--base_model", base_model), ("--chat_model", chat_model)):
        acts = models_lib.LayerActivations(name, layer, dtype=model_dtype, device=dev, flag=flag)
        h = acts(torch.as_tensor(ids[None].astype(np.int64), device=dev))[0]
        hs.append(h.float().cpu().numpy())
        del acts
    act = cc.scaled_activations(hs[0], hs[1])  # (T, F)
    delta = cc.relative_norm()
    tags = cc.tags()
    pool = np.arange(cc.dict_size) if latents is None else cc.check_latents(latents)
    sub = act[:, pool]
    k = min(top, len(pool))
    order = np.argsort(-sub, axis=1, kind="stable")[:, :k]
    tokens = chat_tok.convert_ids_to_tokens([int(i) for i in ids])
    rows = []
    for t in range(len(ids)):
        entries = []
        for o in order[t]:
            j, a = int(pool[o]), float(sub[t, o])
            if a <= 0:
                break
            entries.append({"latent": j, "activation": a, "delta_norm": float(delta[j]), "tag": str(tags[j])})
        rows.append({"position": t, "id": int(ids[t]), "token": tokens[t],
                     "text": chat_tok.decode([int(ids[t])]), "class": TokenClass(int(cls[t])).name.lower(),
                     "l0": int(np.count_nonzero(act[t] > 0)), "top": entries})
    return {"base_model": base_model, "chat_model": chat_model, "layer": layer,
            "crosscoder": str(crosscoder) if not isinstance(crosscoder, CrosscoderEdits) else None,
            "activation": "scaled activation f·c (dashboard units)", "top": top,
            "restricted_to": None if latents is None else [int(i) for i in pool], "tokens": rows}


def parse_chat_arg(value: str):
    """`--chat`: a JSON list of messages, or `@path` to a file holding one."""
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path) as fh:
                value = fh.read()
        except OSError:
            raise InterventionError(f"--chat={value}: the file {path} does not exist or cannot be read.") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise InterventionError(f"--chat is not valid JSON ({e.msg}); give a list of "
                                '{"role": ..., "content": ...} messages.') from None


_TAG_SHORT = {"chat-only": "C", "base-only": "B", "shared": "S", "other": "o"}


def format_table(result: dict) -> str:
    """One line per token: position, class, token, L0, then `latent:activation[tag]` entries
    (tags: C chat-only, B base-only, S shared, o other)."""
    lines = [f"{'pos':>4} {'class':<9} {'token':<18} {'L0':>4}  top latents (index:f·c[tag]; C chat-only, "
             "B base-only, S shared, o other)"]
    for r in result["tokens"]:
        tok = json.dumps(r.get("text", r["token"]), ensure_ascii=False)[1:-1]
        tok = tok if len(tok) <= 18 else tok[:17] + "…"
        cells = "  ".join(f"{e['latent']}:{e['activation']:.3g}[{_TAG_SHORT.get(e['tag'], '?')}]" for e in r["top"])
        lines.append(f"{r['position']:>4} {r['class']:<9} {tok:<18} {r['l0']:>4}  {cells or '-'}")
    return "\n".join(lines)
