"""Turn experiments/benchmark.py's JSON lines into a PNG (bar chart + table) and a Markdown table.

    python experiments/plot_benchmark.py --input=bench.jsonl --output=bench.png
    python experiments/plot_benchmark.py --input=bench.jsonl --output=bench.png --markdown=bench.md
    python experiments/plot_benchmark.py --input=bench.jsonl --reference=ref.jsonl --markdown=bench.md

`--reference` takes the JSON lines of the reference benchmark (`reference_bench.py train`: the paper's PyTorch
trainers timed on the same machine, in the same sitting): each configuration gets the reference's
tokens/s at the same size (S/M/L), architecture and k, and the ratio.

Bars: tokens/s per configuration, with each configuration's dense roofline (peak matmul FLOP/s of
the same run / dense FLOPs per token) as a tick; the table under it lists ms/step, fraction of the
roofline, selection share and load. Only lines of kind "step" are plotted.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import flags

from jaxcoders.cli.common import run_app, user_errors
from jaxcoders.perf.flops import BENCHMARK_SIZES

FLAGS = flags.FLAGS
flags.DEFINE_string("input", "bench.jsonl", "JSON lines written by experiments/benchmark.py --output.")
flags.DEFINE_string("output", "bench.png", "PNG to write.")
flags.DEFINE_string("markdown", "", "Also write the table as Markdown here.")
flags.DEFINE_string("title", "", "Figure title (default: device and date of the first record).")
flags.DEFINE_string("reference", "", "JSON lines of the reference trainers (reference_bench run.sh) timed in the "
                    "same sitting: adds their tokens/s and the ratio to each configuration.")

COLUMNS = ["config", "ms/step", "tokens/s", "roofline tokens/s", "× roofline", "peak GFLOP/s", "selection %",
           "memory MiB", "load"]
REFERENCE_COLUMNS = ["reference tokens/s", "× reference"]
_ARCH_OF_REFERENCE = {"l1": "l1", "btk": "batchtopk"}


def load_reference(path) -> dict:
    """{(size, arch, k): [tokens/s, ...]} from reference_bench JSON lines (errors and other modes skipped)."""
    out: dict = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if "error" in rec or rec.get("kind") not in _ARCH_OF_REFERENCE or not rec.get("tokens_per_s"):
            continue
        key = (rec.get("size"), _ARCH_OF_REFERENCE[rec["kind"]], rec.get("k"))
        out.setdefault(key, []).append(float(rec["tokens_per_s"]))
    if not out:
        raise ValueError(f"{path} holds no reference_bench training records (lines with kind l1/btk and tokens_per_s)")
    return out


def _at_preset_size(r: dict) -> bool:
    """Whether the record ran at its preset's (D, F, B) (not with --activation_dim/--dict_size/--batch_size)."""
    return (r.get("D"), r.get("F"), r.get("B")) == BENCHMARK_SIZES.get(r["preset"])


def reference_for(r: dict, ref: dict):
    """The median reference tokens/s for a record's (preset, arch, k), or None (also for a record
    whose sizes were overridden: the reference only runs the presets' sizes)."""
    if not _at_preset_size(r):
        return None
    vals = ref.get((r["preset"], r["arch"], r["k"] if r["arch"] == "batchtopk" else None))
    return sorted(vals)[len(vals) // 2] if vals else None


def load_records(path) -> list[dict]:
    recs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rec = json.loads(line)
            if rec.get("kind", "step") == "step":
                recs.append(rec)
    if not recs:
        raise ValueError(f"{path} holds no benchmark records of kind 'step'")
    return recs


def label(r: dict) -> str:
    parts = [r["preset"] if _at_preset_size(r) else f"D={r['D']} F={r['F']} B={r['B']}", r["arch"]]
    if r["arch"] == "batchtopk":
        parts += [f"k={r['k']}", r["decoder_path"], r["selection"]]
    if r.get("dtype") != "float32":
        parts.append(r["dtype"])
    if r.get("mesh", "1x1") != "1x1":
        parts.append(f"mesh {r['mesh']}")
    return " ".join(str(p) for p in parts)


def rows(recs: list[dict], ref: dict | None = None) -> list[list[str]]:
    out = []
    for r in recs:
        sel = r.get("selection_fraction")
        load = (r.get("loadavg_1m_start"), r.get("loadavg_1m_end"))
        mem = r.get("peak_memory_bytes")
        row = [
            label(r), f"{r['ms_per_step']:.0f}", f"{r['tokens_per_s']:,.0f}", f"{r['roofline_tokens_per_s']:,.0f}",
            f"{r['fraction_of_roofline']:.2f}", f"{1e3 * r['peak_tflops']:.0f}",
            "" if sel is None else f"{100 * sel:.1f}",
            "" if mem is None else f"{mem / 2**20:,.0f}",
            "" if load[0] is None else f"{load[0]:.1f}-{load[1]:.1f}",
        ]
        if ref is not None:
            t = reference_for(r, ref)
            row += ["" if t is None else f"{t:,.0f}", "" if t is None else f"{r['tokens_per_s'] / t:.2f}×"]
        out.append(row)
    return out


def markdown(recs: list[dict], ref: dict | None = None) -> str:
    cols = COLUMNS + (REFERENCE_COLUMNS if ref is not None else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(recs, ref)]
    return "\n".join(lines) + "\n"


def plot(recs: list[dict], out_png, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(recs)
    fig = plt.figure(figsize=(max(8.0, 1.3 * n + 3), 4.2 + 0.32 * n))
    ax = fig.add_axes([0.08, 0.42, 0.9, 0.5])
    xs = range(n)
    tok = [r["tokens_per_s"] for r in recs]
    roof = [r["roofline_tokens_per_s"] for r in recs]
    colors = ["#4c72b0" if r["arch"] == "l1" else "#dd8452" if r["arch"] == "batchtopk" else "#55a868" for r in recs]
    ax.bar(xs, tok, color=colors)
    ax.scatter(xs, roof, marker="_", s=900, color="black", label="dense roofline (same run)", zorder=3)
    for i, t in enumerate(tok):
        ax.text(i, t, f"{t:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label(r) for r in recs], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.legend(loc="upper left", fontsize=8)
    r0 = recs[0]
    ax.set_title(title or f"{r0['device_kind']} ({r0['backend']}, {r0['host_cpus']} CPUs) — {r0['date'][:10]}",
                 fontsize=10)
    tab = fig.add_axes([0.02, 0.0, 0.96, 0.3])
    tab.axis("off")
    widths = [0.3] + [0.1] * (len(COLUMNS) - 1)
    table = tab.table(cellText=rows(recs), colLabels=COLUMNS, loc="center", cellLoc="center", colWidths=widths)
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1.0, 1.2)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)


@user_errors
def main(argv):
    del argv
    recs = load_records(FLAGS.input)
    ref = load_reference(FLAGS.reference) if FLAGS.reference else None
    plot(recs, FLAGS.output, FLAGS.title)
    md = markdown(recs, ref)
    if FLAGS.markdown:
        Path(FLAGS.markdown).write_text(md)
    sys.stdout.write(md)


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
