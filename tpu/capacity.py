"""Capacity planning on paper: memory, communication and throughput of a crosscoder train step on
TPU slices. Prints the tables of tpu/README.md ("Capacity planning").

    python tpu/capacity.py                 # the markdown block the README embeds
    python tpu/capacity.py --batch_size=8192
    python tpu/capacity.py --compiled      # the memory model against XLA's compiled step (below)
    python tpu/capacity.py --check_benchmark=bench.jsonl   # the model against measured steps

Timings here are ESTIMATES from shapes, published chip specifications and stated assumptions (the
ASSUMPTIONS dict below); no TPU step was timed. The memory model is calibrated against XLA:
`--compiled` AOT-compiles the real train step (`jaxcoders.train.make_train_step`) for every mesh
the tables list, on fake CPU devices without executing it (`jaxcoders.perf.aot`), and compares
XLA's per-device memory analysis with the planner's total (docs/accelerators.md has the table;
tests/test_tpu_scripts.py does the same at a reduced size).

Model of one step, with B tokens per step, M models, D d_model, F latents, mesh (data d, latent
l), n = d·l devices, P weights (2·M·D·F; the tied crosscoder 4·M·D·F: 3F encoder columns):
  * FLOPs: G = 2·B·M·D·F per (B, M·D) x (M·D, F) matmul. L1: 5G (encoder and decoder forward,
    dW_enc, dW_dec, d code). BatchTopK on a mesh of more than one device runs the dense path
    (`decoder_mode="auto"` picks it there; the sparse path of `jaxcoders.sparse` is exact on meshes
    but unmeasured) with its dense auxk decode and gradients: 8G. Tied: 9G. Split over n devices.
  * Per-device memory (what XLA's buffer assignment of the compiled step holds, fitted on the
    Gemma-2-2B and reduced sizes): the donated state, weights + Adam moments in f32 (12 B/param / l),
    and the batch (4·(B/d)·M·D); gradient-sized temporaries GRAD_BUFFERS[arch] · 4·P/l (the gradient,
    the clipped gradient, Adam's update before it is applied); activation temporaries
    ACT_BUFFERS[arch] · 4·(B/d)·(F_enc/l) (the (B, F) pre-activation, code, scores and their
    cotangents that are alive at once; F_enc = 3F for tied). XLA:CPU's buffer assignment is the
    reference here; TPU's may differ by its layouts and fusion decisions.
  * HBM traffic that the matmuls do not hide: the Adam update (read p, g, m, v; write p, m, v:
    28 B/param / l) and ~20 f32 passes over the (B/d, F/l) buffers.
  * Communication per device and step: the gradient all-reduce over "data" (ring: 2(d-1)/d ·
    4·P/l bytes); over "latent", two psums of the partial reconstruction (main and auxk decode,
    2(l-1)/l · 4·(B/d)·M·D bytes each), and the all-gather of the auxk per-token top-(D/2)
    candidates ((l-1)·(B/d)·(D/2)·8 bytes). The batch top-k itself uses histogram psums (KB).
  * Step time = compute + HBM-bound + communication, without overlap (conservative).
"""
from __future__ import annotations

import argparse
import dataclasses

ASSUMPTIONS = {
    "mxu_efficiency": 0.5,  # fraction of the bf16 peak reached by the step's matmuls (bf16 inputs)
    "f32_slowdown": 6.0,  # compute_dtype=float32 uses Precision.HIGHEST: ~6 bf16 MXU passes
    "hbm_efficiency": 0.7,  # fraction of the HBM bandwidth reached by elementwise/optimizer passes
    "bf_passes": 20,  # f32 passes over (B/d, F/l) per step (read or write)
    "usable_hbm": 0.9,  # fraction of HBM a program can use (runtime reserves the rest)
    "tokens_planned": 100e6,  # training tokens (the paper: 50M FineWeb + 50M LMSYS)
}


# Per-device temporaries of the compiled step, in units of the f32 gradient (4·P/l bytes) and of one
# f32 (B/d, F_enc/l) buffer: fitted to XLA's memory analysis of the real step (`--compiled`; the
# gradient-sized ones are exact multiples at every mesh with l = 1).
GRAD_BUFFERS = {"l1": 2, "batchtopk": 3, "tied": 2}
ACT_BUFFERS = {"l1": 2, "batchtopk": 3, "tied": 1}
ARCHS = ("l1", "batchtopk", "tied")


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # gcloud accelerator type
    label: str
    chips: int  # = JAX devices (v4 and v5p chips are one megacore device each)
    hosts: int
    hbm_gib: float  # per chip
    bf16_tflops: float  # per chip, published peak
    hbm_gbs: float  # per chip, published
    ici_gbs: float  # ASSUMED effective ring all-reduce bandwidth per chip along one mesh axis
    usd_chip_hour: float  # approximate on-demand list price (US regions); check the pricing page


SLICES = (
    Slice("v4-8", "v4-8", 4, 1, 32, 275, 1200, 100, 3.22),
    Slice("v5litepod-16", "v5e-16", 16, 4, 16, 197, 819, 100, 1.20),
    Slice("v5p-32", "v5p-32", 16, 4, 95, 459, 2765, 200, 4.20),
)


@dataclasses.dataclass(frozen=True)
class Model:
    label: str
    M: int
    D: int
    F: int

    @property
    def params(self) -> int:
        return 2 * self.M * self.D * self.F

    def weights(self, arch: str) -> int:
        """Trainable weights (the biases are negligible): the tied crosscoder has 3F encoder columns."""
        return 2 * self.params if arch == "tied" else self.params

    def encoder_width(self, arch: str) -> int:
        return 3 * self.F if arch == "tied" else self.F


MODELS = (
    Model("Gemma-2-2B pair (D = 2304, F = 73,728, M = 2)", 2, 2304, 73_728),
    Model("Llama-3.1-8B-sized pair (D = 4096, F = 131,072, M = 2)", 2, 4096, 131_072),
)

GIB = 2**30


def meshes(n_devices: int, devices_per_host: int):
    """(data, latent, supported): latent within one host is what the trainer supports today."""
    out = []
    latent = 1
    while latent <= n_devices:
        out.append((n_devices // latent, latent, latent <= devices_per_host))
        latent *= 2
    # keep the data-only, the balanced and the latent-only ends; drop redundant middles
    return [m for m in out if m[1] in (1, 2, devices_per_host, n_devices)]


def memory_estimate(m: Model, d: int, l: int, B: int, arch: str = "batchtopk") -> dict:
    """Per-device bytes of the compiled train step: state (weights + Adam, and the batch), gradient-
    sized temporaries, activation temporaries, total."""
    P = m.weights(arch)
    Bl = B / d
    state = 12 * P / l + 4 * Bl * m.M * m.D
    grads = GRAD_BUFFERS[arch] * 4 * P / l
    tmp = ACT_BUFFERS[arch] * 4 * Bl * m.encoder_width(arch) / l
    return dict(state=state, grads=grads, tmp=tmp, total=state + grads + tmp)


def step_flops(m: Model, B: int, arch: str = "batchtopk") -> float:
    """Matmul FLOPs of the step on a mesh: L1 5G, BatchTopK (dense path) 8G, tied 9G."""
    G = 2 * B * m.M * m.D * m.F
    return {"l1": 5, "batchtopk": 8, "tied": 9}[arch] * G


def step_estimate(m: Model, s: Slice, d: int, l: int, B: int, arch: str = "batchtopk") -> dict:
    a = ASSUMPTIONS
    P = m.weights(arch)
    Bl, Fl = B / d, m.F / l
    mem = memory_estimate(m, d, l, B, arch)
    mem_state, mem_grads, mem_tmp, total = mem["state"], mem["grads"], mem["tmp"], mem["total"]
    flops = step_flops(m, B, arch) / (d * l)
    t_mxu = flops / (a["mxu_efficiency"] * s.bf16_tflops * 1e12)
    hbm_bytes = 28 * P / l + a["bf_passes"] * 4 * Bl * Fl
    t_hbm = hbm_bytes / (a["hbm_efficiency"] * s.hbm_gbs * 1e9)
    bw = s.ici_gbs * 1e9
    t_data = 2 * (d - 1) / d * 4 * P / l / bw
    k_aux = m.D // 2
    t_latent = (2 * 2 * (l - 1) / l * 4 * Bl * m.M * m.D + (l - 1) * Bl * k_aux * 8) / bw
    step = t_mxu + t_hbm + t_data + t_latent
    step_f32 = a["f32_slowdown"] * t_mxu + t_hbm + t_data + t_latent
    tok_s = B / step
    hours = a["tokens_planned"] / tok_s / 3600
    return dict(
        state=mem_state, grads=mem_grads, tmp=mem_tmp, total=total,
        fits=total <= a["usable_hbm"] * s.hbm_gib * GIB,
        t_mxu=t_mxu, t_hbm=t_hbm, t_data=t_data, t_latent=t_latent, step=step,
        tok_s=tok_s, tok_s_f32=B / step_f32,
        read_host=tok_s * m.M * m.D * 2 / s.hosts,
        hours=hours, usd=hours * s.chips * s.usd_chip_hour,
    )


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def _k(x: float) -> str:
    return f"{x / 1e3:,.0f}k"


def tables(B: int) -> str:
    a = ASSUMPTIONS
    out = []
    out.append(f"Batch B = {B:,} tokens per step; memory in GiB per device; times in ms per step "
               f"(estimates; † = latent axis across hosts, not supported by the trainer yet).\n")
    for m in MODELS:
        out.append(f"**{m.label}**: {m.params / 1e9:.2f}B weights; weights + Adam "
                   f"{12 * m.params / GIB:.1f} GiB, gradients {4 * m.params / GIB:.1f} GiB unsharded.\n")
        out.append("| slice | mesh data×latent | weights + Adam | grads | temporaries | total / usable HBM "
                   "| MXU | HBM-bound | grad all-reduce | latent collectives | step | tokens/s | tokens/s (f32 matmuls) "
                   "| GCS read per host | 100M tokens |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in SLICES:
            for d, l, ok in meshes(s.chips, s.chips // s.hosts):
                e = step_estimate(m, s, d, l, B)
                usable = a["usable_hbm"] * s.hbm_gib * GIB
                mem = [_gib(e["state"]), _gib(e["grads"]), _gib(e["tmp"]),
                       f"{_gib(e['total'])} / {_gib(usable)}" + ("" if e["fits"] else " **does not fit**")]
                if e["fits"]:
                    perf = [_ms(e["t_mxu"]), _ms(e["t_hbm"]), _ms(e["t_data"]), _ms(e["t_latent"]), _ms(e["step"]),
                            _k(e["tok_s"]), _k(e["tok_s_f32"]), f"{e['read_host'] / 1e9:.2f} GB/s",
                            f"{e['hours']:.1f} h, ${e['usd']:,.0f}"]
                else:
                    perf = ["–"] * 9
                out.append("| " + " | ".join([s.label, f"{d}×{l}{'' if ok else ' †'}"] + mem + perf) + " |")
        out.append("")
    out.append("| activations (bf16) | bytes per token | 110M tokens (100M train + 10M validation) "
               "| GCS read per 100k tokens/s | checkpoint (weights + Adam) | export (f32 weights) |")
    out.append("|---|---|---|---|---|---|")
    for m in MODELS:
        bpt = m.M * m.D * 2
        out.append(f"| {m.label.split(' (')[0]} | {bpt:,} | {bpt * 110e6 / 1e12:.2f} TB "
                   f"| {bpt * 1e5 / 1e9:.2f} GB/s | {12 * m.params / 1e9:.1f} GB | {4 * m.params / 1e9:.1f} GB |")
    out.append("")
    out.append("Chip figures used: " + "; ".join(
        f"{s.label}: {s.chips} chips on {s.hosts} host(s), {s.hbm_gib:g} GiB HBM at {s.hbm_gbs:g} GB/s, "
        f"{s.bf16_tflops:g} TFLOP/s bf16, ~{s.ici_gbs:g} GB/s all-reduce bandwidth (assumed), "
        f"~${s.usd_chip_hour:.2f}/chip-hour on demand" for s in SLICES) + ".")
    return "\n".join(out) + "\n"


def mesh_list(slices=SLICES) -> dict[int, list[tuple[int, int]]]:
    """Every (data, latent) mesh the tables list, by device count."""
    out: dict[int, list[tuple[int, int]]] = {}
    for s in slices:
        for d, l, _ in meshes(s.chips, s.chips // s.hosts):
            if (d, l) not in out.setdefault(d * l, []):
                out[d * l].append((d, l))
    return out


def compiled_memory(m: Model, B: int, meshes_by_count: dict, archs=ARCHS, dtype: str = "bfloat16",
                    timeout: float = 1800) -> list[dict]:
    """XLA's per-device memory of the real train step, compiled (not run) for each mesh on fake CPU
    devices: one `python -m jaxcoders.perf.aot` process per device count. One dict per (arch, mesh)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    rows = []
    for n, ms in sorted(meshes_by_count.items()):
        cmd = [sys.executable, "-m", "jaxcoders.perf.aot", f"--devices={n}", f"--M={m.M}", f"--D={m.D}",
               f"--F={m.F}", f"--B={B}", "--meshes=" + ",".join(f"{d}x{l}" for d, l in ms),
               "--archs=" + ",".join(archs), f"--dtype={dtype}"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"AOT compilation failed for {n} devices: {p.stderr.strip().splitlines()[-1:]}")
        rows += [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return rows


def compiled_comparison(B: int, models=MODELS, archs=ARCHS, dtype: str = "bfloat16",
                        meshes_by_count=None) -> tuple[str, list[dict]]:
    """Markdown table: the planner's per-device memory next to XLA's compiled memory analysis, and
    the rows (with `ratio` = planner / XLA)."""
    meshes_by_count = meshes_by_count or mesh_list()
    out = [f"Per-device memory of the train step, B = {B:,}, {dtype} matmul inputs: the planner "
           "(`tpu/capacity.py`) against XLA's memory analysis of the compiled step (arguments + outputs − "
           "aliased + temporaries; `python tpu/capacity.py --compiled`).\n",
           "| model | arch | mesh data×latent | planner GiB | XLA GiB (args / temps) | planner / XLA |",
           "|---|---|---|---|---|---|"]
    rows = []
    for m in models:
        for r in compiled_memory(m, B, meshes_by_count, archs, dtype):
            est = memory_estimate(m, r["data"], r["latent"], B, r["arch"])["total"]
            r = dict(r, model=m.label.split(" (")[0], planner=est, ratio=est / r["total"])
            rows.append(r)
            out.append(f"| {r['model']} | {r['arch']} | {r['data']}×{r['latent']} | {est / GIB:.2f} "
                       f"| {r['total'] / GIB:.2f} ({r['argument'] / GIB:.2f} / {r['temp'] / GIB:.2f}) "
                       f"| {r['ratio']:.2f} |")
    worst = max(rows, key=lambda r: abs(r["ratio"] - 1))
    out.append(f"\nLargest disagreement: {abs(worst['ratio'] - 1) * 100:.0f} % ({worst['model']}, {worst['arch']}, "
               f"{worst['data']}×{worst['latent']}).")
    return "\n".join(out) + "\n", rows


def benchmark_check(path) -> tuple[str, list[dict]]:
    """The planner's model against experiments/benchmark.py records (one device, mesh 1x1):
    memory_estimate vs the measured peak memory, and the measured step time vs the time of the
    step's matmul FLOPs at the matmul peak measured in the same run (the planner's compute term
    with efficiency 1; its HBM and communication terms are what the ratio's excess holds)."""
    import json
    from pathlib import Path

    recs = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip().startswith("{")]
    recs = [r for r in recs if r.get("kind", "step") == "step" and r.get("mesh", "1x1") == "1x1"]
    if not recs:
        raise ValueError(f"{path} holds no single-device benchmark records of kind 'step'")
    out = ["| config | measured MiB | planner MiB | ratio | measured ms | FLOP model ms (at the run's peak) "
           "| measured / model |", "|---|---|---|---|---|---|---|"]
    rows = []
    for r in recs:
        m = Model(r["preset"], r["M"], r["D"], r["F"])
        mem = memory_estimate(m, 1, 1, r["B"], r["arch"])["total"]
        # what the step executes: benchmark.py's count (L1 5G; BatchTopK dense 8G, sparse G + the
        # entries' work); the planner's own step_flops plans the dense path
        flops = r.get("flops_executed") or step_flops(m, r["B"], r["arch"])
        model_ms = 1e3 * flops / (r["peak_tflops"] * 1e12)
        meas = r.get("peak_memory_bytes")
        row = dict(config=f"{r['preset']} {r['arch']}" + (f" k={r['k']} {r.get('decoder_path', '')}" if r.get("k") else "")
                   + (f" {r['dtype']}" if r.get("dtype", "float32") != "float32" else ""),
                   measured=meas, planner=mem, ratio=(meas / mem if meas else None),
                   ms=r["ms_per_step"], model_ms=model_ms, time_ratio=r["ms_per_step"] / model_ms)
        rows.append(row)
        meas_mib = "" if meas is None else f"{meas / 2**20:,.0f}"
        ratio = "" if meas is None else f"{meas / mem:.2f}"
        out.append(f"| {row['config']} | {meas_mib} | {mem / 2**20:,.0f} | {ratio} | {row['ms']:.0f} | "
                   f"{model_ms:.0f} | {row['time_ratio']:.2f} |")
    return "\n".join(out) + "\n", rows


def main() -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=2048)
    p.add_argument("--compiled", action="store_true",
                   help="compare the memory model with XLA's compiled step for every tabulated mesh "
                        "(exit 1 if any differs by more than 20 %%)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="with --compiled")
    p.add_argument("--check_benchmark", default="",
                   help="JSON lines of experiments/benchmark.py: the model against the measured steps")
    args = p.parse_args()
    if args.check_benchmark:
        try:
            text, _ = benchmark_check(args.check_benchmark)
        except (OSError, ValueError, KeyError) as e:
            print(f"error: --check_benchmark={args.check_benchmark}: {e}", file=sys.stderr)
            sys.exit(2)
        print(text, end="")
        return
    if args.batch_size < 1:
        print(f"error: --batch_size must be positive, got {args.batch_size}", file=sys.stderr)
        sys.exit(2)
    if args.compiled:
        text, rows = compiled_comparison(args.batch_size, dtype=args.dtype)
        print(text, end="")
        sys.exit(1 if any(abs(r["ratio"] - 1) > 0.2 for r in rows) else 0)
    print(tables(args.batch_size), end="")


if __name__ == "__main__":
    main()
