"""One table per crosscoder: every per-latent column, a JSON summary, and the paper's selection.

`analyze` runs the decoder metrics (no data) and a single streaming pass feeding both the
usage statistics and Latent Scaling; `write_outputs` writes `<out>/latents.parquet` (CSV when
pyarrow is missing), `<out>/summary.json` and the PNG plots (`jaxcoders.analysis.plots`).

Paper selection (arXiv 2504.02922; docs/method.md §6): a latent is *genuinely chat-specific* when
Δ ≥ 0.9, ν^ε < 0.2 and ν^r < 0.5. The mirror criterion for base-only latents uses the mirror
probe: Δ ≤ 0.1, mirror ν^ε < 0.2, mirror ν^r < 0.5.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from jaxcoders.analysis import decoder, slots, stats, stream
from jaxcoders.analysis import scaling as ls

NU_ERROR_MAX, NU_RECON_MAX, DELTA_MIN = 0.2, 0.5, 0.9


def genuine_chat_specific(delta, nu_error, nu_reconstruction) -> np.ndarray:
    """Δ ≥ 0.9 and ν^ε < 0.2 and ν^r < 0.5 (NaN ν: False)."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(delta) >= DELTA_MIN) & (np.asarray(nu_error) < NU_ERROR_MAX) & \
            (np.asarray(nu_reconstruction) < NU_RECON_MAX)


def genuine_base_specific(delta, mirror_nu_error, mirror_nu_reconstruction) -> np.ndarray:
    """The mirror criterion: Δ ≤ 0.1 and mirror ν^ε < 0.2 and mirror ν^r < 0.5."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(delta) <= 1.0 - DELTA_MIN) & (np.asarray(mirror_nu_error) < NU_ERROR_MAX) & \
            (np.asarray(mirror_nu_reconstruction) < NU_RECON_MAX)


def analyze(model, acts=None, *, batch_size: int = 4096, latent_scaling: bool = True, usage: bool = True,
            latents=None, mirror: bool = True, labels: Optional[dict] = None, label_classes: Optional[dict] = None,
            dtype: str = "float32", mesh=None, max_rows: Optional[int] = None, nearest: bool = True,
            progress: bool = False):
    """Per-latent table (pandas DataFrame, one row per latent) and a summary dict.

    With `acts=None` only the decoder metrics are computed. `latents` restricts Latent Scaling
    to a subset (indices, boolean mask, or a selector of `decoder.select_latents`: "chat-only",
    "exclusive", ...); the other latents get NaN in its columns."""
    import pandas as pd

    cfg, params, buffers = stream.resolve_model(model)
    model = (cfg, params, buffers)
    F = cfg.dict_size
    cols = {"latent": np.arange(F)}
    cols.update(decoder.decoder_metrics(model, nearest=nearest))
    summary = {"dict_size": F, "num_models": cfg.num_models, "activation_dim": cfg.activation_dim,
               "architecture": cfg.architecture, "code_normalization": cfg.code_normalization.name,
               "dtype": dtype, "batch_size": batch_size}
    if cfg.n_shared_latents:  # the shared-latent variant: the first S latents share one decoder row
        cols["shared_block"] = cols["latent"] < cfg.n_shared_latents
        summary["n_shared_latents"] = cfg.n_shared_latents
    if isinstance(latents, str):
        latents = decoder.select_latents(model, latents)
    accs = []
    ls_acc = None
    if cfg.is_tied:  # triples: per-slot counts and ratios instead of usage statistics / Latent Scaling
        if acts is not None:
            accs.append(slots.make_accumulator(labels, label_classes))
        summary["latent_scaling"] = "not defined for tied crosscoders: see r_base / r_chat"
    elif acts is not None and usage:
        accs.append(stats.make_accumulator(labels, label_classes))
    if acts is not None and latent_scaling and not cfg.is_tied:
        ls_acc = ls.make_accumulator(cfg, latents, mirror)
        accs.append(ls_acc)
    if accs:
        res = stream.run_pass(model, acts, accs, batch_size=batch_size, dtype=dtype, mesh=mesh,
                              labels=labels if usage else None, max_rows=max_rows, progress=progress)
        summary.update(num_tokens=res.num_tokens, pass_seconds=round(res.seconds, 3),
                       tokens_per_second=round(res.num_tokens / max(res.seconds, 1e-9), 1))
        for acc, out in zip(accs, res.results):
            if acc is ls_acc:
                idx = np.asarray(ls_acc.index) if ls_acc.subset else np.arange(F)
                for k, v in out["latent"].items():
                    full = np.full(F, np.nan)
                    full[idx] = v
                    cols[k] = full
                summary["latent_scaling_latents"] = int(idx.size)
            else:
                cols.update(out["latent"])
                summary.update(out["scalar"])
    table = pd.DataFrame(cols)
    summary.update(_selection_summary(table))
    return table, summary


def _selection_summary(table) -> dict:
    tags = table["tag"].to_numpy()
    out = {"tag_counts": {t: int(np.sum(tags == t)) for t in decoder.TAGS},
           "thresholds": {"delta_min": DELTA_MIN, "nu_error_max": NU_ERROR_MAX, "nu_reconstruction_max": NU_RECON_MAX}}
    if "nu_error" in table:
        g = genuine_chat_specific(table["delta_norm"], table["nu_error"], table["nu_reconstruction"])
        table["genuine_chat_specific"] = g
        chat_only = tags == "chat-only"
        out["chat_only"] = int(chat_only.sum())
        out["chat_only_probed"] = int(np.sum(chat_only & np.isfinite(table["nu_error"].to_numpy())))
        out["genuine_chat_specific"] = int(g.sum())
    if "mirror_nu_error" in table:
        g = genuine_base_specific(table["delta_norm"], table["mirror_nu_error"], table["mirror_nu_reconstruction"])
        table["genuine_base_specific"] = g
        out["base_only"] = int(np.sum(tags == "base-only"))
        out["genuine_base_specific"] = int(g.sum())
    return out


def summary_line(summary: dict, name: str = "") -> str:
    """`<name>: N chat-only latents by Δnorm (of F); K survive Latent Scaling (Δ ≥ 0.9, ν^ε < 0.2, ν^r < 0.5)`."""
    head = f"{name}: " if name else ""
    n = summary.get("chat_only", summary["tag_counts"]["chat-only"])
    line = f"{head}{n} chat-only latents by Δnorm (of {summary['dict_size']})"
    if "genuine_chat_specific" in summary:
        k = summary["genuine_chat_specific"]
        pct = f" ({100.0 * k / n:.1f}%)" if n else ""
        line += (f"; {k}{pct} survive Latent Scaling (Δ ≥ {DELTA_MIN}, ν^ε < {NU_ERROR_MAX}, "
                 f"ν^r < {NU_RECON_MAX})")
    if "chat_corner" in summary:
        line += (f"; tied: {summary['chat_corner']} chat-corner and {summary['base_corner']} base-corner triples "
                 f"({summary['rare_latents']} rare ones left out), L0 shared/base/chat "
                 f"{summary['l0_shared']:.1f}/{summary['l0_base']:.1f}/{summary['l0_chat']:.1f}")
    if "genuine_base_specific" in summary:
        line += (f"; base-only: {summary['base_only']}, {summary['genuine_base_specific']} survive the mirror "
                 "probe")
    return line


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_table(table, path: Path) -> Path:
    """Parquet when pyarrow is installed, CSV otherwise; returns the written path."""
    path = Path(path)
    try:
        import pyarrow  # noqa: F401

        out = path.with_suffix(".parquet")
        t = table.copy()
        for c in t.columns:  # object columns (tags) as strings for parquet
            if t[c].dtype == object:
                t[c] = t[c].astype(str)
        t.to_parquet(out, index=False)
    except ImportError:
        out = path.with_suffix(".csv")
        table.to_csv(out, index=False)
    return out


def write_outputs(table, summary: dict, out_dir, *, plots: bool = True, stem: str = "latents") -> dict:
    """Write `<stem>.parquet|csv`, `summary.json` and the plots; returns {what: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": write_table(table, out_dir / stem)}
    summary = dict(summary)
    summary["summary_line"] = summary_line(summary)
    p = out_dir / "summary.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=2, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n")
    os.replace(tmp, p)  # nothing half-written
    paths["summary"] = p
    if plots:
        from jaxcoders.analysis import plots as plots_mod

        paths.update(plots_mod.write_plots(table, out_dir))
    return paths
