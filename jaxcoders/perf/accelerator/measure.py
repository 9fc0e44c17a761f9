"""Timing and memory helpers of the accelerator check: waited-for wall times, the matmul and copy
ceilings, XLA's compiled memory, the device's peak memory, a profile's top device ops."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def time_calls(fn: Callable, *args, reps: int = 5, warmup: int = 1) -> list[float]:
    """Wall seconds of `reps` calls of `fn(*args)`, each waited for (`block_until_ready`)."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def device_peak_bytes() -> Optional[int]:
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
        return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None
    except Exception:  # CPU: no memory stats
        return None


def compiled_bytes(compiled) -> Optional[int]:
    """XLA's buffer assignment of a compiled function: arguments + outputs − aliased + temporaries."""
    try:
        ma = compiled.memory_analysis()
        return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                   + ma.temp_size_in_bytes)
    except Exception:
        return None


def matmul_rate(n: int, dtype: str, reps: int = 10) -> float:
    """FLOP/s of an n×n×n product (bf16 inputs, or f32 at Precision.HIGHEST), f32 accumulation; fresh
    random inputs rotated over 3 pairs so no product runs on cached data."""
    import jax
    import jax.numpy as jnp

    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    prec = None if dtype == "bfloat16" else jax.lax.Precision.HIGHEST
    mm = jax.jit(lambda a, b: jnp.dot(a, b, precision=prec, preferred_element_type=jnp.float32))
    keys = jax.random.split(jax.random.key(0), 6)
    pairs = [(jax.random.normal(keys[2 * i], (n, n)).astype(dt), jax.random.normal(keys[2 * i + 1], (n, n)).astype(dt))
             for i in range(3)]
    for a, b in pairs:
        jax.block_until_ready(mm(a, b))
    ts = []
    for r in range(reps):
        a, b = pairs[r % 3]
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        ts.append(time.perf_counter() - t0)
    return 2.0 * n**3 / median(ts)


def copy_bandwidth(mib: int, reps: int = 10) -> float:
    """Bytes/s of y = x + 1 over `mib` MiB of f32 (bytes read + bytes written)."""
    import jax
    import jax.numpy as jnp

    n = mib * 2**20 // 4
    x = jax.random.normal(jax.random.key(1), (n,), jnp.float32)
    fn = jax.jit(lambda x: x + 1.0)
    t = median(time_calls(fn, x, reps=reps, warmup=2))
    return 2.0 * n * 4 / t


def top_device_ops(run: Callable[[], None], steps: int = 3, top: int = 15) -> list[dict]:
    """Profile `steps` calls of `run` with `jax.profiler` and sum the duration of each op/kernel name
    on the device (on CPU: XLA's host ops). Returns the `top` names by total time, ms per call."""
    import gzip
    import tempfile
    from collections import Counter

    import jax

    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                run()
        files = sorted(Path(tmp).rglob("perfetto_trace.json.gz"))
        if not files:
            raise RuntimeError("the profiler wrote no perfetto trace")
        with gzip.open(files[-1]) as fh:
            data = json.load(fh)
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs = {e["pid"]: str(e.get("args", {}).get("name", "")) for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in procs.items() if "/device:" in name}
    threads = {(e["pid"], e["tid"]): str(e.get("args", {}).get("name", "")) for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in device}
    # GPU/TPU: the "XLA Ops" lines (HLO op names) if the trace has them, else every device line but
    # the whole-module spans; CPU: XLA's host ops without Python frames and the runtime's own spans
    op_lines = {key for key, name in threads.items() if name.startswith("XLA Ops")}
    skip_lines = {key for key, name in threads.items() if name.startswith(("XLA Modules", "Steps", "Framework"))}
    total, count = Counter(), Counter()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name, key = e["name"], (e.get("pid"), e.get("tid"))
        if device:
            if e["pid"] not in device or (op_lines and key not in op_lines) or key in skip_lines:
                continue
        elif name.startswith("$") or any(t in name for t in ("PjRt", "Pjit", "ThunkExecutor")):
            continue
        total[name] += float(e["dur"])
        count[name] += 1
    return [{"op": name[:120], "ms_per_call": round(us / 1e3 / steps, 3), "calls_per_step": count[name] / steps}
            for name, us in total.most_common(top)]


def rel_error(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    import numpy as np

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / den) if den > 0 else float(np.linalg.norm(a - b))
