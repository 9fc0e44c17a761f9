"""The model math, importing nothing above it.

    ops               the matmul dtype policy (f32 HIGHEST, bf16 forward and backward)
    params            parameters and buffers, initialisation, input normalization
    crosscoder        encode / decode / code normalization / BatchTopK selection (pure functions)
    module            `CrossCoder`, the Flax NNX shell
    losses            L1 and dense BatchTopK losses, auxk, θ
    sparse_batchtopk  the sparse BatchTopK loss (custom VJP over the selected entries)
    tied              the tied crosscoder's loss and schedules
    selection/        batch top-k: exact methods, candidates, the Pallas counting kernel
"""
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams

__all__ = ["CrossCoder", "CrossCoderBuffers", "CrossCoderParams"]
