"""Usage statistics of a crosscoder over a token stream (docs/method.md §6), as a stream accumulator.

Per latent: firing frequency (share of tokens with a non-zero inference code), mean latent
activation over the tokens where it fires and over all tokens, max activation, dead (never
fires). "Activation" is the scaled latent activation f·c of statistics and dashboards
(docs/method.md §1; DECOUPLED: summed over models). Per model: FVE `1 − Σ_d Var(x − x̂)_d / Σ_d Var(x)_d`
pooled over the whole stream (Chan's parallel variance merge, a ratio of sums, not a mean of
per-batch ratios) and MSE `E ||x_m − x̂_m||²`. L0 = mean number of active latents per token
(DECOUPLED: also per model). Optional per-row labels (e.g. token classes: BOS, template/control,
user, assistant; or dataset ids) give per-class token counts, per-class L0 and per-latent
per-class firing frequency and mean activation.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.core.crosscoder import code_normalization
from jaxcoders.analysis import stream
from jaxcoders.analysis.stream import kahan_add, kahan_init, kahan_value



def token_class_names() -> tuple:
    """Names of the store's per-row token classes, indexed by class id (`jaxcoders.data.store.TokenClass`:
    text, bos, template, system, user, assistant, other_role)."""
    from jaxcoders.data.store import TokenClass

    return tuple(c.name.lower() for c in sorted(TokenClass, key=int))


@dataclasses.dataclass(frozen=True)
class UsageStatsAccumulator:
    """groups: ((label name, class names), ...) for per-class statistics."""

    groups: tuple = ()

    def aux(self, cfg, params):
        return {}

    def init(self, cfg, aux, dtype):
        M, D, F = cfg.num_models, cfg.activation_dim, cfg.dict_size
        shapes = {"sum_act": (F,), "n": (), "mean_x": (M, D), "m2_x": (M, D), "mean_e": (M, D), "m2_e": (M, D)}
        for name, classes in self.groups:
            shapes[f"sum_act/{name}"] = (len(classes), F)
        st = {"k": kahan_init({"sum_act": (F,)} | {k: v for k, v in shapes.items() if k.startswith("sum_act/")},
                              dtype),
              "moments": {k: np.zeros(v, dtype) for k, v in shapes.items() if not k.startswith("sum_act")},
              "tokens": np.zeros((), np.uint32),
              "count": np.zeros((F,), np.uint32),
              "count_model": np.zeros((M, F), np.uint32),
              "max_act": np.zeros((F,), dtype)}
        for name, classes in self.groups:
            st[f"count/{name}"] = np.zeros((len(classes), F), np.uint32)
            st[f"tokens/{name}"] = np.zeros((len(classes),), np.uint32)
        return st

    def update(self, cfg, params, aux, state, fwd):
        f, valid = fwd.f, fwd.valid_B
        dt = fwd.x_BMD.dtype
        c = code_normalization(cfg, params.w_dec_MFD)
        if f.ndim == 3:  # DECOUPLED: per-model codes, reported activation summed over models
            act = jnp.sum(f * c[None], axis=1)
            active_MF = jnp.sum(f != 0, axis=0, dtype=jnp.uint32)
            active = jnp.any(f != 0, axis=1)
        else:
            act = f * (c.sum(0) if c.ndim == 2 else c)
            active = f != 0
            active_MF = jnp.broadcast_to(jnp.sum(active, axis=0, dtype=jnp.uint32), (cfg.num_models, f.shape[-1]))
        new = dict(state)
        upd = {"sum_act": jnp.sum(act, axis=0)}
        new["tokens"] = state["tokens"] + jnp.sum(valid > 0, dtype=jnp.uint32)
        new["count"] = state["count"] + jnp.sum(active, axis=0, dtype=jnp.uint32)
        new["count_model"] = state["count_model"] + active_MF
        new["max_act"] = jnp.maximum(state["max_act"], jnp.max(act, axis=0))
        for name, classes in self.groups:
            onehot = (fwd.labels[name][:, None] == jnp.arange(len(classes))[None, :]).astype(dt)  # (B, C)
            upd[f"sum_act/{name}"] = jnp.einsum("bc,bf->cf", onehot, act, precision=jax.lax.Precision.HIGHEST)
            new[f"count/{name}"] = state[f"count/{name}"] + jnp.einsum(
                "bc,bf->cf", onehot, active.astype(dt)).astype(jnp.uint32)
            new[f"tokens/{name}"] = state[f"tokens/{name}"] + jnp.sum(onehot, axis=0).astype(jnp.uint32)
        new["k"] = kahan_add(state["k"], upd)
        new["moments"] = _chan_merge(state["moments"], fwd.x_BMD, fwd.x_BMD - fwd.xhat_BMD, valid)
        return new

    def finalize(self, cfg, params, aux, state):
        names = stream.model_names(cfg.num_models)
        k = kahan_value(state["k"])
        mo = {key: np.asarray(v, np.float64) for key, v in state["moments"].items()}
        n = float(state["tokens"])  # exact; mo["n"] (float) only drives the variance merge
        count = np.asarray(state["count"], np.float64)
        lat, sc = {}, {}
        with np.errstate(divide="ignore", invalid="ignore"):
            lat["frequency"] = count / n
            lat["count_active"] = count
            lat["mean_activation"] = np.where(count > 0, k["sum_act"] / count, np.nan)
            lat["mean_activation_all"] = k["sum_act"] / n
            lat["max_activation"] = np.asarray(state["max_act"], np.float64)
            lat["dead"] = count == 0
            sc["num_tokens"] = int(n)
            sc["l0"] = float(count.sum() / n)
            sc["dead_fraction"] = float(np.mean(count == 0))
            if cfg.decoupled and cfg.is_batchtopk:
                cm = np.asarray(state["count_model"], np.float64)
                for m, name in enumerate(names):
                    sc[f"l0_{name}"] = float(cm[m].sum() / n)
                    lat[f"frequency_{name}"] = cm[m] / n
            for m, name in enumerate(names):
                var_x, var_e = mo["m2_x"][m].sum(), mo["m2_e"][m].sum()
                sc[f"fve_{name}"] = float(1.0 - var_e / var_x)
                sc[f"mse_{name}"] = float((mo["m2_e"][m].sum() + n * np.sum(mo["mean_e"][m] ** 2)) / n)
            sc["fve"] = float(1.0 - mo["m2_e"].sum() / mo["m2_x"].sum())
            for gname, classes in self.groups:
                tok = np.asarray(state[f"tokens/{gname}"], np.float64)
                cnt = np.asarray(state[f"count/{gname}"], np.float64)
                sact = k[f"sum_act/{gname}"]
                for ci, cname in enumerate(classes):
                    sc[f"tokens_{gname}_{cname}"] = int(tok[ci])
                    sc[f"l0_{gname}_{cname}"] = float(cnt[ci].sum() / tok[ci]) if tok[ci] else float("nan")
                    lat[f"frequency_{gname}_{cname}"] = cnt[ci] / tok[ci] if tok[ci] else np.full(cnt.shape[1], np.nan)
                    lat[f"mean_activation_{gname}_{cname}"] = np.where(cnt[ci] > 0, sact[ci] / cnt[ci], np.nan)
        return {"latent": lat, "scalar": sc}


def _chan_merge(mo: dict, x_BMD, e_BMD, valid_B) -> dict:
    """Merge this batch's per-(m, d) mean and M2 of x and e into the running ones (Chan et al.)."""
    w = valid_B[:, None, None]
    nb = jnp.sum(valid_B)
    n = mo["n"]
    tot = n + nb
    out = {"n": tot}
    for key, y in (("x", x_BMD), ("e", e_BMD)):
        mean_b = jnp.sum(w * y, axis=0) / jnp.maximum(nb, 1)
        m2_b = jnp.sum(w * jnp.square(y - mean_b), axis=0)
        delta = mean_b - mo[f"mean_{key}"]
        frac = nb / jnp.maximum(tot, 1)
        out[f"mean_{key}"] = mo[f"mean_{key}"] + delta * frac
        out[f"m2_{key}"] = mo[f"m2_{key}"] + m2_b + jnp.square(delta) * n * frac
    return out


def usage_statistics(model, acts, *, batch_size: int = 4096, labels: Optional[dict] = None,
                     label_classes: Optional[dict] = None, dtype: str = "float32", mesh=None,
                     max_rows: Optional[int] = None, progress: bool = False) -> dict:
    """Usage statistics in one streaming pass: {"latent": {column: (F,)}, "scalar": {...}}.

    labels: {name: (N,) int array} per-row classes (-1 = none); label_classes: {name: class names
    indexed by class id} (default "0", "1", ..., up to the largest id; `token_class_names()` for
    the store's token classes)."""
    acc = make_accumulator(labels, label_classes)
    res = stream.run_pass(model, acts, [acc], batch_size=batch_size, dtype=dtype, mesh=mesh, labels=labels,
                          max_rows=max_rows, progress=progress)
    return res.results[0]


def make_accumulator(labels: Optional[dict] = None, label_classes: Optional[dict] = None) -> UsageStatsAccumulator:
    groups = []
    for name, lab in sorted((labels or {}).items()):
        classes = (label_classes or {}).get(name)
        if classes is None:
            n = int(np.max(np.asarray(lab))) + 1 if len(lab) else 0
            classes = [str(i) for i in range(max(n, 1))]
        groups.append((str(name), tuple(str(c) for c in classes)))
    return UsageStatsAccumulator(groups=tuple(groups))
