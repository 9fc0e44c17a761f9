"""Capacity planning on paper: memory, communication and throughput of a BatchTopK crosscoder
train step on TPU slices. Prints the tables of tpu/README.md ("Capacity planning").

    python tpu/capacity.py                 # the markdown block the README embeds
    python tpu/capacity.py --batch_size=8192

Everything here is an ESTIMATE from shapes, published chip specifications and stated
assumptions (the ASSUMPTIONS dict below). No timing was measured: replace the compute column
with `experiments/benchmark.py` measurements (ms/step of one device) when they exist.

Model of one step (jaxcoders.train.make_train_step with jaxcoders.losses.batchtopk_loss), with
B tokens per step, M models, D d_model, F latents, P = 2·M·D·F weights, mesh (data d, latent l),
n = d·l devices:
  * FLOPs: the dense encoder and decoder matmuls, G = 2·B·M·D·F each. Forward 2G, backward 3G
    (dW_enc, dW_dec, df; no dx), and the auxk loss decodes a second dense (B, F) code: +1G
    forward, +2G backward. 8G in all (an L1 crosscoder: 5G). The BatchTopK code is sparse
    (k·B non-zeros) but the current step multiplies it densely.
  * Per-device memory: weights + Adam moments 12 B/param, gradients 4 B/param, both / l;
    temporaries: about 10 live f32 (B/d, F/l) buffers (pre-activation, code, scores, masks,
    auxk code, cotangents), 6 f32 (B/d, M, D) buffers, and bf16 copies of the weights (2 B/param / l).
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
    "bf_buffers_live": 10,  # f32 (B/d, F/l) buffers alive at the peak
    "bf_passes": 20,  # f32 passes over (B/d, F/l) per step (read or write)
    "bmd_buffers_live": 6,  # f32 (B/d, M, D) buffers alive at the peak
    "usable_hbm": 0.9,  # fraction of HBM a program can use (runtime reserves the rest)
    "tokens_planned": 100e6,  # training tokens (the paper: 50M FineWeb + 50M LMSYS)
}


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


def step_estimate(m: Model, s: Slice, d: int, l: int, B: int) -> dict:
    a = ASSUMPTIONS
    P = m.params
    Bl, Fl = B / d, m.F / l
    mem_state = 12 * P / l
    mem_grads = 4 * P / l
    mem_tmp = a["bf_buffers_live"] * 4 * Bl * Fl + a["bmd_buffers_live"] * 4 * Bl * m.M * m.D + 2 * P / l
    total = mem_state + mem_grads + mem_tmp
    G = 2 * B * m.M * m.D * m.F
    flops = 8 * G / (d * l)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=2048)
    args = p.parse_args()
    print(tables(args.batch_size), end="")


if __name__ == "__main__":
    main()
