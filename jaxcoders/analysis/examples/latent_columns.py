"""The per-latent table of the examples (example_latents.parquet): one row per collected latent (S,)
— the bucket basis and observed max, usage counts (per token class, per code channel, tied's slot
ratios), bucket populations and sample sizes, and the decoder columns."""
from __future__ import annotations

import numpy as np

from jaxcoders.core.tied import slot_ratio
from jaxcoders.analysis import decoder
from jaxcoders.analysis.examples.channels import code_channels


def latent_columns(model, st, spec, lat, max_activation, buckets, meta, num_tokens) -> dict:
    """{column: (S,) array} of the latents `lat` from the host state `st`, the (F,) `max_activation`
    and the bucket table; token-class counts named by meta["token_class_names"]."""
    cfg = model[0]
    cols: dict = {"latent": lat.astype(np.int32), "max_activation": max_activation[lat],
                  "observed_max_activation": np.asarray(st["observed_max"], np.float64)}
    cnt = np.asarray(st["count_active"], np.float64)
    cols["count_active"] = cnt.astype(np.int64)
    cols["frequency"] = cnt / max(num_tokens, 1)
    names = meta.get("token_class_names")
    if names:
        cc = np.asarray(st["count_class"], np.int64)
        for i, cname in enumerate(names):
            cols[f"count_{cname}"] = cc[i]
        if "template" in names:
            with np.errstate(invalid="ignore", divide="ignore"):
                cols["template_share"] = np.where(cnt > 0, cc[names.index("template")] / cnt, np.nan)
    code = np.asarray(st["count_code"], np.int64)
    chans = code_channels(cfg)
    if len(chans) > 1:
        for i, c in enumerate(chans):
            cols[f"count_{'slot_' if cfg.is_tied else 'model_'}{c}"] = code[i]
    if cfg.is_tied:
        cols["r_base"] = slot_ratio(code[1], code[0])
        cols["r_chat"] = slot_ratio(code[2], code[0])
    pop = np.asarray(st["population"], np.int64)  # [top (all), reservoirs ascending]
    R = spec.num_reservoirs
    for b in buckets:
        src = pop[0] if b["id"] == 0 else pop[1 + (R - b["id"])]
        cols[f"population_{b['name']}"] = src
        cols[f"sampled_{b['name']}"] = np.minimum(src, spec.per_bucket)
    dm = decoder.decoder_metrics(model, nearest=False)
    for k in ("norm_base", "norm_chat", "delta_norm", "tag", "decoder_cos"):
        if k in dm:
            cols[k] = np.asarray(dm[k])[lat]
    return cols
