"""Matmul FLOP counts of one train step (what throughput numbers are divided by).

G = 2·B·(M·D)·F is one (B, M·D) × (M·D, F)-sized matmul. A dense L1 or BatchTopK step is 5G
(encoder forward, decoder forward, dW_dec, gradient w.r.t. the code, dW_enc); the tied
crosscoder has 3F encoder columns: 9G. The dense BatchTopK step also runs a dense auxk decode
and its gradients: 3G more. The sparse BatchTopK path (`jaxcoders.sparse`) runs the encoder
forward densely and everything else over the k·B selected entries (decode, d v, dW_dec, dW_enc:
4 · 2·(k·B)·(M·D)) plus the compacted dead-latent block of auxk (4 matmuls of its width).
"""
from __future__ import annotations

# The benchmark's size presets, (D, F, B) with two models (experiments/benchmark.py --preset; the
# reference benchmark's S/M/L are the same sizes).
BENCHMARK_SIZES = {
    "S": (256, 4096, 1024),
    "M": (512, 8192, 2048),
    "L": (1024, 16384, 2048),
    "gemma": (2304, 73728, 4096),  # accelerators: Gemma-2-2B, F = 32·2304, the paper's batch x 2
}


def dense_flops(arch: str, M: int, D: int, F: int, B: int) -> float:
    """Matmul FLOPs of the dense step: 5G for L1 and BatchTopK, 9G for tied."""
    G = 2.0 * B * M * D * F
    return 9 * G if arch == "tied" else 5 * G


def executed_flops(arch: str, path: str, M: int, D: int, F: int, B: int, k, n_dead: int, top_k_aux: int) -> float:
    """Matmul FLOPs the step's path actually runs (`path`: "dense" or "sparse")."""
    del top_k_aux  # auxk's per-token top-k is a selection, not a matmul
    G = 2.0 * B * M * D * F
    if arch != "batchtopk":
        return dense_flops(arch, M, D, F, B)
    if path == "dense":
        return 8 * G  # + dense auxk: decode, d code, dW_dec (its encoder part is in the dense dW_enc)
    n = k * B
    flops = G + 8.0 * n * M * D  # encoder fwd; decode, d v, dW_dec, dW_enc over n entries
    if n_dead:
        from jaxcoders.core.sparse_batchtopk import AUXK_CAPACITY_FRACTIONS

        caps = sorted({int(F * f) for f in AUXK_CAPACITY_FRACTIONS if int(F * f) < F} | {F})
        cap = next(c for c in caps if c >= n_dead)
        flops += 4 * 2.0 * B * M * D * cap  # decode, d code, dW_dec, dW_enc over the block
    return flops
