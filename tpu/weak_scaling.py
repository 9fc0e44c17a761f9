"""Weak scaling of the multi-host trainer on one machine: P local processes joined by
`jax.distributed` (the runtime a TPU pod uses), each with one CPU device and a fixed per-process
batch, running the real entry point `experiments/train.py` exactly as `tpu/run.sh` launches it.

    python tpu/weak_scaling.py --processes=1,2,4 --out=weak_scaling      # table + JSON lines

For each P the global batch is P × --per_process_batch and the mesh is data=P × latent=1 (pure
data parallelism: every step all-reduces the 2·M·D·F gradient over the P processes, on CPU through
gloo over localhost TCP). tokens/s is read from process 0's metrics.jsonl (the trainer's own
counter: tokens of the interval / wall time of the interval), the first interval (compilation)
left out, median of the rest. Ideal weak scaling keeps the step time constant, i.e. tokens/s
grows ×P — as long as there is a free core per process. Each process is pinned to one core
(`taskset`) and XLA:CPU to one thread, so runs with P > cores oversubscribe the machine and
measure time-sharing, not the runtime; the table says how many cores there were.

Data: an (N, M, D) .npy of planted synthetic activations (jaxcoders.toy.synthetic), written once
into --out; each process reads only its rows of every global batch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_acts(path: Path, n: int, d: int, seed: int) -> None:
    import numpy as np

    from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary

    planted = make_dictionary(SyntheticSpec(activation_dim=d, n_shared=4 * d, n_chat_only=d // 4,
                                            n_base_only=d // 4, seed=seed))
    acts, _ = planted.sample(n, seed=seed + 1)
    np.save(path, np.asarray(acts, np.float32))


def run_one(P: int, args, acts: Path, out: Path) -> dict:
    """Train with P processes; returns the measured row."""
    workdir = out / f"p{P}"
    shutil.rmtree(workdir, ignore_errors=True)
    flags = [f"--config={ROOT / 'experiments' / 'configs' / 'tiny.py'}", "--config.data.synthetic=False",
             f"--config.data.acts={acts}", f"--config.model.architecture={args.architecture}",
             f"--config.model.dict_size={args.dict_size}", f"--config.model.k={args.k}", f"--config.train.decoder_mode={args.decoder_mode}",
             f"--config.train.selection_method={args.selection_method}",
             f"--config.run.batch_size={P * args.per_process_batch}", f"--config.run.steps={args.steps}",
             f"--config.run.log_every={args.log_every}", "--config.run.eval_every=0",
             f"--config.run.checkpoint_every={10 * args.steps}", "--config.run.async_checkpoint=False",
             "--config.run.export=False", f"--workdir={workdir}"]
    port = _free_port()
    cores = os.cpu_count() or 1
    procs, logs = [], []
    t0 = time.time()
    for i in range(P):
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), CI="1",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false "
                             "intra_op_parallelism_threads=1",
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        if P > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(P), JAX_PROCESS_ID=str(i))
        cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), *flags]
        if args.pin and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(i % cores), *cmd]
        log = open(out / f"p{P}.worker{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    codes = [p.wait(timeout=args.timeout) for p in procs]
    for log in logs:
        log.close()
    wall = time.time() - t0
    if any(codes):
        bad = codes.index(next(c for c in codes if c))
        tail = (out / f"p{P}.worker{bad}.log").read_text()[-3000:]
        raise SystemExit(f"P={P}: worker {bad} exited with {codes[bad]}:\n{tail}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # first interval = compilation
    tok_s = statistics.median(rates)
    return {"processes": P, "cores": cores, "per_process_batch": args.per_process_batch,
            "global_batch": P * args.per_process_batch, "tokens_per_s": tok_s,
            "tokens_per_s_intervals": rates, "step_ms": 1000 * P * args.per_process_batch / tok_s,
            "wall_s": wall, "load_avg_1m": os.getloadavg()[0], "architecture": args.architecture,
            "activation_dim": args.activation_dim, "dict_size": args.dict_size, "decoder_mode": args.decoder_mode,
            "selection_method": args.selection_method,
            "gradient_mb": 2 * 2 * args.activation_dim * args.dict_size * 4 / 1e6,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(rows: list[dict]) -> str:
    base = rows[0]["tokens_per_s"] / rows[0]["processes"]
    lines = ["| processes | global batch | tokens/s | step ms | tokens/s per process | efficiency | load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        per = r["tokens_per_s"] / r["processes"]
        lines.append(f"| {r['processes']} | {r['global_batch']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                     f"{per:,.0f} | {per / base:.2f} | {r['load_avg_1m']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    ap.add_argument("--per_process_batch", type=int, default=1024)
    ap.add_argument("--activation_dim", type=int, default=256)
    ap.add_argument("--dict_size", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--architecture", default="batchtopk", choices=["batchtopk", "l1"])
    ap.add_argument("--decoder_mode", default="dense", choices=["dense", "sparse", "auto"],
                    help="BatchTopK decoder path; dense by default so that every P runs the same computation "
                         "(auto picks sparse on one CPU device only)")
    ap.add_argument("--selection_method", default="radix", choices=["topk", "radix", "pallas"],
                    help="BatchTopK selection (same mask for all; radix is the fastest on CPU)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log_every", type=int, default=10)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin process i to core i mod cores (taskset) and XLA:CPU to one thread")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=Path("weak_scaling"))
    args = ap.parse_args(argv)
    procs = [int(p) for p in args.processes.split(",")]
    if any(p < 1 for p in procs):
        ap.error("--processes must be positive integers")
    args.out.mkdir(parents=True, exist_ok=True)
    acts = args.out / f"acts_d{args.activation_dim}.npy"
    n = max(procs) * args.per_process_batch * 16
    if not acts.exists() or len(__import__("numpy").load(acts, mmap_mode="r")) < n:
        print(f"writing {n} synthetic activation pairs (D={args.activation_dim}) to {acts}", flush=True)
        _write_acts(acts, n, args.activation_dim, seed=0)
    rows = []
    with open(args.out / "weak_scaling.jsonl", "a") as f:
        for P in procs:
            print(f"P={P}: training {args.steps} steps, global batch {P * args.per_process_batch} ...", flush=True)
            row = run_one(P, args, acts, args.out)
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"P={P}: {row['tokens_per_s']:,.0f} tokens/s, {row['step_ms']:.1f} ms/step "
                  f"(load {row['load_avg_1m']:.1f})", flush=True)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
