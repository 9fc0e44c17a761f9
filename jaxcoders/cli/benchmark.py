"""Throughput of the full jitted train step: L1 vs BatchTopK vs tied, dense vs sparse paths.

    # the issue-8 comparison at the reference's size (D=512 F=8192 B=2048), side by side in one run
    python experiments/benchmark.py --preset=M --arch=l1,batchtopk --k=32,100 \\
        --decoder_mode=dense,sparse --steps=10 --output=bench.jsonl
    python experiments/plot_benchmark.py --input=bench.jsonl --output=bench.png
    # CI-sized smoke run
    python experiments/benchmark.py --preset=S --steps=3

For every combination of --preset x --arch x --k x --selection x --decoder_mode x --dtype x
--mesh (k, selection and decoder mode only vary for BatchTopK) the step is compiled, warmed up,
then timed step by step (block_until_ready after each, i.e. latency, no pipelining); all
configurations are timed **interleaved** in rounds (round r times every configuration once), so
a busy machine slows them alike, and each round also times the dense matmuls that define the
device's peak. Medians over rounds. The model state imitates late training: LR warm-up over,
theta updated every step and, for BatchTopK, a fraction `--dead_fraction` of the latents dead
(their counters past `dead_tokens_threshold`, their encoder bias so negative they never fire), so
auxk is active.

One JSON line per configuration (printed, and appended to --output):
  kind "step"; date (UTC ISO), command, backend, device_kind, device_count, host_cpus,
  loadavg_1m_start / loadavg_1m_end (os.getloadavg while this configuration's rounds ran),
  malloc_hugetlb (GLIBC_TUNABLES glibc.malloc.hugetlb=1 was active), jax_version;
  preset, arch, M, D, F (latents; tied: triples), B, k (null for L1/tied), selection,
  decoder_mode (requested), decoder_path (what ran: "dense"/"sparse"), dtype (matmul inputs), mesh
  ("DxL"), dead_fraction, num_dead (after the last step), steps (timed), warmup;
  ms_per_step (median), ms_per_step_min, ms_per_step_max, tokens_per_s (B / median);
  flops_dense (the dense step's matmul FLOPs: 5G for L1 and BatchTopK, 9G tied, with
  G = 2·B·(M·D)·F), flops_executed (matmul FLOPs this path runs: dense BatchTopK adds the dense
  auxk's 3G; sparse: G + 8·(k·B)·(M·D) + the compacted auxk), achieved_tflops (flops_executed /
  time), peak_tflops (the fastest of the dense matmuls of the step's shapes -- (B,MD)@(MD,F),
  (B,F)@(F,MD), (MD,B)@(B,F) in the step's dtype -- timed in the same rounds), peak_matmul (which),
  fraction_of_peak (achieved / peak), roofline_tokens_per_s (peak / (flops_dense / B), the dense
  roofline), fraction_of_roofline (tokens_per_s / roofline; > 1 means faster than any dense step),
  encoder_forward_ms (median of (B,MD)@(MD,F) alone), step_over_encoder_forward,
  selection_ms / selection_fraction (BatchTopK: the selection of the step's path timed alone on the
  step's own scores, median; fraction of ms_per_step), peak_memory_bytes and memory_source
  ("device" = memory_stats peak, "compiled" = XLA's buffer assignment: arguments + outputs -
  aliased + temporaries), host_max_rss_bytes (the process's max RSS so far), compile_s,
  loss_last.
With --loader, one extra line of kind "loader": the store-backed Loader alone (batches/s) and the
first configuration's step fed by it (prefetch overlapping compute) vs fed a resident batch
(loader_ms_per_batch, loader_tokens_per_s, step_ms_resident_batch, step_ms_with_loader,
loader_overhead_fraction). With --selection_only, only lines of kind "selection": each selection
implementation (implementation: batch_topk_mask | select_mask | select_entries; selection: the
method) timed alone on ReLU(normal) (B, F) scores (ms_median, ms_min, rounds).

Flags --hugepages (default on) re-executes the process with GLIBC_TUNABLES=glibc.malloc.hugetlb=1:
XLA:CPU allocates its large temporaries with malloc/mmap each step, and 4 KiB page faults on
them cost more than the arithmetic of the sparse ops (measured: a 256 MiB gather 200 ms -> 35 ms).
--host_devices=N sets XLA_FLAGS=--xla_force_host_platform_device_count=N for CPU mesh runs.
"""
from __future__ import annotations

import datetime
import itertools
import json
import os
import resource
import sys
import time
from pathlib import Path

from absl import app, flags

from jaxcoders.cli.common import run_app, user_errors

from jaxcoders.perf.flops import BENCHMARK_SIZES, dense_flops, executed_flops  # noqa: E402

PRESETS = BENCHMARK_SIZES  # D, F, B

FLAGS = flags.FLAGS
flags.DEFINE_list("preset", ["S"], f"Size presets {sorted(PRESETS)} (D, F, B).")
flags.DEFINE_list("arch", ["l1", "batchtopk"], "Architectures: l1, batchtopk, tied.")
flags.DEFINE_list("k", ["32"], "BatchTopK k values.")
flags.DEFINE_list("selection", ["topk"], "BatchTopK selection methods: topk, radix, pallas.")
flags.DEFINE_list("decoder_mode", ["auto"], "BatchTopK decoder modes: dense, sparse, auto.")
flags.DEFINE_list("dtype", ["float32"], "Matmul input dtypes: float32, bfloat16 (f32 accumulation).")
flags.DEFINE_list("mesh", ["1x1"], "Meshes DATAxLATENT (product = devices used).")
flags.DEFINE_integer("steps", 10, "Timed steps per configuration (= interleaved rounds).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("num_models", 2, "M.")
flags.DEFINE_integer("activation_dim", 0, "Override the preset's D.")
flags.DEFINE_integer("dict_size", 0, "Override the preset's F.")
flags.DEFINE_integer("batch_size", 0, "Override the preset's B.")
flags.DEFINE_float("dead_fraction", 0.05, "BatchTopK: fraction of latents dead (auxk active).")
flags.DEFINE_string("output", "", "Append the JSON lines to this file.")
flags.DEFINE_bool("hugepages", True, "Re-exec with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see docstring).")
flags.DEFINE_integer("host_devices", 0, "CPU: fake this many host devices (for --mesh).")
flags.DEFINE_bool("loader", False, "Also measure the ActivationStore Loader alone and overlapped.")
flags.DEFINE_bool("time_selection", True, "BatchTopK: time the selection alone.")
flags.DEFINE_bool("selection_only", False, "Only time the selection implementations (kind 'selection' lines): "
                  "selection.batch_topk_mask per --selection method vs the bracketed sparse.select_mask / "
                  "select_entries, on ReLU(normal) scores of shape (B, F) for each --k.")
flags.DEFINE_integer("seed", 0, "Seed.")

_REEXEC = "JAXCODERS_BENCHMARK_REEXEC"


def _maybe_reexec() -> None:
    """Environment that must be set before jax starts: hugepage malloc, fake host devices."""
    env = dict(os.environ)
    changed = False
    if FLAGS.hugepages and "glibc.malloc.hugetlb" not in env.get("GLIBC_TUNABLES", ""):
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
        changed = True
    if FLAGS.host_devices and "xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={FLAGS.host_devices}").strip()
        changed = True
    if changed and not env.get(_REEXEC) and "jax" not in sys.modules:
        env[_REEXEC] = "1"
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def _hugetlb_active() -> bool:
    return "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")


def _configs():
    out = []
    for preset, arch, dtype, mesh in itertools.product(FLAGS.preset, FLAGS.arch, FLAGS.dtype, FLAGS.mesh):
        if preset not in PRESETS:
            raise app.UsageError(f"--preset={preset}: choose from {sorted(PRESETS)}")
        if arch not in ("l1", "batchtopk", "tied"):
            raise app.UsageError(f"--arch={arch}: choose l1, batchtopk or tied")
        if arch == "batchtopk":
            for k, sel, mode in itertools.product(FLAGS.k, FLAGS.selection, FLAGS.decoder_mode):
                out.append(dict(preset=preset, arch=arch, k=int(k), selection=sel, decoder_mode=mode,
                                dtype=dtype, mesh=mesh))
        else:
            out.append(dict(preset=preset, arch=arch, k=None, selection=None, decoder_mode="dense",
                            dtype=dtype, mesh=mesh))
    return out


class Bench:
    """One configuration: its compiled step, state, batch, and timings."""

    def __init__(self, spec: dict, seed: int):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from jaxcoders.training import sharding as shd
        from jaxcoders.config import CrossCoderConfig, TrainConfig
        from jaxcoders.core.module import CrossCoder
        from jaxcoders.core.sparse_batchtopk import decoder_mode
        from jaxcoders.training.state import init_train_state, shard_train_state
        from jaxcoders.training.step import make_train_step

        self.spec = spec
        D, F, B = PRESETS[spec["preset"]]
        D = FLAGS.activation_dim or D
        F = FLAGS.dict_size or F
        B = FLAGS.batch_size or B
        M = FLAGS.num_models
        self.M, self.D, self.F, self.B = M, D, F, B
        arch = spec["arch"]
        self.cfg = CrossCoderConfig(M, D, F, architecture=arch, k=spec["k"], compute_dtype=spec["dtype"],
                                    norm_init_scale=1.0 if arch == "batchtopk" else None)
        self.tcfg = TrainConfig(warmup_steps=0, threshold_start_step=0,
                                selection_method=spec["selection"] or "topk",
                                decoder_mode=spec["decoder_mode"])
        data, latent = (int(v) for v in spec["mesh"].lower().split("x"))
        self.path = (decoder_mode(self.cfg, self.tcfg, B, num_devices=data * latent)
                     if arch == "batchtopk" else "dense")
        model = CrossCoder(self.cfg, rngs=nnx.Rngs(seed))
        state = init_train_state(model, self.tcfg)
        key = jax.random.key(seed + 1)
        self.n_dead = 0
        if arch == "batchtopk" and FLAGS.dead_fraction > 0:
            self.n_dead = int(round(FLAGS.dead_fraction * F))
            dead = jax.random.permutation(key, F)[: self.n_dead]
            b_enc = state.params.b_enc_F.at[dead].set(-1e4)  # never fires: stays dead
            counters = state.tokens_since_fired_F.at[dead].set(self.tcfg.dead_tokens_threshold)
            state = state._replace(params=state.params._replace(b_enc_F=b_enc), tokens_since_fired_F=counters)
        self.x = jax.random.normal(jax.random.fold_in(key, 1), (B, M, D), jnp.float32)
        self.k_t = jnp.asarray(spec["k"] or 0, jnp.int32)
        self.mesh = None
        if data * latent > 1:
            self.mesh = shd.make_mesh(data, latent, devices=jax.devices()[: data * latent])
            shd.check_shapes(self.cfg, B, self.mesh)
            state = shard_train_state(state, self.cfg, self.tcfg, self.mesh)
            self.x = shd.global_batch(jax.device_get(self.x), self.mesh)
        step = make_train_step(self.cfg, self.tcfg, mesh=self.mesh)
        t0 = time.perf_counter()
        self.compiled = step.lower(state, self.x, self.k_t).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory_bytes, self.memory_source = _memory(self.compiled)
        self.state = state
        self.times: list[float] = []
        self.load: list[float] = []
        self.metrics = None
        for _ in range(FLAGS.warmup):
            self.run_step()
        self.selection_fn = None
        self.sel_times: list[float] = []
        if arch == "batchtopk" and FLAGS.time_selection and self.mesh is None:
            self._setup_selection()

    def run_step(self) -> float:
        import jax

        t0 = time.perf_counter()
        self.state, self.metrics = self.compiled(self.state, self.x, self.k_t)
        jax.block_until_ready(self.metrics)
        return time.perf_counter() - t0

    def _setup_selection(self):
        import jax

        from jaxcoders.core.crosscoder import batchtopk_scores, code_normalization, encode_relu
        from jaxcoders.core.selection.candidates import select_entries, select_mask

        cfg, p = self.cfg, self.state.params
        scores = jax.jit(lambda p, x: batchtopk_scores(
            cfg, encode_relu(cfg, p, x), code_normalization(cfg, p.w_dec_MFD)))(p, self.x)
        k, method = cfg.k, self.tcfg.selection_method
        if self.path == "sparse":
            fn = jax.jit(lambda s: select_entries(s, k, method=method))
        else:
            fn = jax.jit(lambda s: select_mask(s, k, method=method))  # what losses.batchtopk_loss runs
        jax.block_until_ready(fn(scores))
        self.selection_fn, self.scores = fn, scores

    def time_selection(self):
        import jax

        if self.selection_fn is not None:
            t0 = time.perf_counter()
            jax.block_until_ready(self.selection_fn(self.scores))
            self.sel_times.append(time.perf_counter() - t0)

    def release(self):
        self.state = self.compiled = self.x = self.selection_fn = self.scores = None


def _memory(compiled):
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device"
    except Exception:
        pass
    try:
        ma = compiled.memory_analysis()
        total = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                 + ma.temp_size_in_bytes)
        return int(total), "compiled"
    except Exception:
        return None, None


class Peak:
    """Dense matmuls of a step's shapes in its dtype; the fastest defines the device's peak."""

    def __init__(self, M, D, F, B, dtype):
        import jax
        import jax.numpy as jnp

        K = M * D
        dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        prec = None if dtype == "bfloat16" else jax.lax.Precision.HIGHEST
        mm = jax.jit(lambda a, b: jnp.dot(a, b, precision=prec, preferred_element_type=jnp.float32))
        mmT = jax.jit(lambda a, b: jnp.dot(a.T, b, precision=prec, preferred_element_type=jnp.float32))
        key = jax.random.key(0)
        r = lambda i, s: jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32).astype(dt)  # noqa: E731
        self.flops = 2.0 * B * K * F
        self.cases = {
            "(B,MD)@(MD,F)": (mm, (r(0, (B, K)), r(1, (K, F)))),
            "(B,F)@(F,MD)": (mm, (r(2, (B, F)), r(3, (F, K)))),
            "(MD,B)@(B,F)": (mmT, (r(4, (B, K)), r(5, (B, F)))),
        }
        self.times = {n: [] for n in self.cases}
        for fn, args in self.cases.values():
            jax.block_until_ready(fn(*args))

    def run(self):
        import jax

        for name, (fn, args) in self.cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            self.times[name].append(time.perf_counter() - t0)

    def result(self):
        med = {n: _median(t) for n, t in self.times.items()}
        best = min(med, key=med.get)
        return self.flops / med[best], best, med["(B,MD)@(MD,F)"]


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _record(b: Bench, peak: Peak, common: dict) -> dict:
    import numpy as np

    med = _median(b.times)
    peak_flops, peak_name, enc_s = peak.result()
    M, D, F, B = b.M, b.D, b.F, b.B
    arch = b.spec["arch"]
    top_k_aux = b.tcfg.top_k_aux or D // 2
    fd = dense_flops(arch, M, D, F, B)
    fe = executed_flops(arch, b.path, M, D, F, B, b.spec["k"], b.n_dead, top_k_aux)
    metrics = {k: float(np.asarray(v)) for k, v in b.metrics.items()}
    tokens = B / med
    roofline = peak_flops / (fd / B)
    sel = _median(b.sel_times) if b.sel_times else None
    rec = dict(common)
    rec.update(
        kind="step", preset=b.spec["preset"], arch=arch, M=M, D=D, F=F, B=B, k=b.spec["k"],
        selection=b.spec["selection"], decoder_mode=b.spec["decoder_mode"], decoder_path=b.path,
        dtype=b.spec["dtype"], mesh=b.spec["mesh"],
        dead_fraction=FLAGS.dead_fraction if arch == "batchtopk" else None,
        num_dead=int(metrics.get("num_dead", 0)), steps=len(b.times), warmup=FLAGS.warmup,
        ms_per_step=round(1e3 * med, 2), ms_per_step_min=round(1e3 * min(b.times), 2),
        ms_per_step_max=round(1e3 * max(b.times), 2), tokens_per_s=round(tokens, 1),
        flops_dense=fd, flops_executed=fe, achieved_tflops=round(fe / med / 1e12, 4),
        peak_tflops=round(peak_flops / 1e12, 4), peak_matmul=peak_name,
        fraction_of_peak=round(fe / med / peak_flops, 3),
        roofline_tokens_per_s=round(roofline, 1), fraction_of_roofline=round(tokens / roofline, 3),
        encoder_forward_ms=round(1e3 * enc_s, 2), step_over_encoder_forward=round(med / enc_s, 2),
        selection_ms=round(1e3 * sel, 2) if sel is not None else None,
        selection_fraction=round(sel / med, 3) if sel is not None else None,
        peak_memory_bytes=b.memory_bytes, memory_source=b.memory_source,
        host_max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        compile_s=round(b.compile_s, 2), loss_last=metrics.get("loss"),
        loadavg_1m_start=round(b.load[0], 2) if b.load else None,
        loadavg_1m_end=round(b.load[-1], 2) if b.load else None,
    )
    return rec


def _common() -> dict:
    import jax

    dev = jax.devices()[0]
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(["python", "experiments/benchmark.py"] + sys.argv[1:]),
        backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
        host_cpus=os.cpu_count(), malloc_hugetlb=_hugetlb_active(), jax_version=jax.__version__,
    )


def _emit(rec: dict) -> None:
    line = json.dumps(rec, sort_keys=True)
    print(line, flush=True)
    if FLAGS.output:
        Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
        with open(FLAGS.output, "a") as fh:
            fh.write(line + "\n")


def _loader_record(b: Bench, common: dict) -> dict:
    """The store-backed Loader alone, and b's step fed by it vs by a resident batch."""
    import tempfile

    import jax
    import numpy as np

    from jaxcoders.data.loader import Loader
    from jaxcoders.data.store import ActivationStore

    B, M, D = b.B, b.M, b.D
    n_batches = max(8, FLAGS.steps)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        acts = rng.standard_normal((B * (n_batches + 4), M, D), dtype=np.float32)
        store = ActivationStore.create_from_arrays(str(Path(tmp) / "store"), acts)
        loader = Loader(store, B, prefetch=2, process_index=0, process_count=1)
        it = iter(loader)
        jax.block_until_ready(next(it))
        t0 = time.perf_counter()
        for _ in range(n_batches):
            jax.block_until_ready(next(it))
        load_s = (time.perf_counter() - t0) / n_batches
        loader.close()
        fixed = [b.run_step() for _ in range(n_batches)]
        it = iter(loader)
        x0 = b.x
        fed = []
        for _ in range(n_batches):
            t0 = time.perf_counter()
            b.x = next(it)  # the step blocks here; the loader's thread prefetches meanwhile
            b.run_step()
            fed.append(time.perf_counter() - t0)
        b.x = x0
        loader.close()
    rec = dict(common)
    rec.update(kind="loader", preset=b.spec["preset"], arch=b.spec["arch"], B=B, M=M, D=D,
               store_dtype=str(acts.dtype), loader_ms_per_batch=round(1e3 * load_s, 2),
               loader_tokens_per_s=round(B / load_s, 1), step_ms_resident_batch=round(1e3 * _median(fixed), 2),
               step_ms_with_loader=round(1e3 * _median(fed), 2),
               loader_overhead_fraction=round(_median(fed) / _median(fixed) - 1.0, 3),
               loadavg_1m=round(os.getloadavg()[0], 2))
    return rec


def _selection_only(common: dict) -> None:
    """Interleaved timing of every selection implementation at the preset's (B, F)."""
    import jax
    import jax.numpy as jnp

    from jaxcoders.core.selection.exact import batch_topk_mask
    from jaxcoders.core.selection.candidates import select_entries, select_mask

    for preset in FLAGS.preset:
        _, F, B = PRESETS[preset]
        F, B = FLAGS.dict_size or F, FLAGS.batch_size or B
        s = jax.nn.relu(jax.random.normal(jax.random.key(FLAGS.seed), (B, F), jnp.float32))
        cases = []
        for k, method in itertools.product([int(k) for k in FLAGS.k], FLAGS.selection):
            cases += [
                (k, method, "batch_topk_mask", jax.jit(lambda s, k=k, m=method: batch_topk_mask(s, k, method=m))),
                (k, method, "select_mask", jax.jit(lambda s, k=k, m=method: select_mask(s, k, method=m))),
                (k, method, "select_entries", jax.jit(lambda s, k=k, m=method: select_entries(s, k, method=m))),
            ]
        for *_, fn in cases:
            jax.block_until_ready(fn(s))
        times = [[] for _ in cases]
        loads = []
        for _ in range(FLAGS.steps):
            loads.append(os.getloadavg()[0])
            for i, (*_, fn) in enumerate(cases):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(s))
                times[i].append(time.perf_counter() - t0)
        for (k, method, impl, _), t in zip(cases, times):
            rec = dict(common)
            rec.update(kind="selection", preset=preset, B=B, F=F, k=k, selection=method, implementation=impl,
                       ms_median=round(1e3 * _median(t), 2), ms_min=round(1e3 * min(t), 2), rounds=len(t),
                       loadavg_1m_start=round(loads[0], 2), loadavg_1m_end=round(loads[-1], 2))
            _emit(rec)


@user_errors
def main(argv):
    del argv
    _maybe_reexec()
    import jax

    common = _common()
    if FLAGS.selection_only:
        _selection_only(common)
        return
    specs = _configs()
    benches, peaks = [], {}
    for spec in specs:
        b = Bench(spec, FLAGS.seed)
        benches.append(b)
        key = (b.M, b.D, b.F, b.B, spec["dtype"])
        if key not in peaks:
            peaks[key] = Peak(*key)
        print(f"# compiled {spec} in {b.compile_s:.1f} s (path: {b.path})", file=sys.stderr, flush=True)
    for r in range(FLAGS.steps):
        for p in peaks.values():
            p.run()
        for b in benches:
            b.load.append(os.getloadavg()[0])
            b.times.append(b.run_step())
            b.time_selection()
        print(f"# round {r + 1}/{FLAGS.steps} load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    for b in benches:
        _emit(_record(b, peaks[(b.M, b.D, b.F, b.B, b.spec["dtype"])], common))
    if FLAGS.loader and benches:
        _emit(_loader_record(benches[0], common))
    del jax


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
