"""examples.json's content: the description of a finished examples pass (format, crosscoder,
channels, buckets, window, sampling, counts) and of its source (store URL, datasets, models,
tokenizer, token-class names)."""
from __future__ import annotations

import time
from typing import Optional, Sequence

from jaxcoders.analysis.examples.channels import channel_docs, code_channels, output_channels
from jaxcoders.analysis.examples.spec import FORMAT, FORMAT_VERSION, Spec


def pass_meta(cfg, spec: Spec, buckets: list, fractions: Sequence[float], *, num_latents: int, seed: int,
              dedup: bool, max_source: str, num_tokens: int, counters: dict, batch_size: int, t0: float) -> dict:
    """The pass's part of examples.json; `seconds` counts from `t0` (time.perf_counter)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "architecture": cfg.architecture,
        "code_normalization": cfg.code_normalization.name, "dict_size": cfg.dict_size, "num_models": cfg.num_models,
        "activation_dim": cfg.activation_dim, "num_latents": num_latents, "code_channels": list(code_channels(cfg)),
        "channels": list(output_channels(cfg)), "channel_definitions": channel_docs(cfg), "buckets": buckets,
        "fractions": list(fractions), "per_bucket": spec.per_bucket,
        "window": {"before": spec.before, "after": spec.after, "size": spec.window, "center_index": spec.before},
        "seed": int(seed), "dedup": bool(dedup), "max_activation_source": max_source, "num_tokens": int(num_tokens),
        "num_sequences": counters["sequences"], "duplicate_sequences": counters["duplicates"],
        "batch_size": batch_size, "max_sequences": spec.max_sequences,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def source_meta(acts, class_names: Optional[Sequence[str]]) -> dict:
    """The source's part of examples.json: token-class names, and for an ActivationStore its URL,
    datasets, models and tokenizer (None otherwise)."""
    out: dict = {"token_class_names": list(class_names) if class_names else None, "source": None,
                 "models": None, "tokenizer": None, "datasets": None}
    if hasattr(acts, "metadata") and hasattr(acts, "url"):
        md = acts.metadata
        out["source"] = str(acts.url)
        out["datasets"] = list(md.get("datasets", []))
        models = (md.get("extraction") or {}).get("models")
        if models:
            out["models"] = [{k: m.get(k) for k in ("role", "name", "revision")} for m in models]
            chat = [m for m in models if m.get("role") == "chat"] or models
            out["tokenizer"] = chat[0].get("name")  # both models see the same ids (docs/method.md §8)
    return out
