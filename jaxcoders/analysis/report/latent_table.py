"""The report's per-latent table: the analysis table joined with the examples' per-latent columns
(`merged_table`), and the template-token share derived from analyze's per-class frequencies."""
from __future__ import annotations

import numpy as np


def merged_table(table, ex):
    """The analysis table (all latents) with the examples' per-latent columns joined on `latent`,
    or the examples' table alone (e.g. tied crosscoders). Adds `genuine` and `n_examples`."""
    import pandas as pd

    lat = ex["latents"] if ex is not None else None
    if table is None:
        t = lat.copy()
    elif lat is not None:
        extra = [c for c in lat.columns if c not in table.columns or c == "latent"]
        t = table.merge(lat[extra], on="latent", how="left")
    else:
        t = table.copy()
    g = np.full(len(t), "", dtype=object)
    if "genuine_chat_specific" in t:
        g[t["genuine_chat_specific"].fillna(False).to_numpy(bool)] = "✓"
    if "genuine_base_specific" in t:
        g[t["genuine_base_specific"].fillna(False).to_numpy(bool)] = "✓"
    if "genuine_chat_specific" in t or "genuine_base_specific" in t:
        t["genuine"] = g
    n = np.zeros(len(t), np.int64)
    if ex is not None:
        counts = pd.Series(ex["examples"]["latent"]).value_counts()
        n = t["latent"].map(counts).fillna(0).to_numpy(np.int64)
    t["n_examples"] = n
    return t


def template_share_from_summary(t, summary: dict):
    """share = freq_template × tokens_template / count_active (from analyze's per-class columns)."""
    tok = summary.get("tokens_token_class_template")
    if "template_share" in t or not tok or "frequency_token_class_template" not in t or "count_active" not in t:
        return t
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = t["count_active"].to_numpy(np.float64)
        t["template_share"] = np.where(cnt > 0, t["frequency_token_class_template"].to_numpy(np.float64) * tok / cnt,
                                       np.nan)
    return t
