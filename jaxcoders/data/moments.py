"""Activation statistics of a store: Welford / Chan moments in float64 and the `Stats` they give.

Moments are `(count, mean (M, D) float64, M2 (M, D) float64)` triples (M2 = sum of squared
deviations from the mean). A store keeps one triple per source in its `welford/` array
(2, S, 2, M, D) float64: two slots (double buffering, see writer.py), S sources, (mean, M2);
the counts live in the metadata (metadata["welford"]["counts"], metadata["welford"]["slot"]).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Stats(NamedTuple):
    """Per-model activation statistics over a set of rows (float64)."""

    mean: np.ndarray  # (M, D) float64
    std: np.ndarray  # (M, D) float64, population std (ddof = 0)
    count: int


def batch_moments(x_nMD: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean (M, D), M2 (M, D)) of one batch, in float64."""
    x = np.asarray(x_nMD).astype(np.float64)
    n = x.shape[0]
    if n == 0:
        z = np.zeros(x.shape[1:], np.float64)
        return 0, z, z.copy()
    mean = x.mean(axis=0)
    m2 = ((x - mean) ** 2).sum(axis=0)
    return n, mean, m2


def merge_moments(a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]):
    """Chan et al.'s parallel Welford update of (count, mean, M2) pairs (float64)."""
    na, ma, m2a = a
    nb, mb, m2b = b
    if nb == 0:
        return na, ma, m2a
    if na == 0:
        return nb, np.array(mb, np.float64), np.array(m2b, np.float64)
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    m2 = m2a + m2b + delta * delta * (na * nb / n)
    return n, mean, m2


def moments_to_stats(moments) -> Stats:
    n, mean, m2 = moments
    std = np.sqrt(m2 / n) if n > 0 else np.full_like(m2, np.nan)
    return Stats(mean=np.asarray(mean, np.float64), std=np.asarray(std, np.float64), count=int(n))


def load_moments(meta: dict, welford, S: int, M: int, D: int) -> list:
    """Per-source moments at the store's last commit, read from the `welford` array's current slot.

    welford: the (2, S, 2, M, D) float64 tensorstore; returns S (count, mean (M, D), M2 (M, D))."""
    counts = meta.get("welford", {}).get("counts")
    if not counts:
        z = np.zeros((M, D), np.float64)
        return [(0, z.copy(), z.copy()) for _ in range(S)]
    slot = int(meta["welford"]["slot"])
    buf = welford[slot].read().result()
    return [(int(counts[i]), buf[i, 0].copy(), buf[i, 1].copy()) for i in range(len(counts))]


def split_stats(meta: dict, moments: list, split: str | None, dataset_id: int | None = None) -> Stats:
    """Stats of the sources of a split and/or dataset (None = all), merged from their moments."""
    acc = (0, np.zeros((meta["num_models"], meta["d_model"])), np.zeros((meta["num_models"], meta["d_model"])))
    for src, mom in zip(meta["sources"], moments):
        if split is not None and src["split"] != split:
            continue
        if dataset_id is not None and src["dataset_id"] != dataset_id:
            continue
        acc = merge_moments(acc, mom)
    return moments_to_stats(acc)
