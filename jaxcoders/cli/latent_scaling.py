r"""Latent Scaling (docs/method.md §6): which chat-only latents are really chat-specific.

    python experiments/latent_scaling.py \
        --crosscoder=tests/fixtures/reference/batchtopk_crosscoder/model \
        --acts=tests/fixtures/reference/batchtopk_crosscoder/latent_scaling.npz --out=latent_scaling_out

`--crosscoder`: reference directory or training workdir (its export/ or final/), comma-separated
for several; activations from `--store=<ActivationStore url>` or `--acts=<(N,M,D) .npy | .npz>`.
Per crosscoder `<out>/<name>/` gets latent_scaling.parquet (β for every target, counts, ν, the
mirror probe's columns, Δnorm and tags), summary.json and plots (ν^ε vs ν^r of chat-only latents
with the paper's thresholds, Δnorm histogram). Prints one summary line per crosscoder.

Benchmark (tokens/s of a Latent Scaling pass vs a plain encode pass through the same driver,
end to end and for the compiled step alone; random model and data unless --crosscoder/--acts
are given; variants run round-robin and the median is reported):

    python experiments/latent_scaling.py --benchmark --bench_shape=16384,256,4096 --batch_size=1024
"""
from __future__ import annotations

import json
import time

from absl import app, flags

from jaxcoders.cli.common import run_app, user_errors
from jaxcoders.files import claim_output_dir

FLAGS = flags.FLAGS
flags.DEFINE_string("crosscoder", None, "Reference directory or workdir (export/ or final/); comma-separated for several.")
flags.DEFINE_string("store", None, "ActivationStore url.")
flags.DEFINE_string("acts", None, "(N, M, D) .npy file, or .npz holding x, instead of --store.")
flags.DEFINE_string("out", "latent_scaling_out", "Output directory (one subdirectory per crosscoder).")
flags.DEFINE_integer("batch_size", 4096, "Tokens per jitted step.")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Arithmetic of the pass (float64: 1e-5 checks).")
flags.DEFINE_integer("max_tokens", None, "Use only the first rows of the store.")
flags.DEFINE_string("latents", "all", "Latents to probe: all, chat-only, base-only, exclusive, shared, or "
                    "comma-separated indices.")
flags.DEFINE_bool("mirror", True, "Also probe along the base decoder row (base-only latents).")
flags.DEFINE_bool("plots", True, "Write PNG plots.")
flags.DEFINE_integer("mesh_latent", 1, "Devices on the mesh's latent axis (the rest shard tokens).")
flags.DEFINE_bool("progress", True, "Progress bar.")
flags.DEFINE_bool("overwrite", False, "Write into --out although it holds files that are not an analysis output "
                  "(nothing there is deleted).")
flags.DEFINE_bool("benchmark", False, "Time Latent Scaling against a plain encode pass instead.")
flags.DEFINE_string("bench_shape", "65536,256,4096", "N,D,F of the random benchmark problem.")
flags.DEFINE_float("bench_subset", 0.05, "Fraction of latents probed in the subset benchmark row.")
flags.DEFINE_integer("bench_steps", 5, "Steps per timing of the step alone (device-resident batch).")
flags.DEFINE_integer("bench_repeats", 5, "Timed repetitions per variant, round-robin (the median is reported).")


def run_benchmark(mesh):
    import jax
    import numpy as np

    from jaxcoders.analysis import inputs as cli
    from jaxcoders.analysis import scaling as ls
    from jaxcoders.analysis import stream
    from jaxcoders.config import CrossCoderConfig
    from jaxcoders.core.module import CrossCoder

    N, D, F = (int(v) for v in FLAGS.bench_shape.split(","))
    if FLAGS.crosscoder:
        model = stream.resolve_model(FLAGS.crosscoder.split(",")[0])
    else:
        from flax import nnx

        model = CrossCoder(CrossCoderConfig(num_models=2, activation_dim=D, dict_size=F), rngs=nnx.Rngs(0))
    cfg = stream.resolve_model(model)[0]
    if FLAGS.acts or FLAGS.store:
        acts = cli.open_activations(FLAGS.store, FLAGS.acts)[0]
    else:
        acts = np.random.default_rng(0).standard_normal((N, 2, cfg.activation_dim), dtype=np.float32)
    n = stream.num_rows(acts) if FLAGS.max_tokens is None else min(stream.num_rows(acts), FLAGS.max_tokens)
    rng = np.random.default_rng(1)
    subset = np.sort(rng.choice(cfg.dict_size, max(1, int(cfg.dict_size * FLAGS.bench_subset)), replace=False))
    rows = [
        ("encode", [stream.EncodeBaseline()]),
        ("encode+decode", [stream.EncodeBaseline(decode=True)]),
        ("latent_scaling", [ls.make_accumulator(cfg)]),
        ("latent_scaling+mirror", [ls.make_accumulator(cfg, mirror=True)]),
        (f"latent_scaling[{subset.size} latents]", [ls.make_accumulator(cfg, subset)]),
        (f"latent_scaling+mirror[{subset.size} latents]", [ls.make_accumulator(cfg, subset, mirror=True)]),
    ]
    dev = jax.devices()[0]
    for _, accs in rows:  # compile every variant first
        stream.run_pass(model, acts, accs, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, mesh=mesh,
                        max_rows=FLAGS.batch_size)
    timers = {name: stream.step_timer(model, accs, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, mesh=mesh)
              for name, accs in rows}
    times = {name: [] for name, _ in rows}
    step_times = {name: [] for name, _ in rows}
    for _ in range(FLAGS.bench_repeats):  # round-robin, so load changes on a shared machine hit all alike
        for name, accs in rows:
            t0 = time.perf_counter()
            stream.run_pass(model, acts, accs, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, mesh=mesh,
                            max_rows=n)
            times[name].append(time.perf_counter() - t0)
            step_times[name].append(timers[name](FLAGS.bench_steps) / FLAGS.bench_steps)
    best = {name: float(np.median(t)) for name, t in times.items()}  # median: robust to a shared machine
    step = {name: float(np.median(t)) for name, t in step_times.items()}
    base = n / best[rows[0][0]]
    base_step = step[rows[0][0]]
    for name, accs in rows:
        tps = n / best[name]
        mem = stream.step_memory(model, accs, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, mesh=mesh)
        print(json.dumps({
            "pass": name, "backend": jax.default_backend(), "device": dev.device_kind, "devices": len(mesh.devices.flat),
            "N": n, "M": cfg.num_models, "D": cfg.activation_dim, "F": cfg.dict_size, "batch_size": FLAGS.batch_size,
            "dtype": FLAGS.dtype, "seconds_median": round(best[name], 3), "seconds_min": round(min(times[name]), 3),
            "tokens_per_s": round(tps, 1),
            "slowdown_vs_encode": round(base / tps, 2),
            "step_only_tokens_per_s": round(FLAGS.batch_size / step[name], 1),
            "step_only_slowdown_vs_encode": round(step[name] / base_step, 2), "step_temp_MiB": round(mem["temp_size_in_bytes"] / 2**20, 2),
            "step_args_MiB": round(mem["argument_size_in_bytes"] / 2**20, 2),
            "date": time.strftime("%Y-%m-%d")}), flush=True)


@user_errors
def main(argv):
    del argv
    from jaxcoders.analysis import inputs as cli
    from jaxcoders.analysis import tables
    from jaxcoders.io.remote import local_output, shown

    mesh = cli.mesh_from_flags(FLAGS.mesh_latent)
    if FLAGS.benchmark:
        run_benchmark(mesh)
        return
    if not FLAGS.crosscoder:
        raise app.UsageError("--crosscoder is required (a reference directory or a training workdir)")
    claim_output_dir(FLAGS.out, "analysis", overwrite=FLAGS.overwrite)
    acts, _, _ = cli.open_activations(FLAGS.store, FLAGS.acts)
    for path in [p for p in FLAGS.crosscoder.split(",") if p.strip()]:
        name = cli.crosscoder_name(path)
        table, summary = tables.analyze(
            path, acts, batch_size=FLAGS.batch_size, usage=False, latents=FLAGS.latents, mirror=FLAGS.mirror,
            dtype=FLAGS.dtype, mesh=mesh, max_rows=FLAGS.max_tokens, nearest=False, progress=FLAGS.progress)
        summary.update(crosscoder=str(path), store=FLAGS.store, acts=FLAGS.acts)
        with local_output(FLAGS.out) as out:  # gs:// alike: written locally, uploaded at the end
            paths = tables.write_outputs(table, summary, out / name, plots=FLAGS.plots, stem="latent_scaling")
            print(tables.summary_line(summary, name))
            print(json.dumps({k: shown(v, out, FLAGS.out) for k, v in paths.items()}))


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
