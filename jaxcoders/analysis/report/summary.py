"""The report's summary numbers (`summary_items`): architecture, sizes, tag counts, Latent Scaling
survivors, FVE / L0, the tied crosscoder's slot numbers and the examples' collection settings."""
from __future__ import annotations

import math

import numpy as np


def summary_items(t, summary: dict, ex) -> list[tuple[str, str]]:
    """[(label, text)] of the summary table, from summary.json, the examples' meta and the table."""
    meta = ex["meta"] if ex is not None else {}
    items = []

    def add(label, v, fmt="{}"):
        if v is not None and not (isinstance(v, float) and not math.isfinite(v)):
            items.append((label, fmt.format(v) if not isinstance(v, str) else v))

    add("architecture", summary.get("architecture") or meta.get("architecture"))
    add("code normalization", summary.get("code_normalization") or meta.get("code_normalization"))
    add("latents (F)", summary.get("dict_size") or meta.get("dict_size"), "{:,}")
    add("d_model (D)", summary.get("activation_dim") or meta.get("activation_dim"))
    add("tokens analysed", summary.get("num_tokens") or meta.get("num_tokens"), "{:,}")
    tags = summary.get("tag_counts") or ({k: int(v) for k, v in t["tag"].value_counts().items()} if "tag" in t else {})
    for k in ("chat-only", "base-only", "shared", "other"):
        add(f"{k} latents", tags.get(k), "{:,}")
    add("chat-only surviving Latent Scaling", summary.get("genuine_chat_specific"), "{:,}")
    add("base-only surviving the mirror probe", summary.get("genuine_base_specific"), "{:,}")
    for k in ("fve_base", "fve_chat"):
        add(f"FVE {k[4:]}", summary.get(k), "{:.4f}")
    add("L0", summary.get("l0"), "{:.2f}")
    add("dead fraction", summary.get("dead_fraction"), "{:.2%}")
    n = meta.get("num_tokens")
    if "count_slot_shared" in t and n:
        for slot in ("shared", "base", "chat"):
            add(f"L0 {slot} slot", float(t[f"count_slot_{slot}"].sum()) / n, "{:.2f}")
        rb, rc = t["r_base"].to_numpy(float), t["r_chat"].to_numpy(float)
        add("chat-corner latents (r_chat > .15, r_base < .04)", int(np.sum((rc > 0.15) & (rb < 0.04))))
        add("base-corner latents (r_base > .15, r_chat < .04)", int(np.sum((rb > 0.15) & (rc < 0.04))))
    if meta:
        add("example sequences", meta.get("num_sequences"), "{:,}")
        add("duplicate sequences skipped", meta.get("duplicate_sequences"), "{:,}")
        add("latents with examples", int((t["n_examples"] > 0).sum()), "{:,}")
        add("examples per bucket", meta.get("per_bucket"))
        add("buckets (× max activation)", ", ".join(b["name"] for b in meta.get("buckets", [])))
        if meta.get("models"):
            add("models", ", ".join(f"{m.get('role')}: {m.get('name')}" for m in meta["models"]))
    add("summary", summary.get("summary_line"))
    return items
