"""The data the report page's script reads (`report_data`): the table's columns (`COLUMNS`, shown
when present) and rows, the latent cards with their extra numbers (`EXTRA_CARD`), their logit lens and
activation density (`interpretation`), the token texts."""
from __future__ import annotations

import json
import math

import numpy as np

from jaxcoders.analysis.report.cards import card_order, cards
from jaxcoders.analysis.report.json_values import json_number
from jaxcoders.analysis.report.tokens import token_strings

# (key, header, format, tooltip): shown when the column exists and is not all-NaN
COLUMNS = [
    ("latent", "latent", "int", "latent index j"),
    ("tag", "tag", "str", "by Δnorm: chat-only > 0.9, base-only < 0.1, shared 0.4–0.6, other"),
    ("genuine", "LS", "str", "survives Latent Scaling: Δ ≥ 0.9, ν^ε < 0.2, ν^r < 0.5 (base-only: mirror probe)"),
    ("delta_norm", "Δnorm", "f3", "relative decoder norm: 0 = base-only, 1 = chat-only"),
    ("decoder_cos", "cos", "f3", "cosine of the base and chat decoder rows"),
    ("nu_error", "ν^ε", "f3", "error ratio along the chat decoder row (high: Complete Shrinkage)"),
    ("nu_reconstruction", "ν^r", "f3", "reconstruction ratio along the chat decoder row (high: Latent Decoupling)"),
    ("mirror_nu_error", "mirror ν^ε", "f3", "error ratio along the base decoder row (base-only latents)"),
    ("mirror_nu_reconstruction", "mirror ν^r", "f3", "reconstruction ratio along the base decoder row"),
    ("frequency", "freq", "e2", "share of tokens where the latent fires"),
    ("template_share", "template", "pct", "share of the latent's firing tokens that are chat-template tokens"),
    ("max_activation", "max act", "g3", "max latent activation (f·c)"),
    ("r_base", "r_base", "f3", "tied: base-slot / shared-slot firing count"),
    ("r_chat", "r_chat", "f3", "tied: chat-slot / shared-slot firing count"),
    ("n_examples", "ex", "int", "examples in the card"),
]
EXTRA_CARD = ("norm_base", "norm_chat", "mean_activation", "count_active", "count_slot_shared", "count_slot_base",
              "count_slot_chat", "frequency_base", "frequency_chat", "beta_chat_error", "beta_base_error",
              "nearest_chat_base_cos", "nearest_chat_base_index", "nearest_base_chat_cos", "nearest_base_chat_index",
              "observed_max_activation")


def _columns(t) -> list[dict]:
    cols = []
    for key, label, fmt, tip in COLUMNS:
        if key not in t:
            continue
        v = t[key]
        if fmt not in ("str", "int") and not np.isfinite(v.to_numpy(float, na_value=np.nan)).any():
            continue
        cols.append({"key": key, "label": label, "fmt": fmt, "title": tip})
    return cols


LENS_COLUMNS = tuple(f"logit_lens_{m}_{k}" for m in ("base", "chat") for k in ("promoted", "suppressed"))


def _json_list(v) -> list:
    """A JSON-encoded list cell (logit lens, activation histogram) as a list ([] when missing)."""
    if isinstance(v, str) and v.startswith("["):
        try:
            out = json.loads(v)
        except ValueError:
            return []
        return out if isinstance(out, list) else []
    return []


def interpretation(t, latents) -> dict:
    """Per card latent its logit lens ({"base_promoted": [tokens], ...}, from the
    `logit_lens_<model>_<kind>` columns) and activation density ({"counts": [...], "max": m}, from
    `activation_hist` / `max_activation`): {str(latent): {"lens": ..., "density": ...}}; latents
    whose table has neither are left out."""
    lens_cols = [c for c in LENS_COLUMNS if c in t]
    if not lens_cols and "activation_hist" not in t:
        return {}
    sub = t.set_index("latent")
    out = {}
    for j in latents:
        row = sub.loc[j]
        entry = {}
        lens = {c[len("logit_lens_"):]: _json_list(row[c]) for c in lens_cols}
        if any(lens.values()):
            entry["lens"] = lens
        counts = _json_list(row["activation_hist"]) if "activation_hist" in sub.columns else []
        if counts and sum(counts) > 0:
            entry["density"] = {"counts": [int(c) for c in counts],
                                "max": json_number(row["max_activation"]) if "max_activation" in sub.columns else None}
        if entry:
            out[str(j)] = entry
    return out


def report_data(t, summary: dict, ex, *, tokenizer=None, max_cards: int = 500, top_examples: int = 10,
                bucket_examples: int = 5) -> dict:
    cols = _columns(t)
    extra = [k for k in EXTRA_CARD if k in t and k not in {c["key"] for c in cols}]
    classes = set((ex["meta"].get("token_class_names") or []) if ex is not None else [])
    extra += [c for c in t.columns if c.startswith("count_") and (c[6:] in classes or c.startswith(("count_slot_",
                                                                                                   "count_model_")))]
    extra = list(dict.fromkeys(extra))
    rows = [[json_number(v) if c["fmt"] != "str"
             else ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
             for c, v in zip(cols, vals)] for vals in t[[c["key"] for c in cols]].itertuples(index=False, name=None)]
    details = {}
    card_map, used, latents = {}, set(), []
    if ex is not None:
        latents = card_order(t, ex, max_cards)
        card_map, used = cards(t, ex, latents, top_examples, bucket_examples)
        sub = t.set_index("latent").loc[latents]
        for j, vals in zip(latents, sub[extra].itertuples(index=False, name=None)):
            details[str(j)] = {k: json_number(v) for k, v in zip(extra, vals)}
    meta = ex["meta"] if ex is not None else {}
    return {"columns": cols, "rows": rows, "cards": card_map, "details": details,
            "interpret": interpretation(t, latents),
            "vocab": {str(k): v for k, v in token_strings(tokenizer, used).items()},
            "channels": meta.get("channels", []),
            "architecture": meta.get("architecture") or summary.get("architecture"),
            "window": meta.get("window"), "page_size": 200}
