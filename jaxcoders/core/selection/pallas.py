"""Pallas counting pass for the radix select in `jaxcoders.core.selection.exact` (method "pallas").

One call computes the histogram of one radix digit of the order-preserving int32 keys of a
(B, F) float32 score matrix, restricted to the keys whose higher bits match the current prefix:

    hist[j] = #{ (b, f) : (key(b, f) - lo) >> shift == j },   j in [0, 2**bits)

where `key` is the IEEE total-order int32 key of the float (see `exact.score_keys`) and the
subtraction wraps (so keys outside [lo, lo + 2**(shift + bits)) never land in a bin).

Why a kernel: on TPU, XLA's scatter-add histogram (what method "radix" uses) is serialised.
This kernel needs no scatter: each (8, 128) tile is compared against the 2**bits bin ids and
accumulated in per-bin int32 vregs; each grid step writes its per-lane partial counts and a
tiny jnp sum finishes. The score matrix is read straight from HBM (no key or padding copy) and
the key transform is done in the kernel. Work per element and pass is ~2 * 2**bits VPU ops,
so 4-bit digits (8 passes) keep it near the memory roofline.

On CPU the kernel runs in Pallas interpret mode (slow; for tests only).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

DEFAULT_BITS = 4
_SUBLANES, _LANES = 8, 128
_MAX_BLOCK_ROWS, _MAX_BLOCK_COLS = 256, 1024


def _pow2_at_least(n: int, lo: int) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def block_shape_for(B: int, F: int, platform: str = "tpu") -> tuple[int, int]:
    """(rows, cols) of one grid block: powers of two, multiples of (8, 128).

    TPU: up to 256 x 1024 f32 (1 MiB, double-buffered in VMEM). GPU: up to 32 x 512 so that a
    (1024, 8192) matrix gives 512 programs for the SMs."""
    max_rows, max_cols = (_MAX_BLOCK_ROWS, _MAX_BLOCK_COLS) if platform == "tpu" else (32, 512)
    return (min(max_rows, _pow2_at_least(B, _SUBLANES)),
            min(max_cols, _pow2_at_least(F, _LANES)))


def _hist_kernel(lo_ref, shift_ref, x_ref, out_ref, *, bits, B, F, bb, bf):
    nbins = 1 << bits
    bi, bj = pl.program_id(0), pl.program_id(1)
    lo = lo_ref[...]  # (8, 128) int32 tiles, every entry = lo (resp. shift)
    shift = shift_ref[...]
    mask_rows, mask_cols = B % bb != 0, F % bf != 0
    sub = lax.broadcasted_iota(jnp.int32, (_SUBLANES, _LANES), 0)
    lane = lax.broadcasted_iota(jnp.int32, (_SUBLANES, _LANES), 1)

    def body(r, accs):
        accs = list(accs)
        r0 = pl.multiple_of(r * _SUBLANES, _SUBLANES)
        for t in range(bf // _LANES):
            x = x_ref[pl.ds(r0, _SUBLANES), pl.ds(t * _LANES, _LANES)]
            raw = lax.bitcast_convert_type(x, jnp.int32)
            key = raw ^ ((raw >> 31) & 0x7FFFFFFF)
            digit = lax.shift_right_logical(key - lo, shift)
            if mask_rows or mask_cols:  # edge blocks hold unspecified data past (B, F)
                valid = None
                if mask_rows:
                    valid = bi * bb + r0 + sub < B
                if mask_cols:
                    vc = bj * bf + t * _LANES + lane < F
                    valid = vc if valid is None else valid & vc
                digit = jnp.where(valid, digit, -1)  # -1 is no bin
            for j in range(nbins):
                accs[j] = accs[j] + (digit == j).astype(jnp.int32)
        return tuple(accs)

    zeros = tuple(jnp.zeros((_SUBLANES, _LANES), jnp.int32) for _ in range(nbins))
    accs = lax.fori_loop(0, bb // _SUBLANES, body, zeros)
    for j in range(nbins):
        out_ref[pl.ds(j * _SUBLANES, _SUBLANES), :] = accs[j]


def default_interpret() -> bool:
    """Interpret mode unless the default backend can compile Pallas (TPU, GPU)."""
    return jax.default_backend() not in ("tpu", "gpu", "cuda", "rocm")


def _compiler_params(platform: str):
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    if platform in ("gpu", "cuda", "rocm"):
        # Triton (not Mosaic GPU): plain blocked loads, no TMA block-size limits.
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=4, num_stages=2)
    return None


def digit_histogram(
    scores_BF: jax.Array,
    lo: jax.Array,
    shift: int | jax.Array,
    bits: int = DEFAULT_BITS,
    *,
    interpret: Optional[Any] = None,
    block: Optional[tuple[int, int]] = None,
    platform: Optional[str] = None,
) -> jax.Array:
    """int32 (2**bits,) histogram of digit `(key - lo) >> shift` over a (B, F) float32 matrix.

    Args:
      scores_BF: float32 (B, F).
      lo: int32 scalar (traced): lower end of the key interval being refined.
      shift: digit position, int or traced int32 scalar (one compiled kernel serves every pass).
      bits: static digit width (2**bits bins); shift + bits <= 32.
      interpret: Pallas interpret flag; None = interpret unless on TPU/GPU. Pass
        `pltpu.InterpretParams()` to simulate TPU semantics on CPU.
      block: optional (rows, cols) block override (multiples of (8, 128)).
      platform: compile target for the kernel ("tpu", "gpu"); None = the default backend.
    """
    if scores_BF.ndim != 2 or scores_BF.dtype != jnp.float32:
        raise ValueError(
            f"digit_histogram needs float32 (B, F) scores, got {scores_BF.dtype}{scores_BF.shape}")
    if not 1 <= bits <= 8 or (isinstance(shift, int) and not 0 <= shift <= 32 - bits):
        raise ValueError(f"bad digit position shift={shift}, bits={bits}")
    B, F = scores_BF.shape
    if interpret is None:
        interpret = default_interpret()
    platform = platform or jax.default_backend()
    bb, bf = block or block_shape_for(B, F, "tpu" if interpret else platform)
    if bb % _SUBLANES or bf % _LANES:
        raise ValueError(f"block {bb}x{bf} must be a multiple of {_SUBLANES}x{_LANES}")
    gb, gf = pl.cdiv(B, bb), pl.cdiv(F, bf)
    nbins = 1 << bits
    compiler_params = None if interpret else _compiler_params(platform)
    kernel = functools.partial(_hist_kernel, bits=bits, B=B, F=F, bb=bb, bf=bf)
    lo_tile = jnp.full((_SUBLANES, _LANES), lo, jnp.int32)
    shift_tile = jnp.full((_SUBLANES, _LANES), shift, jnp.int32)
    # Under shard_map (check_vma) the output varies over the same mesh axes as the scores.
    mat = getattr(jax.typeof(scores_BF), "mat", None)
    out_shape = jax.ShapeDtypeStruct((gb * nbins * _SUBLANES, gf * _LANES), jnp.int32,
                                     manual_axis_type=mat)
    partial = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(gb, gf),
        in_specs=[
            pl.BlockSpec((_SUBLANES, _LANES), lambda i, j: (0, 0)),
            pl.BlockSpec((_SUBLANES, _LANES), lambda i, j: (0, 0)),
            pl.BlockSpec((bb, bf), lambda i, j: (i, j)),
        ],
        out_specs=pl.BlockSpec((nbins * _SUBLANES, _LANES), lambda i, j: (i, j)),
        interpret=interpret,
        compiler_params=compiler_params,
        name=f"radix_hist_b{bits}",
    )(lo_tile, shift_tile, scores_BF)
    return partial.reshape(gb, nbins, _SUBLANES, gf, _LANES).sum(axis=(0, 2, 3, 4), dtype=jnp.int32)
