"""Crosscoder side of the interventions (JAX, numpy in and out; no torch here).

Everything is in the models' raw residual space (the crosscoder's input normalization, if any, is
undone by `CrossCoder.decode`), so the results can be added to residual streams directly.
Notation (docs/method.md §6): h_b, h_c = base / chat residual after block L for the same token;
f = crosscoder code of (h_b, h_c) (inference semantics: BatchTopK thresholded; DECOUPLED and tied
codes keep their per-model / per-slot shape); x̂_m(f) = f W_dec[m] + b_dec[m] (raw space);
f|_S = f with every latent outside S set to 0 (all slots / models).

* `latent_delta(f, S, bias=True)`  = x̂_c(f|_S) − x̂_b(f|_S)
                                    = Σ_{j∈S} (f_j d_j^chat − f_j d_j^base) + (b_dec^chat − b_dec^base)
* `latent_delta(f, S, bias=False)` = the same without the decoder-bias (and normalization-offset) term:
                                    Σ_{j∈S} f_j (d_j^chat − d_j^base) (the reference's formula).
With a shared code (L1, BatchTopK non-decoupled) f_j is the same in both models; DECOUPLED codes use
each model's own f_j^m.

jit shapes: rows are padded to the next power of two (≥ 64) so that a run compiles a handful of
shapes, not one per batch.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

BASE, CHAT = 0, 1
_MIN_BUCKET = 64


class InterventionError(ValueError):
    """Bad input to an intervention or inspection, phrased as what to change."""


def _bucket(n: int) -> int:
    return max(_MIN_BUCKET, 1 << max(0, int(n - 1).bit_length()))


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[0] == n:
        return x
    pad = np.zeros((n - x.shape[0],) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad], axis=0)


class CrosscoderEdits:
    """A loaded crosscoder plus the raw-space quantities the edits need.

    Args:
      model: a `jaxcoders.CrossCoder` (M = 2: index 0 = base, 1 = chat) or any crosscoder spec
        `jaxcoders.load_reference` takes (a directory, a workdir, gs://..., org/name, hf://...).
    """

    def __init__(self, model):
        if isinstance(model, (str, os.PathLike)):
            from jaxcoders.io.reference import load_reference

            model = load_reference(model)
        if model.cfg.num_models != 2:
            raise InterventionError(f"interventions need a base/chat crosscoder (M = 2); this one has M = {model.cfg.num_models}.")
        self.model = model
        self.cfg = model.cfg
        self._zero_code = None

    @property
    def activation_dim(self) -> int:
        return self.cfg.activation_dim

    @property
    def dict_size(self) -> int:
        return self.cfg.dict_size

    # ------------------------------------------------------------------ codes and decodes
    def codes(self, h_base_ND, h_chat_ND) -> np.ndarray:
        """Inference code of the pairs, (N, F) — (N, 2, F) DECOUPLED, (N, 3, F) tied; float32."""
        x = np.stack([np.asarray(h_base_ND, np.float32), np.asarray(h_chat_ND, np.float32)], axis=1)
        self._check_dim(x)
        n = x.shape[0]
        return np.asarray(self.model.encode(_pad_rows(x, _bucket(n))))[:n]

    def scaled_activations(self, h_base_ND, h_chat_ND) -> np.ndarray:
        """The dashboard activation f·c (N, F) (DECOUPLED: summed over models; tied: over the slots)."""
        x = np.stack([np.asarray(h_base_ND, np.float32), np.asarray(h_chat_ND, np.float32)], axis=1)
        self._check_dim(x)
        n = x.shape[0]
        a = np.asarray(self.model.get_activations(_pad_rows(x, _bucket(n))))[:n]
        return a.sum(axis=1) if a.ndim == 3 else a

    def decode(self, f) -> np.ndarray:
        """x̂ (N, 2, D) in raw residual space (with the decoder bias)."""
        f = np.asarray(f, np.float32)
        n = f.shape[0]
        return np.asarray(self.model.decode(_pad_rows(f, _bucket(n))))[:n]

    def bias_delta(self) -> np.ndarray:
        """x̂_c(0) − x̂_b(0) (D,): b_dec^chat − b_dec^base in raw space (plus the normalization offsets)."""
        if self._zero_code is None:
            z = self.decode(np.zeros((1,) + self._code_shape(), np.float32))[0]
            self._zero_code = z[CHAT] - z[BASE]
        return self._zero_code

    def reconstruction(self, f, model: int) -> np.ndarray:
        """x̂_m(f) (N, D)."""
        return self.decode(f)[:, model]

    def latent_delta(self, f, latents: Optional[Sequence[int]] = None, *, bias: bool = True) -> np.ndarray:
        """x̂_c(f|_S) − x̂_b(f|_S) (N, D); `latents=None` = all; `bias=False` drops b_dec^c − b_dec^b."""
        f = np.asarray(f, np.float32)
        if latents is not None:
            keep = np.zeros(self.dict_size, np.float32)
            keep[self.check_latents(latents)] = 1.0
            f = f * keep  # broadcasts over the model / slot axis of per-model codes
        xh = self.decode(f)
        delta = xh[:, CHAT] - xh[:, BASE]
        if not bias:
            delta = delta - self.bias_delta()[None]
        return delta

    def chat_directions(self, latents: Sequence[int]) -> np.ndarray:
        """d_j^chat (S, D) in raw residual space (the chat decoder row, through the normalization)."""
        latents = self.check_latents(latents)
        eye = np.zeros((len(latents), self.dict_size), np.float32)
        eye[np.arange(len(latents)), latents] = 1.0
        zero = self.decode(np.zeros((1, self.dict_size), np.float32))[0, CHAT]
        return self.decode(eye)[:, CHAT] - zero[None]

    # ------------------------------------------------------------------ latent metadata
    def relative_norm(self) -> np.ndarray:
        from jaxcoders.analysis.decoder import relative_norm

        return relative_norm(np.asarray(self.model.params.w_dec_MFD))

    def tags(self) -> np.ndarray:
        from jaxcoders.analysis.decoder import tag_latents

        return tag_latents(self.relative_norm())

    def check_latents(self, latents: Sequence[int]) -> np.ndarray:
        idx = np.asarray(list(latents), np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.dict_size):
            bad = int(idx[(idx < 0) | (idx >= self.dict_size)][0])
            raise InterventionError(f"latent index {bad} is outside this crosscoder's {self.dict_size} latents; "
                             "fix the latent list.")
        return idx

    # ------------------------------------------------------------------ helpers
    def _code_shape(self) -> tuple:
        F = self.dict_size
        if self.cfg.is_tied:
            return (3, F)
        if self.cfg.is_batchtopk and self.cfg.decoupled:
            return (2, F)
        return (F,)

    def _check_dim(self, x: np.ndarray) -> None:
        if x.shape[-1] != self.activation_dim:
            raise InterventionError(f"the models' residual width is {x.shape[-1]} but the crosscoder expects "
                             f"D = {self.activation_dim}; use the crosscoder trained on these models and --layer.")


def split_by_nu(table, *, nu_column: str = "nu_error", chat_only: float = 0.9) -> dict[str, np.ndarray]:
    """Best and worst half of the chat-only latents (Δ > `chat_only`) by a ν column (low = best).

    `table` is a mapping / data frame with `delta_norm` and `nu_column` (the latent table written by
    `experiments/analyze.py` or `latent_scaling.py`; the row index is the latent, or a `latent`
    column). Latents with NaN ν are dropped; with an odd count the middle latent is left out so both
    halves have the same size (the paper compares equal-sized halves, docs/method.md §6).
    """
    cols = list(table.columns) if hasattr(table, "columns") else list(table)
    for c in ("delta_norm", nu_column):
        if c not in cols:
            raise InterventionError(f"the latent table has no column {c!r} (columns: {', '.join(map(str, cols))}); "
                             "run experiments/analyze.py with Latent Scaling first or pick --nu_column.")
    delta = np.asarray(table["delta_norm"], np.float64)
    nu = np.asarray(table[nu_column], np.float64)
    latent = np.asarray(table["latent"], np.int64) if "latent" in cols else np.arange(len(delta))
    ok = (delta > chat_only) & np.isfinite(nu)
    idx, vals = latent[ok], nu[ok]
    order = idx[np.argsort(vals, kind="stable")]
    h = len(order) // 2
    return {f"best_half_{nu_column}": np.sort(order[:h]), f"worst_half_{nu_column}": np.sort(order[len(order) - h:])}


def load_latent_sets(path: str, *, nu_column: str = "nu_error") -> dict[str, np.ndarray]:
    """Named latent sets from a file.

    * `.npy`: a 1-D integer array → one set named after the file stem;
    * `.json`: a list of indices (one set, the stem) or an object `{name: [indices], ...}`;
    * `.parquet` / `.csv` latent table: best / worst half of the chat-only latents by `nu_column`.
    """
    import json

    if not os.path.exists(path):
        raise InterventionError(f"--latents_file={path} does not exist.")
    stem = os.path.splitext(os.path.basename(path))[0]
    if path.endswith(".npy"):
        arr = np.load(path)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InterventionError(f"--latents_file={path} must hold a 1-D integer array of latent indices.")
        return {stem: arr.astype(np.int64)}
    if path.endswith(".json"):
        with open(path) as fh:
            obj = json.load(fh)
        if isinstance(obj, list):
            return {stem: np.asarray(obj, np.int64)}
        if isinstance(obj, dict):
            return {str(k): np.asarray(v, np.int64).reshape(-1) for k, v in obj.items()}
        raise InterventionError(f"--latents_file={path} must hold a list of indices or {{name: [indices]}}.")
    if path.endswith((".parquet", ".csv")):
        import pandas as pd

        table = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
        if "latent" not in table.columns and table.index.name == "latent":
            table = table.reset_index()
        return split_by_nu(table, nu_column=nu_column)
    raise InterventionError(f"--latents_file={path}: use .npy, .json, or a latent table (.parquet / .csv).")
