"""Smoke test of experiments/benchmark.py (CI size, no timing assertions) and its plotting command."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]

STEP_KEYS = {
    "kind", "date", "command", "backend", "device_kind", "device_count", "host_cpus", "malloc_hugetlb", "jax_version",
    "preset", "arch", "M", "D", "F", "B", "k", "selection", "decoder_mode", "decoder_path", "dtype", "mesh",
    "dead_fraction", "num_dead", "steps", "warmup", "ms_per_step", "ms_per_step_min", "ms_per_step_max",
    "tokens_per_s", "flops_dense", "flops_executed", "achieved_tflops", "peak_tflops", "peak_matmul",
    "fraction_of_peak", "roofline_tokens_per_s", "fraction_of_roofline", "encoder_forward_ms",
    "step_over_encoder_forward", "selection_ms", "selection_fraction", "peak_memory_bytes", "memory_source",
    "host_max_rss_bytes", "compile_s", "loss_last", "loadavg_1m_start", "loadavg_1m_end",
}


def _plot(runner, *args):
    """experiments/plot_benchmark.py through the suite's fork server (conftest.cli_runner)."""
    rc, out, err = runner.run([str(ROOT / "experiments" / "plot_benchmark.py"), *args], cwd=ROOT,
                              env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def test_benchmark_smoke_and_plot(cli_runner, tmp_path):
    out = tmp_path / "bench.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--preset=S", "--steps=3", "--warmup=1",
           f"--output={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["arch"] for r in recs] == ["l1", "batchtopk"]
    for r in recs:
        assert STEP_KEYS <= set(r), STEP_KEYS - set(r)
        assert (r["D"], r["F"], r["B"], r["steps"]) == (256, 4096, 1024, 3)
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["peak_tflops"] > 0
        assert r["backend"] == "cpu" and r["malloc_hugetlb"] is True
    l1, btk = recs
    assert l1["flops_executed"] == l1["flops_dense"] == 5 * 2 * 1024 * 2 * 256 * 4096
    assert btk["decoder_path"] == "sparse" and btk["k"] == 32 and btk["num_dead"] > 0
    # the sparse path runs the dense encoder forward plus work over the k·B kept entries and auxk's block
    assert 2 * 1024 * 2 * 256 * 4096 < btk["flops_executed"] < btk["flops_dense"] * 8 / 5
    assert 0 < btk["selection_ms"]
    # stdout carries the same lines
    assert [json.loads(x)["arch"] for x in proc.stdout.splitlines() if x.startswith("{")] == ["l1", "batchtopk"]

    png, md = tmp_path / "bench.png", tmp_path / "bench.md"
    proc = _plot(cli_runner, f"--input={out}", f"--output={png}", f"--markdown={md}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert png.stat().st_size > 10_000
    assert md.read_text().count("\n") == 4 and "S batchtopk k=32 sparse topk" in md.read_text()

    # --reference: reference_bench lines (same size, arch, k) give each row its ratio; other sizes, k
    # and error lines are not matched
    ref = tmp_path / "ref.jsonl"
    ref.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "l1", "size": "S", "k": None, "tokens_per_s": 1000.0},
        {"kind": "btk", "size": "S", "k": 32, "tokens_per_s": 500.0},
        {"kind": "btk", "size": "S", "k": 32, "tokens_per_s": 700.0},
        {"kind": "btk", "size": "S", "k": 32, "tokens_per_s": 600.0},
        {"kind": "btk", "size": "M", "k": 32, "tokens_per_s": 1.0},
        {"kind": "btk", "size": "S", "k": 100, "error": "killed"}]) + "\nnot json\n")
    proc = _plot(cli_runner, f"--input={out}", f"--output={png}", f"--markdown={md}", f"--reference={ref}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = md.read_text().splitlines()
    assert table[0].endswith("| reference tokens/s | × reference |")
    for line, rec, ref_tps in zip(table[2:], recs, [1000.0, 600.0]):  # median of the three S k=32 lines
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-2] == f"{ref_tps:,.0f}" and cells[-1] == f"{rec['tokens_per_s'] / ref_tps:.2f}×"
    ref.write_text(json.dumps({"kind": "btk", "size": "S", "k": 32, "error": "x"}) + "\n")
    proc = _plot(cli_runner, f"--input={out}", f"--output={png}", f"--reference={ref}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_flop_accounting():
    from jaxcoders.perf import flops as benchmark

    G = 2.0 * 2048 * 2 * 512 * 8192
    assert benchmark.dense_flops("l1", 2, 512, 8192, 2048) == 5 * G
    assert benchmark.dense_flops("tied", 2, 512, 8192, 2048) == 9 * G
    assert benchmark.executed_flops("batchtopk", "dense", 2, 512, 8192, 2048, 32, 0, 256) == 8 * G
    sparse = benchmark.executed_flops("batchtopk", "sparse", 2, 512, 8192, 2048, 32, 0, 256)
    assert sparse == G + 8 * 32 * 2048 * 1024
    with_aux = benchmark.executed_flops("batchtopk", "sparse", 2, 512, 8192, 2048, 32, 400, 256)
    assert with_aux == sparse + 4 * 2 * 2048 * 1024 * 512  # the F/16 bucket holds 400 dead latents


def test_performance_doc_tables_are_generated():
    """Every benchmark table in docs/performance.md is the output of plot_benchmark's `markdown` for
    the JSON lines it names (committed under docs/results/), never edited by hand:
    `<!-- benchmark-table: <jsonl> [reference=<jsonl>] -->` ... `<!-- /benchmark-table -->`."""
    import re

    from jaxcoders.cli.plot_benchmark import load_records, load_reference, markdown

    doc = (ROOT / "docs" / "performance.md").read_text()
    blocks = re.findall(r"<!-- benchmark-table: (\S+)(?: reference=(\S+))? -->\n(.*?)<!-- /benchmark-table -->",
                        doc, re.S)
    assert blocks, "docs/performance.md has no generated benchmark table"
    for data, ref, table in blocks:
        want = markdown(load_records(ROOT / data), load_reference(ROOT / ref) if ref else None)
        assert table == want, f"the table of {data} is stale: regenerate it with experiments/plot_benchmark.py"


def test_records_with_overridden_sizes_are_labelled_by_size_and_get_no_reference():
    """--dict_size etc. keep the record's preset name: its label then shows the sizes, and it is not
    compared with the reference at the preset's size (control: the same record at M's sizes is)."""
    from jaxcoders.cli.plot_benchmark import label, reference_for

    ref = {("M", "batchtopk", 32): [900.0]}
    rec = dict(preset="M", arch="batchtopk", k=32, decoder_path="sparse", selection="topk", dtype="float32",
               D=512, F=16384, B=2048)
    assert label(rec) == "D=512 F=16384 B=2048 batchtopk k=32 sparse topk"
    assert reference_for(rec, ref) is None
    at_m = dict(rec, F=8192)
    assert label(at_m) == "M batchtopk k=32 sparse topk" and reference_for(at_m, ref) == 900.0
