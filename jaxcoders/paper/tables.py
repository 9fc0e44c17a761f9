"""Per-crosscoder latent tables of a paper run and the small data frames behind its figures.

`latent_table` takes an existing analysis (`latents.parquet` + `summary.json` of
`experiments/analyze.py` or the demo) or runs `jaxcoders.analysis.analyze` on the store (decoder
metrics, usage statistics per token class and dataset, Latent Scaling with the mirror probe), and
adds what is missing: activation-density histograms (`analysis.density`), the logit lens of both
models (`analysis.logit_lens`) and the twin analysis (`analysis.twins`). The frames (`class_counts`,
`selection`, `quality`, `nu_long`, `nu_stats`) are the numbers of the paper's tables and figures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from jaxcoders.analysis import decoder, density, logit_lens, stats, twins
from jaxcoders.analysis.tables import NU_ERROR_MAX, NU_RECON_MAX, analyze
from jaxcoders.paper.config import ARCHS, PaperConfig, PaperError

NU_CLASSES = ("chat-only", "shared", "other", "base-only")


def _reuse(analysis_dir: str, F: int):
    import pandas as pd

    d = Path(analysis_dir)
    table_path = next((d / n for n in ("latents.parquet", "latents.csv") if (d / n).is_file()), None)
    if table_path is None:
        raise PaperError(f"{d} holds no latents.parquet (experiments/analyze.py writes it).")
    table = pd.read_parquet(table_path) if table_path.suffix == ".parquet" else pd.read_csv(table_path)
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    if len(table) != F or "nu_error" not in table:
        raise PaperError(f"{table_path} has {len(table)} rows{'' if 'nu_error' in table else ' and no Latent Scaling'}"
                         f"; it is not the full analysis of this crosscoder (F = {F}): rerun experiments/analyze.py.")
    return table, summary


def store_labels(store) -> tuple[dict, dict]:
    """Per-row token classes and dataset ids of a store, with their class names."""
    labels = {"token_class": store.token_classes, "dataset": store.dataset_ids}
    classes = {"token_class": stats.token_class_names(),
               "dataset": tuple(Path(str(n)).stem for n in store.datasets)}
    return labels, classes


def latent_table(arch: str, model, store, cfg: PaperConfig, unembeddings: Optional[dict], tokenizer,
                 log: Callable) -> tuple:
    """(table, summary, twin summary) of one crosscoder (see the module docstring)."""
    F = model.cfg.dict_size
    if cfg.analyses.get(arch):
        table, summary = _reuse(cfg.analyses[arch], F)
        log(f"      {arch}: analysis reused from {cfg.analyses[arch]}")
    else:
        labels, classes = store_labels(store)
        table, summary = analyze(model, store, batch_size=cfg.batch_size, labels=labels, label_classes=classes,
                                 max_rows=cfg.max_tokens, progress=cfg.progress)
    if "activation_hist" not in table:
        density.add_activation_density(table, model, store, bins=cfg.density_bins, batch_size=cfg.batch_size,
                                       max_rows=cfg.max_tokens)
    if unembeddings and "logit_lens_chat_promoted" not in table:
        for key, col in logit_lens.logit_lens_columns(model, unembeddings, tokenizer, k=cfg.logit_lens_k).items():
            table[key] = col
    tw = twins.twin_analysis(np.asarray(model.params.w_dec_MFD), top=cfg.twin_top, low=cfg.twin_low,
                             high=cfg.twin_high, tags=table["tag"].to_numpy())
    for key, col in tw["columns"].items():
        table[key] = col
    return table, summary, tw["summary"]


def class_counts(tables: dict):
    """Latents per Δnorm class and crosscoder (all, and alive = fired at least once)."""
    import pandas as pd

    rows = []
    for arch, t in tables.items():
        alive = ~t["dead"].to_numpy(bool) if "dead" in t else np.ones(len(t), bool)
        for tag in decoder.TAGS:
            sel = t["tag"].to_numpy() == tag
            rows.append({"crosscoder": arch, "tag": tag, "latents": int(sel.sum()), "alive": int((sel & alive).sum())})
    return pd.DataFrame(rows)


def selection(summaries: dict):
    """The paper's headline per crosscoder: chat-only latents and how many are genuinely chat-specific
    (Δ ≥ 0.9, ν^ε < 0.2, ν^r < 0.5), and the mirror counts for base-only latents."""
    import pandas as pd

    rows = []
    for arch, s in summaries.items():
        n, k = s.get("chat_only", 0), s.get("genuine_chat_specific", 0)
        rows.append({"crosscoder": arch, "chat_only": n, "chat_only_probed": s.get("chat_only_probed", n),
                     "genuine_chat_specific": k, "genuine_share": (k / n) if n else float("nan"),
                     "base_only": s.get("base_only", 0), "genuine_base_specific": s.get("genuine_base_specific", 0)})
    return pd.DataFrame(rows)


def quality(summaries: dict):
    """FVE (per model and pooled), L0, dead fraction and tokens per dictionary."""
    import pandas as pd

    keys = ("fve_base", "fve_chat", "fve", "l0", "dead_fraction", "num_tokens")
    return pd.DataFrame([{"dictionary": name, **{k: s.get(k) for k in keys}} for name, s in summaries.items()])


def nu_long(tables: dict):
    """One row per crosscoder and latent: tag, Δnorm, ν^ε, ν^r, survives (for the ν figures)."""
    import pandas as pd

    parts = []
    for arch, t in tables.items():
        cols = {"crosscoder": arch, "latent": t["latent"].to_numpy(), "tag": t["tag"].to_numpy(),
                "delta_norm": t["delta_norm"].to_numpy(float), "nu_error": t["nu_error"].to_numpy(float),
                "nu_reconstruction": t["nu_reconstruction"].to_numpy(float),
                "genuine_chat_specific": t["genuine_chat_specific"].to_numpy(bool)
                if "genuine_chat_specific" in t else np.zeros(len(t), bool)}
        parts.append(pd.DataFrame(cols))
    return pd.concat(parts, ignore_index=True)


def nu_stats(nu):
    """Per crosscoder, class and ratio: latents with a finite ν, median, quartiles, and the share
    under the paper's threshold (ν^ε < 0.2, ν^r < 0.5). The shared class is the baseline."""
    import pandas as pd

    rows = []
    for arch in ARCHS:
        for tag in NU_CLASSES:
            sub = nu[(nu["crosscoder"] == arch) & (nu["tag"] == tag)]
            for col, thr in (("nu_error", NU_ERROR_MAX), ("nu_reconstruction", NU_RECON_MAX)):
                v = sub[col].to_numpy(float)
                v = v[np.isfinite(v)]
                q = np.quantile(v, [0.25, 0.5, 0.75]) if v.size else [np.nan] * 3
                rows.append({"crosscoder": arch, "tag": tag, "ratio": col, "latents": int(v.size),
                             "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2]),
                             "share_below_threshold": float(np.mean(v < thr)) if v.size else float("nan"),
                             "threshold": thr})
    return pd.DataFrame(rows)
