"""Synthetic paired (base, chat) activations from a known dictionary (planted ground truth).

Each planted feature i has a direction per model (rows of `dict_base_ID`, `dict_chat_ID`, unit
norm or zero) and fires on a token with probability `firing_prob` with an exponential magnitude;
the two models see the *same* coefficients (the same token), so

    x_base = a @ dict_base + noise,    x_chat = a @ dict_chat + noise,    a: (N, n_features) sparse.

Feature kinds:
  shared     same direction in both models
  chat_only  zero in base, a direction in chat
  base_only  a direction in base, zero in chat
  rotated    different directions in the two models (cosine `rotation_cosine`)
  corr_a / corr_b  pairs of shared-direction features whose co-firing changes between models:
             when A fires, B also fires with probability `corr_base` in the base model and
             `corr_chat` in the chat model (seed 004 experiments 2-3); otherwise independent.
Everything is deterministic in `seed`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

KINDS = ("shared", "chat_only", "base_only", "rotated", "corr_a", "corr_b")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    activation_dim: int = 32
    n_shared: int = 48
    n_chat_only: int = 8
    n_base_only: int = 8
    n_rotated: int = 0
    rotation_cosine: float = 0.5
    n_corr_pairs: int = 0
    corr_base: float = 0.0
    corr_chat: float = 0.9
    firing_prob: float = 0.04
    magnitude_mean: float = 1.0
    noise_std: float = 0.01
    seed: int = 0

    @property
    def n_features(self) -> int:
        return self.n_shared + self.n_chat_only + self.n_base_only + self.n_rotated + 2 * self.n_corr_pairs


@dataclasses.dataclass
class PlantedDictionary:
    spec: SyntheticSpec
    dict_base_ID: np.ndarray  # (n_features, D), unit rows or zero
    dict_chat_ID: np.ndarray
    kinds: np.ndarray  # (n_features,) str

    def sample(self, n_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(x (N, 2, D) float32, coefficients (N, 2, n_features) float32: per model, equal except
        for the correlation-shifted B features)."""
        s = self.spec
        rng = np.random.default_rng(seed)
        fires = rng.random((n_tokens, s.n_features)) < s.firing_prob
        mags = rng.exponential(s.magnitude_mean, size=(n_tokens, s.n_features))
        a = (fires * mags).astype(np.float32)
        a_models = np.stack([a, a], axis=1)
        if s.n_corr_pairs:
            ia = np.flatnonzero(self.kinds == "corr_a")
            ib = np.flatnonzero(self.kinds == "corr_b")
            u = rng.random((n_tokens, len(ia)))
            for m, p in enumerate((s.corr_base, s.corr_chat)):
                co = fires[:, ia] & (u < p)
                a_models[:, m, ib] = np.where(co, np.maximum(a[:, ib], mags[:, ib]), a[:, ib])
        noise = rng.normal(scale=s.noise_std, size=(n_tokens, 2, s.activation_dim)).astype(np.float32)
        x = np.stack([a_models[:, 0] @ self.dict_base_ID, a_models[:, 1] @ self.dict_chat_ID], axis=1) + noise
        return x.astype(np.float32), a_models


def make_dictionary(spec: SyntheticSpec) -> PlantedDictionary:
    rng = np.random.default_rng(spec.seed)
    D, n = spec.activation_dim, spec.n_features

    def unit(k):
        v = rng.normal(size=(k, D))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    base = np.zeros((n, D))
    chat = np.zeros((n, D))
    kinds = []
    i = 0
    shared = unit(spec.n_shared)
    base[i:i + spec.n_shared] = chat[i:i + spec.n_shared] = shared
    kinds += ["shared"] * spec.n_shared
    i += spec.n_shared
    chat[i:i + spec.n_chat_only] = unit(spec.n_chat_only)
    kinds += ["chat_only"] * spec.n_chat_only
    i += spec.n_chat_only
    base[i:i + spec.n_base_only] = unit(spec.n_base_only)
    kinds += ["base_only"] * spec.n_base_only
    i += spec.n_base_only
    if spec.n_rotated:
        u = unit(spec.n_rotated)
        w = unit(spec.n_rotated)
        w = w - np.sum(w * u, axis=1, keepdims=True) * u  # orthogonal to u
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        c = spec.rotation_cosine
        base[i:i + spec.n_rotated] = u
        chat[i:i + spec.n_rotated] = c * u + np.sqrt(1 - c * c) * w
        kinds += ["rotated"] * spec.n_rotated
        i += spec.n_rotated
    if spec.n_corr_pairs:
        dirs = unit(2 * spec.n_corr_pairs)
        base[i:] = chat[i:] = dirs
        kinds += ["corr_a", "corr_b"] * spec.n_corr_pairs
    return PlantedDictionary(spec, base.astype(np.float32), chat.astype(np.float32), np.array(kinds))


def recovery(planted: PlantedDictionary, w_dec_MFD: np.ndarray) -> dict:
    """For each planted feature, the best cosine of any latent's concatenated decoder row with the
    feature's concatenated (base, chat) direction, and that latent's index."""
    w = np.asarray(w_dec_MFD, np.float64)
    lat = np.concatenate([w[0], w[1]], axis=1)  # (F, 2D)
    lat /= np.maximum(np.linalg.norm(lat, axis=1, keepdims=True), 1e-12)
    feat = np.concatenate([planted.dict_base_ID, planted.dict_chat_ID], axis=1).astype(np.float64)
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    cos = feat @ lat.T  # (n_features, F)
    best = np.argmax(cos, axis=1)
    return {"max_cosine": cos[np.arange(len(best)), best], "best_latent": best}
