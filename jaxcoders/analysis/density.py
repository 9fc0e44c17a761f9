"""Per-latent activation-density histograms: how a latent's activations are distributed over the
tokens where it fires (the histogram of a latent card; docs/analysis.md).

Activation = the scaled latent activation a = f·c of statistics and dashboards (docs/method.md §1;
DECOUPLED: summed over models). For latent j with maximum activation m_j over the same tokens
(`max_activation` of the usage statistics, or a max pass here), bin i of `bins` counts the tokens
with a_j in (i·m_j/bins, (i+1)·m_j/bins]; tokens where the latent does not fire (a_j = 0) are not
counted, so the counts sum to the latent's `count_active`. An activation above a supplied maximum
(a maximum from other tokens) lands in the last bin.

Column: `activation_hist` — per latent a JSON list of the `bins` counts (the bin edges are
`linspace(0, max_activation, bins + 1)`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jaxcoders.analysis import stream
from jaxcoders.core.crosscoder import code_normalization

BINS = 20


def scaled_activation(cfg, params, f):
    """a = f·c per token and latent (B, F) from an inference code (B, F) or DECOUPLED (B, M, F)."""
    c = code_normalization(cfg, params.w_dec_MFD)
    if f.ndim == 3:
        return jnp.sum(f * c[None], axis=1)
    return f * (c.sum(0) if c.ndim == 2 else c)


@dataclasses.dataclass(frozen=True)
class MaxAccumulator:
    """The max activation per latent (F,)."""

    def aux(self, cfg, params):
        return {}

    def init(self, cfg, aux, dtype):
        return {"max": np.zeros((cfg.dict_size,), dtype)}

    def update(self, cfg, params, aux, state, fwd):
        return {"max": jnp.maximum(state["max"], jnp.max(scaled_activation(cfg, params, fwd.f), axis=0))}

    def finalize(self, cfg, params, aux, state):
        return {"latent": {"max_activation": np.asarray(state["max"], np.float64)}, "scalar": {}}


@dataclasses.dataclass(frozen=True)
class DensityAccumulator:
    """Counts (bins, F) of positive activations per bin of (0, max_j] (latent axis last)."""

    bins: int = BINS
    # the per-latent maxima: a dynamic input of the step (via aux), kept out of jit's cache key
    max_activation: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    def aux(self, cfg, params):
        return {"max": np.asarray(self.max_activation, np.float32)}

    def init(self, cfg, aux, dtype):
        return {"count": np.zeros((self.bins, cfg.dict_size), np.uint32)}

    def update(self, cfg, params, aux, state, fwd):
        a = scaled_activation(cfg, params, fwd.f)
        m = aux["max"].astype(a.dtype)
        pos = a > 0
        idx = jnp.clip(jnp.ceil(a / jnp.where(m > 0, m, 1)[None] * self.bins) - 1, 0, self.bins - 1).astype(jnp.int32)
        idx = jnp.where(pos, idx, -1)
        counts = jnp.stack([jnp.sum(idx == i, axis=0, dtype=jnp.uint32) for i in range(self.bins)])
        return {"count": state["count"] + counts}

    def finalize(self, cfg, params, aux, state):
        return {"latent": {"activation_hist": np.asarray(state["count"], np.int64).T}, "scalar": {"bins": self.bins}}


def activation_histograms(model, acts, *, max_activation=None, bins: int = BINS, batch_size: int = 4096,
                          dtype: str = "float32", mesh=None, max_rows: Optional[int] = None,
                          progress: bool = False) -> dict:
    """{"counts": (F, bins) int64, "max_activation": (F,) float64, "bins": bins}: the histograms of
    every latent over `acts` (one pass; a max pass first when `max_activation` is not given)."""
    cfg, _, _ = stream.resolve_model(model)
    if cfg.is_tied:
        raise ValueError("activation histograms are defined for L1 / BatchTopK codes, not tied slots")
    if bins < 1:
        raise ValueError(f"bins must be ≥ 1, got {bins}")
    if max_activation is None:
        res = stream.run_pass(model, acts, [MaxAccumulator()], batch_size=batch_size, dtype=dtype, mesh=mesh,
                              max_rows=max_rows, progress=progress)
        max_activation = res.results[0]["latent"]["max_activation"]
    mx = np.nan_to_num(np.asarray(max_activation, np.float64), nan=0.0)
    if mx.shape != (cfg.dict_size,):
        raise ValueError(f"max_activation has shape {mx.shape}, expected ({cfg.dict_size},)")
    res = stream.run_pass(model, acts, [DensityAccumulator(bins=bins, max_activation=mx)], batch_size=batch_size,
                          dtype=dtype, mesh=mesh, max_rows=max_rows, progress=progress)
    return {"counts": res.results[0]["latent"]["activation_hist"], "max_activation": mx, "bins": bins}


def hist_column(counts_FB) -> np.ndarray:
    """(F,) object array of JSON lists of counts."""
    return np.asarray([json.dumps([int(c) for c in row]) for row in np.asarray(counts_FB)], object)


def add_activation_density(table, model, acts, *, bins: int = BINS, **kw):
    """The latent table with `activation_hist` (uses its `max_activation` column when present: the
    usage statistics' maximum over the same tokens). Returns the table."""
    mx = table["max_activation"].to_numpy(np.float64) if "max_activation" in table else None
    h = activation_histograms(model, acts, max_activation=mx, bins=bins, **kw)
    table["activation_hist"] = hist_column(h["counts"])
    if mx is None:
        table["max_activation"] = h["max_activation"]
    return table
