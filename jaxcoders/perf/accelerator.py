"""The accelerator check: correctness and throughput of jaxcoders on one device, in one prepared run.

`experiments/accelerator_check.py` drives it. Every section runs in its own subprocess (a crash,
an out-of-memory or a compile failure costs that section only, and each process's peak device
memory is its own), under one wall-clock budget; sections append JSON lines to
`<out>/accelerator_check.jsonl` and the driver renders `<out>/accelerator_check.md` from them.

Sections, in the order they run (what matters most first):

* ``env``: device, versions, the measured ceilings: dense matmul rate in bf16 and in f32
  (`Precision.HIGHEST`) on n×n×n products, device-to-device copy bandwidth.
* ``selection``: at the size's (B, F) and k, every selection method (`topk`, `radix`, `pallas`),
  whole-matrix (`selection.batch_topk_mask`) and on candidates (`sparse.select_entries`), must
  give `lax.top_k`'s mask bit for bit, on ReLU(normal) scores, on scores with heavy ties
  straddling the cut, and with a traced k; then each is timed.
* ``step:<i>``: one train-step configuration each (`STEP_SPECS`): compile time, XLA's compiled
  memory, device peak memory, ms/step, tokens/s, executed matmul FLOP/s, the encoder forward
  alone (step / encoder-forward ratio).
* ``equivalence``: at a moderate size, the sparse BatchTopK loss, gradients and train steps
  against the dense ones; bf16 matmul inputs against f32 (`BF16_TOLERANCE`); the step jitted
  on a one-device mesh against the plain step; the sharded selection against the unsharded one.
* ``latent_scaling``: the Latent Scaling pass against a plain encode pass (same driver,
  device-resident batch).
* ``extraction``: a randomly initialised Gemma-2-2B-shaped model (same config, random weights,
  no download) through the real extraction into a local store, against bare forwards of the
  same model (`jaxcoders.extract.bench`).
* ``pytest``: the tests marked `accelerator` (`pytest -m accelerator`) on the device's backend.

Sizes: "gemma" (D=2304, F=73728, B=4096, k=100: the Gemma-2-2B preset) for accelerators,
"small" for CPU (the same code paths in seconds; CI runs it).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

JSONL = "accelerator_check.jsonl"
MARKDOWN = "accelerator_check.md"
LOG = "accelerator_check.log"
PYTEST_LOG = "pytest_accelerator.log"

# bf16 matmul inputs (f32 accumulation) against the f32 step on the same inputs and weights:
# relative error of the loss and relative L2 error of each gradient (‖g_bf16 − g_f32‖ / ‖g_f32‖).
# BatchTopK's gradient bound is looser: bf16 scores can move entries across the selection cut.
BF16_TOLERANCE = {"loss": 1e-2, "grad_l1": 0.1, "grad_batchtopk": 0.2}
# f32 sparse vs dense BatchTopK (same selection, other summation order)
SPARSE_TOLERANCE = {"loss": 1e-5, "grad": 1e-4, "params_after_steps": 1e-4}


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    D: int
    F: int
    B: int
    k: int
    matmul_n: int  # n of the n×n×n peak matmuls
    copy_mib: int  # bytes of the copy-bandwidth test
    eq: tuple  # (D, F, B, k) of the equivalence section
    steps: int  # timed steps per configuration
    extract_tokens: int  # tokens per dataset of the extraction benchmark (0 = skip)
    extract_model: str  # "gemma2-2b" or "tiny"


SIZES = {
    "gemma": Size("gemma", 2304, 73728, 4096, 100, 8192, 2048, (512, 16384, 2048, 32), 6, 131072, "gemma2-2b"),
    "small": Size("small", 64, 1024, 256, 8, 256, 16, (16, 256, 64, 4), 3, 2048, "tiny"),
}

# The train-step configurations timed (BatchTopK k = the size's k). Selection methods are compared
# on the sparse bf16 step (where selection is the largest share) and timed alone in "selection".
# profile=True also records the device's top kernels over 3 profiled steps (`top_device_ops`).
STEP_SPECS = (
    dict(arch="l1", dtype="bfloat16", profile=True),
    dict(arch="l1", dtype="float32"),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="dense", selection="topk", profile=True),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="sparse", selection="topk", profile=True),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="sparse", selection="radix"),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="sparse", selection="pallas"),
    dict(arch="batchtopk", dtype="float32", decoder_mode="dense", selection="topk"),
    dict(arch="batchtopk", dtype="float32", decoder_mode="sparse", selection="topk"),
)

SECTIONS = ("env", "selection", "steps", "equivalence", "latent_scaling", "extraction", "pytest")
# Wall-clock caps per section (s); "steps" is per configuration. The global budget cuts them shorter.
SECTION_CAP_S = {"env": 60, "selection": 120, "steps": 60, "equivalence": 160, "latent_scaling": 60,
                 "extraction": 150, "pytest": 150}


# ----------------------------------------------------------------------------- records


class Recorder:
    """Appends JSON lines (one record each) to `<out>/accelerator_check.jsonl` and echoes them."""

    def __init__(self, out: Path, section: str):
        self.path = Path(out) / JSONL
        self.section = section

    def __call__(self, kind: str, **fields) -> dict:
        rec = {"kind": kind, "section": self.section,
               "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        rec.update(fields)
        line = json.dumps(rec, sort_keys=True, default=_json_default)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        print(line, flush=True)
        return rec

    def check(self, name: str, passed: bool, **detail) -> bool:
        self("check", name=name, passed=bool(passed), **detail)
        return bool(passed)


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def read_records(out: Path) -> list[dict]:
    path = Path(out) / JSONL
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed process
                pass
    return recs


# ----------------------------------------------------------------------------- timing helpers


def _median(xs):
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
    return 2.0 * n**3 / _median(ts)


def copy_bandwidth(mib: int, reps: int = 10) -> float:
    """Bytes/s of y = x + 1 over `mib` MiB of f32 (bytes read + bytes written)."""
    import jax
    import jax.numpy as jnp

    n = mib * 2**20 // 4
    x = jax.random.normal(jax.random.key(1), (n,), jnp.float32)
    fn = jax.jit(lambda x: x + 1.0)
    t = _median(time_calls(fn, x, reps=reps, warmup=2))
    return 2.0 * n * 4 / t


# ----------------------------------------------------------------------------- sections


def section_env(size: Size, rec: Recorder) -> None:
    import jax

    info = dict(size=size.name, python=platform.python_version(), jax=jax.__version__,
                backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                device_count=jax.device_count(), host=platform.node(), host_cpus=os.cpu_count(),
                loadavg_1m=round(os.getloadavg()[0], 2))
    for mod in ("jaxlib", "flax", "optax", "orbax.checkpoint", "tensorstore", "numpy", "torch", "transformers"):
        try:
            m = __import__(mod, fromlist=["_"])
            info[mod.replace(".", "_")] = getattr(m, "__version__", "?")
        except Exception as e:  # not installed
            info[mod.replace(".", "_")] = f"missing ({type(e).__name__})"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                              "power.draw,temperature.gpu", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        pass
    if stats:
        info["device_memory_bytes"] = stats.get("bytes_limit")
    rec("env", **info)
    for dtype in ("bfloat16", "float32"):
        rate = matmul_rate(size.matmul_n, dtype)
        rec("peak", what=f"matmul_{dtype}", n=size.matmul_n, tflops=round(rate / 1e12, 3))
    bw = copy_bandwidth(size.copy_mib)
    rec("peak", what="copy", mib=size.copy_mib, gbytes_per_s=round(bw / 1e9, 1))


def _scores(kind: str, B: int, F: int, seed: int = 0):
    """ReLU(normal) scores, or 17 levels in [0, 1] (heavy ties straddling the cut)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(seed)
    if kind == "relu":
        return jax.nn.relu(jax.random.normal(key, (B, F), jnp.float32))
    return jnp.round(16 * jax.random.uniform(key, (B, F), jnp.float32)) / 16


def section_selection(size: Size, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp

    from jaxcoders.core.selection.exact import METHODS, batch_topk_mask
    from jaxcoders.core.selection.candidates import select_entries

    B, F, k = size.B, size.F, size.k

    def entries_mask(s, k, method, k_cap=None):
        b, j, valid = select_entries(s, k, method=method, k_cap=k_cap)
        return jnp.zeros((B, F), bool).at[b, j].max(valid)

    whole = {m: jax.jit(lambda s, m=m: batch_topk_mask(s, k, method=m)) for m in METHODS}
    cand = {m: jax.jit(lambda s, m=m: entries_mask(s, k, m)) for m in METHODS}
    traced = {m: jax.jit(lambda s, kt, m=m: batch_topk_mask(s, kt, k_cap=2 * k, method=m)) for m in METHODS}
    same = jax.jit(lambda a, b: (jnp.sum(a != b), jnp.sum(a)))
    for kind in ("relu", "levels"):
        s = _scores(kind, B, F)
        ref = whole["topk"](s)
        jax.block_until_ready(ref)
        for m in METHODS:
            for impl, fn, args in (("batch_topk_mask", whole[m], (s,)), ("select_entries", cand[m], (s,)),
                                   ("batch_topk_mask_traced_k", traced[m], (s, jnp.int32(k)))):
                try:
                    diff, n = (int(v) for v in same(fn(*args), ref))
                    rec.check(f"selection {impl} {m} == lax.top_k mask ({kind} scores)", diff == 0 and n == k * B,
                              B=B, F=F, k=k, scores=kind, method=m, implementation=impl, differing_entries=diff,
                              kept=n, expected_kept=k * B)
                except Exception as e:  # noqa: BLE001 - one method failing must not hide the others
                    rec.check(f"selection {impl} {m} == lax.top_k mask ({kind} scores)", False, method=m,
                              implementation=impl, scores=kind, error=_err(e))
    s = _scores("relu", B, F, seed=1)
    for m in METHODS:
        for impl, fn in (("batch_topk_mask", whole[m]), ("select_entries", cand[m])):
            try:
                ts = time_calls(fn, s, reps=5)
                rec("selection_time", B=B, F=F, k=k, method=m, implementation=impl,
                    ms_median=round(1e3 * _median(ts), 3), ms_min=round(1e3 * min(ts), 3))
            except Exception as e:  # noqa: BLE001
                rec("error", what=f"selection timing {impl} {m}", error=_err(e))


def _step_setup(size: Size, spec: dict, seed: int = 0):
    """(cfg, tcfg, path, state, x, k_t, n_dead) of one configuration at the size's shapes, imitating
    late training: warm-up over, theta updated, 5 % of BatchTopK latents dead (auxk active)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxcoders.config import CrossCoderConfig, TrainConfig
    from jaxcoders.core.module import CrossCoder
    from jaxcoders.core.sparse_batchtopk import decoder_mode
    from jaxcoders.training.state import init_train_state

    arch = spec["arch"]
    btk = arch == "batchtopk"
    k = spec.get("k", size.k) if btk else None
    cfg = CrossCoderConfig(2, spec.get("D", size.D), spec.get("F", size.F), architecture=arch, k=k,
                           compute_dtype=spec["dtype"], norm_init_scale=1.0 if btk else None)
    tcfg = TrainConfig(warmup_steps=0, threshold_start_step=0, selection_method=spec.get("selection", "topk"),
                       decoder_mode=spec.get("decoder_mode", "dense"))
    B = spec.get("B", size.B)
    path = decoder_mode(cfg, tcfg, B) if btk else "dense"
    state = init_train_state(CrossCoder(cfg, rngs=nnx.Rngs(seed)), tcfg)
    key = jax.random.key(seed + 1)
    n_dead = 0
    if btk:
        n_dead = int(round(0.05 * cfg.dict_size))
        dead = jax.random.permutation(key, cfg.dict_size)[:n_dead]
        state = state._replace(
            params=state.params._replace(b_enc_F=state.params.b_enc_F.at[dead].set(-1e4)),  # stays dead
            tokens_since_fired_F=state.tokens_since_fired_F.at[dead].set(tcfg.dead_tokens_threshold))
    x = jax.random.normal(jax.random.fold_in(key, 1), (B, 2, cfg.activation_dim), jnp.float32)
    return cfg, tcfg, path, state, x, jnp.asarray(k or 0, jnp.int32), n_dead


def section_step(size: Size, spec: dict, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcoders.perf.flops import dense_flops, executed_flops
    from jaxcoders.training.step import make_train_step

    cfg, tcfg, path, state, x, k_t, n_dead = _step_setup(size, spec)
    M, D, F, B = cfg.num_models, cfg.activation_dim, cfg.dict_size, x.shape[0]
    step = make_train_step(cfg, tcfg)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, k_t).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        state, metrics = compiled(state, x, k_t)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(size.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, x, k_t)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    peak_step = device_peak_bytes()
    # the encoder forward alone, (B, M·D) @ (M·D, F) in the step's dtype
    dt = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    prec = None if cfg.compute_dtype == "bfloat16" else jax.lax.Precision.HIGHEST
    w = state.params.w_enc_MDF.reshape(M * D, F).astype(dt)
    xb = x.reshape(B, M * D).astype(dt)
    del state
    enc = jax.jit(lambda a, b: jnp.dot(a, b, precision=prec, preferred_element_type=jnp.float32))
    enc_s = _median(time_calls(enc, xb, w, reps=5, warmup=2))
    med = _median(times)
    fd = dense_flops(cfg.architecture, M, D, F, B)
    fe = executed_flops(cfg.architecture, path, M, D, F, B, cfg.k, n_dead, tcfg.top_k_aux or D // 2)
    rec("step", arch=cfg.architecture, dtype=cfg.compute_dtype, decoder_mode=tcfg.decoder_mode, decoder_path=path,
        selection=tcfg.selection_method if cfg.is_batchtopk else None, k=cfg.k if cfg.is_batchtopk else None,
        M=M, D=D, F=F, B=B, num_dead=int(metrics.get("num_dead", 0)), steps=len(times),
        ms_per_step=round(1e3 * med, 3), ms_per_step_min=round(1e3 * min(times), 3),
        ms_per_step_max=round(1e3 * max(times), 3), tokens_per_s=round(B / med, 1),
        flops_dense=fd, flops_executed=fe, achieved_tflops=round(fe / med / 1e12, 3),
        dense_equivalent_tflops=round(fd / med / 1e12, 3),
        encoder_forward_ms=round(1e3 * enc_s, 3), encoder_forward_tflops=round(2.0 * B * M * D * F / enc_s / 1e12, 3),
        step_over_encoder_forward=round(med / enc_s, 3), compile_s=round(compile_s, 2),
        compiled_memory_bytes=compiled_bytes(compiled), device_peak_bytes=peak_step,
        loss=metrics.get("loss"), loss_finite=bool(np.isfinite(metrics.get("loss", np.nan))))
    if spec.get("profile"):
        hlo = rec.path.parent / f"hlo_{cfg.architecture}_{cfg.compute_dtype}_{path}.txt"
        hlo.write_text(compiled.as_text())  # the op names of the profile below refer to this
        _, _, _, state, _, _, _ = _step_setup(size, spec)
        holder = [state]

        def run():
            holder[0], m = compiled(holder[0], x, k_t)
            jax.block_until_ready(m)

        run()
        ops = top_device_ops(run)
        rec("profile", arch=cfg.architecture, dtype=cfg.compute_dtype, decoder_path=path,
            selection=tcfg.selection_method if cfg.is_batchtopk else None, ms_per_step=round(1e3 * med, 3),
            top_ops=ops, profiled_ms_total=round(sum(o["ms_per_call"] for o in ops), 3))


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


def _rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    import numpy as np

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / den) if den > 0 else float(np.linalg.norm(a - b))


def section_equivalence(size: Size, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcoders.training import sharding as shd
    from jaxcoders.core.losses import batchtopk_loss, l1_loss
    from jaxcoders.core.selection.exact import batch_topk_mask, batch_topk_mask_sharded
    from jaxcoders.core.sparse_batchtopk import batchtopk_loss_sparse
    from jaxcoders.training.step import make_train_step
    from jaxcoders.training.state import shard_train_state

    D, F, B, k = size.eq
    base = dict(D=D, F=F, B=B, k=k)

    def loss_grads(loss_fn, cfg, tcfg, state, x, *extra):
        """(loss, aux), grads; `extra` arguments are closed over (k stays a static int)."""
        fn = jax.jit(lambda p, x: jax.value_and_grad(loss_fn, argnums=2, has_aux=True)(cfg, tcfg, p, x, *extra))
        return fn(state.params, x)

    # 1. sparse == dense (f32): loss, every gradient, and 3 train steps
    spec = dict(base, arch="batchtopk", dtype="float32", decoder_mode="dense")
    cfg, tcfg, _, state, x, k_t, _ = _step_setup(size, spec)
    (ld, auxd), gd = loss_grads(batchtopk_loss, cfg, tcfg, state, x, state.tokens_since_fired_F, k)
    (ls_, auxs), gs = loss_grads(batchtopk_loss_sparse, cfg, tcfg, state, x, state.tokens_since_fired_F, k)
    g_err = {n: _rel(a, b) for n, a, b in zip(gd._fields, gs, gd)}
    loss_err = abs(float(ls_) - float(ld)) / abs(float(ld))
    rec.check("sparse BatchTopK loss and gradients == dense (f32)",
              loss_err <= SPARSE_TOLERANCE["loss"] and max(g_err.values()) <= SPARSE_TOLERANCE["grad"],
              **base, loss_rel_err=loss_err, grad_rel_err=g_err, auxk_dense=float(auxd.auxk),
              auxk_sparse=float(auxs.auxk), num_dead=int(auxd.num_dead), tolerance=SPARSE_TOLERANCE)

    def train(mode, mesh=None, steps=3):
        c, t, _, st, _, kt, _ = _step_setup(size, dict(spec, decoder_mode=mode))
        if mesh is not None:
            st = shard_train_state(st, c, t, mesh)
        step = make_train_step(c, t, mesh=mesh)
        xs = jax.random.normal(jax.random.key(7), (steps, B, 2, D))
        losses = []
        for i in range(steps):
            xi = xs[i] if mesh is None else shd.global_batch(np.asarray(xs[i]), mesh)
            st, m = step(st, xi, kt)
            losses.append(float(m["loss"]))
        return st, losses

    st_d, l_d = train("dense")
    st_s, l_s = train("sparse")
    p_err = {n: _rel(a, b) for n, a, b in zip(st_d.params._fields, st_s.params, st_d.params)}
    rec.check("sparse BatchTopK train steps == dense (f32, 3 steps)",
              max(p_err.values()) <= SPARSE_TOLERANCE["params_after_steps"]
              and np.allclose(l_s, l_d, rtol=SPARSE_TOLERANCE["loss"] * 10),
              **base, losses_dense=l_d, losses_sparse=l_s, params_rel_err=p_err)

    # 2. one-device mesh == plain step (the meshed jit path: shardings, shard_map selection)
    mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
    for mode in ("dense", "sparse"):
        st_m, l_m = train(mode, mesh=mesh)
        ref_st, ref_l = (st_d, l_d) if mode == "dense" else (st_s, l_s)
        errs = {n: _rel(a, b) for n, a, b in zip(ref_st.params._fields, st_m.params, ref_st.params)}
        bitwise = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(st_m.params, ref_st.params))
        rec.check(f"step on a 1x1 mesh == plain step (BatchTopK {mode}, 3 steps)", max(errs.values()) <= 1e-5,
                  **base, bitwise=bitwise, params_rel_err=errs, losses=l_m, losses_plain=ref_l,
                  note="one device: the meshed code path, not a multi-device partition (8 CPU devices in CI)")
    s = _scores("levels", B, F, seed=3)
    ref = batch_topk_mask(s, k)
    for m in ("radix", "pallas", "topk"):
        try:
            got = batch_topk_mask_sharded(s, k, mesh=mesh, method=m)
            rec.check(f"sharded selection ({m}, 1x1 mesh) == batch_topk_mask", bool(jnp.array_equal(got, ref)),
                      B=B, F=F, k=k, method=m)
        except Exception as e:  # noqa: BLE001
            rec.check(f"sharded selection ({m}, 1x1 mesh) == batch_topk_mask", False, method=m, error=_err(e))

    # 3. bf16 matmul inputs within BF16_TOLERANCE of f32 (L1 and BatchTopK, loss and gradients)
    for arch in ("l1", "batchtopk"):
        out = {}
        for dtype in ("float32", "bfloat16"):
            c, t, _, st, xx, _, _ = _step_setup(size, dict(base, arch=arch, dtype=dtype))
            if arch == "l1":
                out[dtype] = loss_grads(l1_loss, c, t, st, xx, jnp.float32(t.l1_coefficient))
            else:
                out[dtype] = loss_grads(batchtopk_loss, c, t, st, xx, st.tokens_since_fired_F, k)
        (lf, _), gf = out["float32"]
        (lb, _), gb = out["bfloat16"]
        loss_err = abs(float(lb) - float(lf)) / abs(float(lf))
        g_err = {n: _rel(a, b) for n, a, b in zip(gf._fields, gb, gf)}
        g_tol = BF16_TOLERANCE["grad_l1" if arch == "l1" else "grad_batchtopk"]
        rec.check(f"bf16 matmul inputs within tolerance of f32 ({arch})",
                  loss_err <= BF16_TOLERANCE["loss"] and max(g_err.values()) <= g_tol,
                  **base, arch=arch, loss_rel_err=loss_err, grad_rel_err=g_err,
                  tolerance={"loss": BF16_TOLERANCE["loss"], "grad": g_tol})


def section_latent_scaling(size: Size, rec: Recorder) -> None:
    from flax import nnx

    from jaxcoders.analysis import scaling as ls
    from jaxcoders.analysis import stream
    from jaxcoders.config import CrossCoderConfig
    from jaxcoders.core.module import CrossCoder

    cfg = CrossCoderConfig(2, size.D, size.F, architecture="batchtopk", k=size.k, norm_init_scale=1.0)
    model = CrossCoder(cfg, rngs=nnx.Rngs(0))
    B = size.B
    rows = [("encode", [stream.EncodeBaseline()]), ("encode+decode", [stream.EncodeBaseline(decode=True)]),
            ("latent_scaling", [ls.make_accumulator(cfg)]),
            ("latent_scaling+mirror", [ls.make_accumulator(cfg, mirror=True)])]
    steps = max(3, size.steps)
    res = {}
    for name, accs in rows:
        timer = stream.step_timer(model, accs, batch_size=B)
        t0 = time.perf_counter()
        timer(1)  # compiles
        compile_s = time.perf_counter() - t0
        sec = _median([timer(steps) / steps for _ in range(2)])
        res[name] = sec
        rec("latent_scaling", pass_=name, M=2, D=size.D, F=size.F, batch_size=B, ms_per_batch=round(1e3 * sec, 3),
            tokens_per_s=round(B / sec, 1), slowdown_vs_encode=round(sec / res["encode"], 3),
            first_call_s=round(compile_s, 2), device_peak_bytes=device_peak_bytes())


def _tiny_or_gemma_model(kind: str, out_dir: Path):
    """Save a randomly initialised causal LM + a locally trained tokenizer to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    words = _WORDS
    rng = __import__("random").Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(300)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<bos>", "<eos>",
                                                                                      "<unk>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    if kind == "gemma2-2b":  # the Gemma-2-2B architecture (google/gemma-2-2b's config), random weights
        config = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                              num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                              max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
                              final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        config = Gemma2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, bos_token_id=1,
                              eos_token_id=2, pad_token_id=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            model = Gemma2ForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return config, n_params, lines


_WORDS = ("the a of to and in is was for on that with as by model chat base token layer residual stream latent "
          "feature cross coder sparse dictionary activation learning train data user assistant question answer "
          "hello world time year people way day thing life school state family group country problem").split()


def section_extraction(size: Size, rec: Recorder) -> None:
    import tempfile

    import torch

    from jaxcoders.extract.bench import benchmark
    from jaxcoders.extract.config import ExtractConfig, dataset_specs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        config, n_params, lines = _tiny_or_gemma_model(size.extract_model, tmp / "model")
        build_s = time.perf_counter() - t0
        seq_len = 1024 if size.extract_model == "gemma2-2b" else 64
        n_docs = max(8, size.extract_tokens // seq_len + 8)
        rng = __import__("random").Random(1)
        with open(tmp / "text.jsonl", "w") as fh:
            for _ in range(n_docs):  # every document longer than seq_len tokens
                fh.write(json.dumps({"text": " ".join(rng.choice(_WORDS) for _ in range(seq_len * 2))}) + "\n")
        layer = config.num_hidden_layers // 2
        specs = dataset_specs(str(tmp / "text.jsonl"), text_column="text", max_tokens=str(size.extract_tokens))
        model_dtype = "bfloat16" if device == "cuda" else "float32"
        cfg = ExtractConfig(base_model=str(tmp / "model"), chat_model=str(tmp / "model"), layer=layer,
                            datasets=specs, out="unused", seq_len=seq_len, batch_size=16 if device == "cuda" else 4,
                            dtype="bfloat16", model_dtype=model_dtype, device=device, progress=False)
        res = benchmark(cfg, repeats=1)
        rec("extraction", model=size.extract_model, params=n_params, build_model_s=round(build_s, 1),
            base_and_chat="the same random model twice", **{k: v for k, v in res.items() if k != "extract_run"},
            extract_wall_s=res["extract_run"].get("wall_s"))


def section_pytest(size: Size, rec: Recorder, out: Path, timeout: float) -> None:
    root = Path(__file__).resolve().parents[2]
    import jax

    # "" = jax picks its default backend (the device); tests/conftest.py only sets "cpu" when unset
    env = dict(os.environ, JAX_PLATFORMS="")
    cmd = [sys.executable, "-m", "pytest", "-m", "accelerator", "-q", "-rfE", "-p", "no:cacheprovider",
           str(root / "tests")]
    t0 = time.perf_counter()
    with open(Path(out) / PYTEST_LOG, "w") as log:
        try:
            p = subprocess.run(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    tail = (Path(out) / PYTEST_LOG).read_text().strip().splitlines()[-1:] or [""]
    rec.check("pytest -m accelerator on the device", rc == 0, returncode=rc, summary=tail[0],
              wall_s=round(time.perf_counter() - t0, 1), backend=jax.default_backend())


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:500] if msg else ''}"


def run_section(name: str, size: Size, out: Path, timeout: float) -> None:
    """Run one section in this process (the driver's subprocess)."""
    rec = Recorder(out, name)
    if name == "env":
        section_env(size, rec)
    elif name == "selection":
        section_selection(size, rec)
    elif name.startswith("step:"):
        section_step(size, STEP_SPECS[int(name.split(":", 1)[1])], rec)
    elif name == "equivalence":
        section_equivalence(size, rec)
    elif name == "latent_scaling":
        section_latent_scaling(size, rec)
    elif name == "extraction":
        section_extraction(size, rec)
    elif name == "pytest":
        section_pytest(size, rec, out, timeout)
    else:
        raise ValueError(f"unknown section {name!r}; choose from {SECTIONS}")


# ----------------------------------------------------------------------------- driver


def expand_sections(sections) -> list[str]:
    out = []
    for s in sections:
        if s == "steps":
            out += [f"step:{i}" for i in range(len(STEP_SPECS))]
        elif s in SECTIONS:
            out.append(s)
        elif s.startswith("step:") and s[5:].isdigit() and int(s[5:]) < len(STEP_SPECS):
            out.append(s)
        elif s.startswith("step:"):
            raise ValueError(f"unknown step configuration {s!r}; choose step:0 … step:{len(STEP_SPECS) - 1}")
        else:
            raise ValueError(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    return out


def drive(script: Path, out: Path, size: str, sections, budget_s: float, env: Optional[dict] = None) -> int:
    """Run every section in a subprocess of `script --section=...` within `budget_s` seconds in all;
    then write the markdown report. Returns the number of failed checks and failed sections."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    rec = Recorder(out, "driver")
    child_env = dict(os.environ if env is None else env)
    root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, child_env.get("PYTHONPATH")]))
    child_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # each process takes what it uses
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    failures = 0
    log_path = out / LOG
    for name in expand_sections(sections):
        left = deadline - time.monotonic()
        cap = SECTION_CAP_S["steps" if name.startswith("step:") else name]
        if left < 5:
            rec("skipped", what=name, reason=f"budget of {budget_s:.0f} s spent")
            failures += 1
            continue
        timeout = min(cap, left)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(script), f"--section={name}", f"--size={size}", f"--out={out}",
               f"--section_timeout={timeout:.0f}"]
        with open(log_path, "a") as log:
            log.write(f"\n===== {name} (timeout {timeout:.0f} s)\n")
            log.flush()
            try:
                p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log, env=child_env, timeout=timeout)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        wall = time.perf_counter() - t0
        if rc != 0:
            failures += 1
            rec("error", what=name, returncode=rc, wall_s=round(wall, 1), log_tail=_tail(log_path, 6))
        else:
            rec("section", what=name, wall_s=round(wall, 1))
        print(f"# {name}: rc={rc} in {wall:.1f} s", file=sys.stderr, flush=True)
    recs = read_records(out)
    failures += sum(1 for r in recs if r["kind"] == "check" and not r["passed"])
    (out / MARKDOWN).write_text(render_markdown(recs))
    return failures


def _tail(path: Path, n: int) -> str:
    """The last `n` lines of the log's last section, ending at its last exception line if any."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text[text.rfind("\n===== "):].splitlines() if ln.strip()]
    exc = [i for i, ln in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln)]
    end = exc[-1] + 1 if exc else len(lines)
    return "\n".join(lines[max(0, end - n):end])[-1500:]


# ----------------------------------------------------------------------------- report


def _fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _gib(b):
    return "–" if b is None else f"{b / 2**30:.1f}"


def render_markdown(recs: list[dict]) -> str:
    """The report's tables from the JSON lines (also used to rebuild it from a committed JSONL)."""
    env = next((r for r in recs if r["kind"] == "env"), {})
    peaks = {r["what"]: r for r in recs if r["kind"] == "peak"}
    bf16 = peaks.get("matmul_bfloat16", {}).get("tflops")
    f32 = peaks.get("matmul_float32", {}).get("tflops")
    lines = [f"# Accelerator check: {env.get('device_kind', '?')} ({env.get('backend', '?')}), "
             f"{(env.get('time') or '')[:10]}", ""]
    lines.append(f"jax {env.get('jax', '?')}, jaxlib {env.get('jaxlib', '?')}, flax {env.get('flax', '?')}, "
                 f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, python "
                 f"{env.get('python', '?')}; size preset `{env.get('size', '?')}`; host load (1 min) "
                 f"{env.get('loadavg_1m', '?')}." + (f" nvidia-smi: {env['nvidia_smi']}." if env.get("nvidia_smi") else ""))
    lines.append("")
    if peaks:
        lines.append("Measured ceilings: dense matmul "
                     f"**{_fmt(bf16)} TFLOP/s bf16**, **{_fmt(f32)} TFLOP/s f32** (Precision.HIGHEST), "
                     f"n = {peaks.get('matmul_float32', {}).get('n', '?')}; copy "
                     f"{_fmt(peaks.get('copy', {}).get('gbytes_per_s'))} GB/s (read + write).")
        lines.append("")
    checks = [r for r in recs if r["kind"] == "check"]
    if checks:
        n_ok = sum(r["passed"] for r in checks)
        lines += [f"## Correctness on the device: {n_ok} of {len(checks)} checks passed", "",
                  "| check | result | detail |", "|---|---|---|"]
        for r in checks:
            detail = {k: v for k, v in r.items() if k not in ("kind", "section", "time", "name", "passed")}
            lines.append(f"| {r['name']} | {'pass' if r['passed'] else '**FAIL**'} | {_short(detail)} |")
        lines.append("")
    steps = [r for r in recs if r["kind"] == "step"]
    if steps:
        lines += ["## Train step", "",
                  "| arch | matmul dtype | decoder path | selection | ms/step | tokens/s | executed TFLOP/s "
                  "| × peak of dtype | dense-equivalent TFLOP/s | step / encoder fwd | device peak GiB | compiled GiB "
                  "| compile s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in steps:
            peak = bf16 if r["dtype"] == "bfloat16" else f32
            frac = r["achieved_tflops"] / peak if peak else None
            lines.append(
                f"| {r['arch']}{' k=' + str(r['k']) if r.get('k') else ''} | {r['dtype']} | {r['decoder_path']} "
                f"| {r.get('selection') or '–'} | {_fmt(r['ms_per_step'], 2)} | {_fmt(r['tokens_per_s'], 0)} "
                f"| {_fmt(r['achieved_tflops'])} | {_fmt(frac, 2)} | {_fmt(r['dense_equivalent_tflops'])} "
                f"| {_fmt(r['step_over_encoder_forward'], 2)} | {_gib(r.get('device_peak_bytes'))} "
                f"| {_gib(r.get('compiled_memory_bytes'))} | {_fmt(r['compile_s'])} |")
        s0 = steps[0]
        lines += ["", f"Shapes: M={s0['M']}, D={s0['D']}, F={s0['F']}, B={s0['B']}; 5 % of BatchTopK latents dead "
                  "(auxk active). Executed FLOPs count the matmuls the path runs (dense L1 5G, dense BatchTopK 8G, "
                  "sparse G + 8·k·B·M·D + the auxk block; G = 2·B·M·D·F); dense-equivalent = 5G / time.", ""]
    for r in (r for r in recs if r["kind"] == "profile"):
        sel_ = f", {r['selection']} selection" if r.get("selection") else ""
        lines += [f"### Profile: {r['arch']} {r['dtype']} {r['decoder_path']}{sel_} ({_fmt(r['ms_per_step'], 2)} ms/step)",
                  "", "| op / kernel | ms per step | calls per step |", "|---|---|---|"]
        for o in r["top_ops"]:
            lines.append(f"| `{o['op'].replace('|', '/')}` | {_fmt(o['ms_per_call'], 3)} | {_fmt(o['calls_per_step'], 1)} |")
        lines.append("")
    sel = [r for r in recs if r["kind"] == "selection_time"]
    if sel:
        lines += ["## Selection alone (ReLU(normal) scores)", "", "| implementation | method | ms (median) | ms (min) |",
                  "|---|---|---|---|"]
        for r in sel:
            lines.append(f"| {r['implementation']} | {r['method']} | {_fmt(r['ms_median'], 2)} | {_fmt(r['ms_min'], 2)} |")
        lines += ["", f"B={sel[0]['B']}, F={sel[0]['F']}, k={sel[0]['k']}.", ""]
    lsr = [r for r in recs if r["kind"] == "latent_scaling"]
    if lsr:
        lines += ["## Latent Scaling vs a plain encode pass", "", "| pass | ms per batch | tokens/s | × encode |",
                  "|---|---|---|---|"]
        for r in lsr:
            lines.append(f"| {r['pass_']} | {_fmt(r['ms_per_batch'], 2)} | {_fmt(r['tokens_per_s'], 0)} "
                         f"| {_fmt(r['slowdown_vs_encode'], 2)} |")
        lines += ["", f"BatchTopK crosscoder D={lsr[0]['D']}, F={lsr[0]['F']}, batch {lsr[0]['batch_size']}, f32, "
                  "device-resident batch (the pass's compute alone).", ""]
    ex = [r for r in recs if r["kind"] == "extraction"]
    if ex:
        r = ex[0]
        t = r["tok_per_s"]
        lines += ["## Extraction", "", "| | tokens/s |", "|---|---|",
                  f"| bare forwards, full models (both) | {_fmt(t['bare_full'], 0)} |",
                  f"| bare forwards to layer {r['layer']} (both) | {_fmt(t['bare_to_layer'], 0)} |",
                  f"| extraction into a local store | {_fmt(t['extract'], 0)} |", "",
                  f"Model: {r['model']} ({r['params'] / 1e9:.2f} B parameters, random weights, {r['model_dtype']}), "
                  f"{r['input_tokens']:,} tokens, seq_len {r['seq_len']}, batch {r['batch_size']}, device "
                  f"{r['device']}; overhead of extraction vs bare forwards to the layer "
                  f"{100 * r['overhead_vs_bare_to_layer']:.1f} %.", ""]
    bad = [r for r in recs if r["kind"] in ("error", "skipped")]
    if bad:
        lines += ["## Sections that did not finish", ""]
        for r in bad:
            lines.append(f"* `{r['what']}`: {r.get('returncode', r.get('reason', ''))} "
                         f"{(r.get('error') or r.get('log_tail') or '').splitlines()[-1:] if (r.get('error') or r.get('log_tail')) else ''}")
        lines.append("")
    return "\n".join(lines)


def _short(d: dict, limit: int = 300) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v[:6]) + ("…" if len(v) > 6 else "") + "]"
        return str(v)

    s = "; ".join(f"{k}={fmt(v)}" for k, v in d.items())
    s = s.replace("|", "/")
    return s if len(s) <= limit else s[: limit - 1] + "…"
