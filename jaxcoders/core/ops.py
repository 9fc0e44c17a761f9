"""The matmul dtype policy and small numerical helpers shared by the model math.

* float32: `Precision.HIGHEST` (true f32, never TF32 on GPUs), f32 accumulation;
* bfloat16: bf16 inputs, f32 accumulation and output, forward and backward (`einsum_bf16`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcoders.config import CrossCoderConfig


def _transpose_equations(eq: str) -> tuple[str, str]:
    """For `eq` = "A,B->C": the einsums giving d/dA ("C,B->A") and d/dB ("A,C->B") of a two-operand
    contraction. Valid when no index is repeated inside an operand and every index of each operand
    appears in the other operand or the output (true of every contraction in this package)."""
    ins, out = eq.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    for s, other in ((sa, sb + out), (sb, sa + out)):
        if len(set(s)) != len(s) or not set(s) <= set(other):
            raise ValueError(f"einsum_bf16 cannot transpose {eq!r}")
    return f"{out},{sb}->{sa}", f"{sa},{out}->{sb}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_bf16(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum with bfloat16 inputs and float32 accumulation and output, whose backward multiplies in
    bfloat16 too: the cotangent is rounded to bf16 and each gradient is a bf16 x bf16 -> f32 product.

    Plain autodiff of a bf16 einsum with f32 output multiplies the f32 cotangent by the f32-cast
    operand instead: an f32 matmul at default precision (TF32 on NVIDIA GPUs, measured on an H200 at
    the Gemma-2-2B size: the three backward matmuls of the L1 step took 28.6 of its 49 ms)."""
    return bf16_product(eq, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


def _einsum_bf16_fwd(eq, a, b):
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    out = bf16_product(eq, a16, b16)
    # zero-size arrays carry the input dtypes (residuals must be arrays)
    return out, (a16, b16, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _einsum_bf16_bwd(eq, res, g):
    a16, b16, a_dt, b_dt = res
    eq_a, eq_b = _transpose_equations(eq)
    g16 = g.astype(jnp.bfloat16)
    da = bf16_product(eq_a, g16, b16).astype(a_dt.dtype)
    db = bf16_product(eq_b, a16, g16).astype(b_dt.dtype)
    return da, db


# The bf16 x bf16 -> f32 contractions XLA:CPU runs natively and faster than in f32 (jaxlib 0.10.2,
# D=512 F=8192 B=2048, 2 cores of an AMX / AVX512-BF16 Xeon: 275-680 GFLOP/s against ~190 in f32).
# Others either fail at run time for some shapes ("Unsupported element type for DotThunk", e.g.
# "bmd,bc->mcd", "bmf,mfd->bmd") or run no faster than f32 ("bk,bf->kf": 105 GFLOP/s), so they are
# widened. tests/test_crosscoder.py runs every contraction of the model math both ways.
CPU_NATIVE_BF16 = frozenset({
    "bmd,mdf->bf", "bf,mdf->bmd", "bmd,bf->mdf",  # the encoder
    "bf,mfd->bmd", "bmd,mfd->bf", "bf,bmd->mfd",  # the decoder of a shared code
    "bmf,bmd->mfd",  # dW_dec of per-model codes
    "bmd,mcd->bc", "bc,mcd->bmd", "bc,bmd->mcd",  # sparse BatchTopK's auxk block
    "mcd,bmd->bc", "ck,bk->bc", "bc,ck->bk",
})


@functools.lru_cache(maxsize=None)
def cpu_has_bf16_units() -> bool:
    """Whether this host's CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16, from Linux's
    /proc/cpuinfo). Without them (e.g. AVX2 only) the native bf16 dots are unmeasured, so every
    contraction is widened to f32 as before."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def bf16_runs_natively(eq: str) -> bool:
    """Whether `bf16_product(eq, ...)` multiplies in bf16 on this backend: always on accelerators; on
    CPU only for the contractions of `CPU_NATIVE_BF16`, and only where the CPU has bf16 units."""
    if jax.default_backend() != "cpu":
        return True
    return eq.replace(" ", "") in CPU_NATIVE_BF16 and cpu_has_bf16_units()


def bf16_product(eq: str, x16: jax.Array, y16: jax.Array) -> jax.Array:
    """bf16 x bf16 -> f32 einsum. Where it does not run natively (`bf16_runs_natively`: on CPU), the
    bf16 values are widened to f32 first: f32 products of bf16 values are exact, so the result is
    the same up to summation order."""
    if not bf16_runs_natively(eq):
        return jnp.einsum(eq, x16.astype(jnp.float32), y16.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST,
                          preferred_element_type=jnp.float32)
    return jnp.einsum(eq, x16, y16, preferred_element_type=jnp.float32)


einsum_bf16.defvjp(_einsum_bf16_fwd, _einsum_bf16_bwd)


def matmul(cfg: CrossCoderConfig, eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum under the dtype policy: float32 at full precision, or bf16 inputs with f32 accumulation
    (forward and backward: `einsum_bf16`)."""
    if cfg.compute_dtype == "bfloat16":
        return einsum_bf16(eq, a, b)
    return jnp.einsum(eq, a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def safe_sqrt(s: jax.Array) -> jax.Array:
    """sqrt(s) for s >= 0 whose gradient at s = 0 is 0 instead of inf (so ||0|| has gradient 0,
    as torch's norm backward defines it, not NaN). Same values as jnp.sqrt."""
    ok = s > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, s, 1.0)), 0.0)
