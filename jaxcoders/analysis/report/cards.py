"""The latent cards of the report: which latents get one (`card_order`) and their examples per
bucket, token ids and per-channel contributions trimmed to the window (`cards`)."""
from __future__ import annotations

import numpy as np

from jaxcoders.analysis.report.json_values import json_number


def card_order(t, ex, max_cards: int) -> list[int]:
    """Latents that get a card: those with examples, genuine first, then chat-only, base-only,
    then by frequency (or max activation)."""
    have = t[t["n_examples"] > 0]
    if not len(have):
        return []
    tag_rank = {"chat-only": 1, "base-only": 2, "shared": 3, "other": 4}
    key1 = -(have["genuine"] == "✓").astype(int) if "genuine" in have else 0
    key2 = have["tag"].map(tag_rank).fillna(5) if "tag" in have else 0
    by = "frequency" if "frequency" in have else ("max_activation" if "max_activation" in have else "latent")
    order = have.assign(_k1=key1, _k2=key2, _k3=-have[by].fillna(0)).sort_values(["_k1", "_k2", "_k3", "latent"])
    return [int(j) for j in order["latent"].to_numpy()[:max_cards]]


def cards(t, ex, latents, top_examples: int, bucket_examples: int):
    """({str(latent): {"buckets": [...]}}, the token ids the examples use)."""
    meta, e = ex["meta"], ex["examples"]
    channels = [c for c in meta["channels"]]
    lat_arr = e["latent"]
    order = np.argsort(lat_arr, kind="stable")
    bounds = np.searchsorted(lat_arr[order], latents), np.searchsorted(lat_arr[order], latents, side="right")
    rows_t = t.set_index("latent")
    bnames = {b["id"]: b for b in meta["buckets"]}
    ds_names = meta.get("datasets") or []
    cls_names = meta.get("token_class_names") or []
    out, used_ids = {}, set()
    for j, a, b in zip(latents, *bounds):
        sel = order[a:b]
        card_buckets = []
        for bid in sorted(bnames):
            mine = sel[e["bucket"][sel] == bid]
            mine = mine[np.argsort(e["rank"][mine])][: top_examples if bid == 0 else bucket_examples]
            pop_key = f"population_{bnames[bid]['name']}"
            pop = json_number(rows_t.at[j, pop_key]) if pop_key in rows_t.columns else None
            exs = []
            for i in mine:
                tok = e["token_ids"][i]
                ok = np.flatnonzero(tok != -1)  # -1: outside the sequence; -2: id unknown
                lo, hi = (int(ok[0]), int(ok[-1]) + 1) if ok.size else (0, 0)
                used_ids.update(int(x) for x in tok[lo:hi] if x >= 0)
                ds = int(e["dataset_id"][i])
                cl = int(e["token_class"][i])
                exs.append({"a": json_number(e["activation"][i]), "s": int(e["sequence_id"][i]),
                            "p": int(e["position"][i]),
                            "d": ds_names[ds] if 0 <= ds < len(ds_names) else None,
                            "k": cls_names[cl] if 0 <= cl < len(cls_names) else None,
                            "t": [int(x) for x in tok[lo:hi]], "c": meta["window"]["center_index"] - lo,
                            "v": {ch: [json_number(x, 3) for x in e[f"act_{ch}"][i][lo:hi]] for ch in channels}})
            if exs or (pop or 0) > 0:
                card_buckets.append({"id": bid, "name": bnames[bid]["name"], "kind": bnames[bid]["kind"],
                                     "lo": bnames[bid]["lo"], "hi": bnames[bid]["hi"], "population": pop,
                                     "examples": exs})
        out[str(j)] = {"buckets": card_buckets}
    return out, used_ids
