"""Latent Scaling (docs/method.md §6; paper arXiv 2504.02922): is a "chat-only" latent really absent from base?

For latent j with probe direction d_j (a decoder row, unnormalized) and per-token targets y_{j,n},
the least-squares scale of f_j d_j that best explains y is

    β_j = Σ_n f_j(x_n) (d_j · y_{j,n}) / (||d_j||² Σ_n f_j(x_n)²)

with f the model's unscaled inference code (BatchTopK: thresholded). Targets per model m
(0 = base, 1 = chat), in the crosscoder's input space:

    m_activation          x_m
    m_activation_no_bias  x_m − b_dec[m]
    m_reconstruction      x̂_m = f W_dec[m] + b_dec[m]          (full, with bias)
    m_error               x_m − x̂_m + f_{m,j} W_dec[m, j]      (the latent's own contribution added back)

    ν^ε = β(base_error) / β(chat_error)        ν^r = β(base_reconstruction) / β(chat_reconstruction)

Streaming without per-latent targets: every target is affine in quantities shared by all
latents, so per batch we need, for each latent j, Σ_n f_nj (y_n · d_j) for y ∈ {x̂_m, e_m = x_m − x̂_m},
computed as Σ_d A[d, j] d_j[d] with A = yᵀ f (one (D, B) × (B, F) matmul per target, shared by
all probes that weight with the same code), plus Σ_n f_nj, Σ_n f_nj² and Σ_n f_nj f_{m,nj}.
At the end (float64, host):

    reconstruction:     S[x̂_m]
    error:              S[e_m] + (W_dec[m, j] · d_j) Σ f_j f_{m,j}
    activation:         S[x̂_m] + S[e_m]
    activation_no_bias: S[x̂_m] + S[e_m] − (b_dec[m] · d_j) Σ f_j

so memory is O(B·F + F) whatever the number of latents and tokens (the reference builds an
(F, N, D) tensor). The error and reconstruction sums (the ones ν uses) are accumulated directly,
not as differences, to avoid cancellation in float32.

Probes: the reference probes along the chat decoder row (model 1). `mirror=True` adds the
mirror probe along the base decoder row (model 0), for base-only latents; its keys carry the
prefix "mirror_" and its ν are the other model over the probed one:
mirror_nu_error = β(chat_error) / β(base_error) along d^base.

BatchTopK DECOUPLED (per-model codes f_{m}, (B, M, F)): the weighting code f_j of a probe is the
probed model's code (chat code for the chat probe, base code for the mirror probe); each model's
error adds back its own code's contribution f_{m,j} W_dec[m, j].

count_active_<target> = number of tokens where the weighting code f_j is non-zero (the same for
every target; the reference stores it per target). Latents never active have β = ν = NaN.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.analysis import stream
from jaxcoders.analysis.stream import kahan_add, kahan_init, kahan_value, per_model_code

TARGETS = ("activation", "activation_no_bias", "reconstruction", "error")
CHAT, BASE = 1, 0


def probe_prefix(probe: int) -> str:
    """Key prefix of a probe: "" for the chat decoder row (reference), "mirror_" for the base row."""
    return {CHAT: "", BASE: "mirror_"}.get(probe, f"probe{probe}_")


@dataclasses.dataclass(frozen=True)
class LatentScalingAccumulator:
    """Streaming sums of Latent Scaling for the chosen probes (model indices) and latents."""

    probes: tuple = (CHAT,)
    num_latents: Optional[int] = None  # S when probing a subset; None = all F latents
    # the subset's indices: a dynamic input of the step (via aux), so they stay out of jit's cache key
    index: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @property
    def subset(self) -> bool:
        return self.num_latents is not None

    # -- host side
    def aux(self, cfg, params):
        return {"index": np.asarray(self.index, np.int32)} if self.subset else {}

    def _num(self, cfg):
        return self.num_latents if self.subset else cfg.dict_size

    def init(self, cfg, aux, dtype):
        Pn, M, S = len(self.probes), cfg.num_models, self._num(cfg)
        sums = kahan_init({"s_xhat": (Pn, M, S), "s_err": (Pn, M, S), "s_w": (Pn, S), "s_ww": (Pn, S),
                           "s_wf": (Pn, M, S)}, dtype)
        return {"k": sums, "count": np.zeros((Pn, S), np.uint32)}

    # -- traced
    def update(self, cfg, params, aux, state, fwd):
        idx = aux.get("index")
        take = (lambda a: jnp.take(a, idx, axis=-1)) if idx is not None else (lambda a: a)
        w_dec = params.w_dec_MFD
        if idx is not None:
            w_dec = jnp.take(w_dec, idx, axis=1)
        e_BMD = fwd.x_BMD - fwd.xhat_BMD
        M = cfg.num_models
        f_m = [take(per_model_code(fwd.f, m)) for m in range(M)]  # (B, S) each
        targets = [("s_xhat", fwd.xhat_BMD), ("s_err", e_BMD)]
        # Probes sharing a weighting code (every probe, unless the code is DECOUPLED) share the
        # per-target products A = yᵀ w (M, D, S): Σ_n w_nj (y_n · d_j) = Σ_d A[d, j] d_j[d], so the
        # mirror probe costs O(M·D·S) extra and no per-latent target is ever formed.
        groups = {}
        for p in self.probes:
            groups.setdefault(p if fwd.f.ndim == 3 else -1, []).append(p)
        per_probe = {}
        for probes in groups.values():
            w = f_m[probes[0]]  # the weighting code: the probed model's code
            sums = {"s_w": jnp.sum(w, axis=0), "s_ww": jnp.sum(w * w, axis=0),
                    "s_wf": jnp.stack([jnp.sum(w * f_m[m], axis=0) for m in range(M)]),
                    "count": jnp.sum(w != 0, axis=0, dtype=jnp.uint32)}
            tsum = {p: {} for p in probes}
            for name, y_BMD in targets:
                a_MDS = _weighted_sum(y_BMD, w)
                for p in probes:
                    tsum[p][name] = jnp.sum(a_MDS * w_dec[p].T[None], axis=1)  # (M, S)
            for p in probes:
                per_probe[p] = dict(sums, **tsum[p])
        upd = {k: jnp.stack([per_probe[p][k] for p in self.probes])
               for k in ("s_xhat", "s_err", "s_w", "s_ww", "s_wf")}
        count = jnp.stack([per_probe[p]["count"] for p in self.probes])
        return {"k": kahan_add(state["k"], upd), "count": state["count"] + count}

    # -- host side
    def finalize(self, cfg, params, aux, state):
        s = kahan_value(state["k"])
        count = np.asarray(state["count"], np.float64)
        w_dec = np.asarray(params.w_dec_MFD, np.float64)
        b_dec = np.asarray(params.b_dec_MD, np.float64)
        if self.subset:
            w_dec = w_dec[:, np.asarray(self.index)]
        names = stream.model_names(cfg.num_models)
        out = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            for pi, p in enumerate(self.probes):
                pre = probe_prefix(p)
                d = w_dec[p]  # (S, D)
                dd = np.sum(d * d, axis=1)
                denom = dd * s["s_ww"][pi]
                never = count[pi] == 0
                beta = {}
                for m, name in enumerate(names):
                    recon = s["s_xhat"][pi, m]
                    err = s["s_err"][pi, m] + np.sum(w_dec[m] * d, axis=1) * s["s_wf"][pi, m]
                    act = recon + s["s_err"][pi, m]
                    act_nb = act - (d @ b_dec[m]) * s["s_w"][pi]
                    for tgt, num in (("activation", act), ("activation_no_bias", act_nb),
                                     ("reconstruction", recon), ("error", err)):
                        b = num / denom
                        b[never] = np.nan
                        beta[(name, tgt)] = b
                        out[f"{pre}beta_{name}_{tgt}"] = b
                        out[f"{pre}count_active_{name}_{tgt}"] = count[pi].copy()
                own, other = names[p], names[CHAT if p == BASE else BASE]
                out[f"{pre}nu_error"] = beta[(other, "error")] / beta[(own, "error")]
                out[f"{pre}nu_reconstruction"] = beta[(other, "reconstruction")] / beta[(own, "reconstruction")]
        return {"latent": out, "scalar": {}}


def _weighted_sum(y_BMD, w_BS):
    """A = yᵀ w per model, (M, D, S), at full precision in the dtype of y (one matmul for all models)."""
    return jnp.einsum("bmd,bs->mds", y_BMD, w_BS, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=y_BMD.dtype)


def make_accumulator(cfg, latents: Optional[Sequence[int]] = None, mirror: bool = False,
                     probes: Optional[Sequence[int]] = None) -> LatentScalingAccumulator:
    """The Latent Scaling accumulator for a stream pass (see `latent_scaling` for the arguments)."""
    if cfg.num_models < 2:
        raise ValueError(f"Latent Scaling compares a base and a chat model (M >= 2); this dictionary has M = "
                         f"{cfg.num_models}")
    if probes is None:
        probes = (CHAT, BASE) if mirror else (CHAT,)
    probes = tuple(int(p) for p in probes)
    for p in probes:
        if not 0 <= p < cfg.num_models:
            raise ValueError(f"probe model index {p} is out of range for M={cfg.num_models}")
    if latents is None:
        return LatentScalingAccumulator(probes=probes)
    idx = np.asarray(latents).reshape(-1)
    if idx.dtype == bool:
        if idx.shape[0] != cfg.dict_size:
            raise ValueError(f"a boolean latent mask must have {cfg.dict_size} entries, got {idx.shape[0]}")
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64)
    if idx.size == 0:
        raise ValueError("latents is empty: choose at least one latent to probe")
    if idx.min() < 0 or idx.max() >= cfg.dict_size:
        raise ValueError(f"latent indices must lie in [0, {cfg.dict_size}); got min {idx.min()}, max {idx.max()}")
    return LatentScalingAccumulator(probes=probes, num_latents=int(idx.size), index=idx)


def latent_scaling(model, acts, *, batch_size: int = 4096, latents: Optional[Sequence[int]] = None,
                   mirror: bool = False, dtype: str = "float32", mesh=None, max_rows: Optional[int] = None,
                   progress: bool = False) -> dict:
    """Closed-form Latent Scaling β for every latent and target, and ν (docs/method.md §6).

    Args:
      model: a `CrossCoder`, (cfg, params, buffers), or a path to a reference directory / workdir.
      acts: (N, M, D) array, an ActivationStore (anything with num_rows/len and row slicing), or
        an iterable of (b, M, D) batches.
      batch_size: tokens per jitted step.
      latents: optional subset of latent indices (or an (F,) boolean mask); default all F.
      mirror: also probe along the base decoder row ("mirror_" keys).
      dtype: "float32" (f32 math, compensated f32 accumulation, f64 finalisation) or "float64".
      mesh: a ("data", "latent") mesh (`jaxcoders.analysis.make_mesh`); default all devices on data.
      max_rows: analyse only the first rows.

    Returns:
      dict of float64 numpy arrays of shape (S,) (S = number of probed latents):
      `beta_<model>_<target>`, `count_active_<model>_<target>` for model in base/chat and target in
      activation, activation_no_bias, reconstruction, error; `nu_error`, `nu_reconstruction`;
      the same with a "mirror_" prefix when mirror=True; `latent_index` (S,) int64 and
      `num_tokens` (a 0-d int64 array).
    """
    cfg, params, buffers = stream.resolve_model(model)
    acc = make_accumulator(cfg, latents, mirror)
    res = stream.run_pass((cfg, params, buffers), acts, [acc], batch_size=batch_size, dtype=dtype, mesh=mesh,
                          max_rows=max_rows, progress=progress)
    out = dict(res.results[0]["latent"])
    out["latent_index"] = np.asarray(acc.index, np.int64) if acc.subset else np.arange(cfg.dict_size)
    out["num_tokens"] = np.asarray(res.num_tokens, np.int64)
    return out
