"""experiments/accelerator_check.py at CPU sizes: the driver, the sections' checks (with a control
that must fail), the report, and bad input. On a GPU/TPU the same script runs the Gemma preset."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcoders.perf import accelerator as acc

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "accelerator_check.py"
TINY = dataclasses.replace(acc.SIZES["small"], name="tiny", D=16, F=256, B=64, k=4, eq=(16, 256, 64, 4), steps=2)


def _run(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_driver_runs_sections_in_subprocesses_and_writes_the_report(tmp_path):
    out = tmp_path / "acc"
    # step:2 = dense bf16 BatchTopK with a profile (step:3, the sparse one, profiles its chunk loops for
    # ~11 s on CPU; the sparse FLOP count is checked in test_benchmark)
    p = _run(f"--out={out}", "--size=small", "--sections=env,step:2")
    assert p.returncode == 0, p.stderr[-3000:]
    recs = acc.read_records(out)
    kinds = [r["kind"] for r in recs]
    assert kinds.count("env") == 1 and kinds.count("peak") == 3 and kinds.count("step") == 1
    env = next(r for r in recs if r["kind"] == "env")
    assert env["jaxlib"] and env["orbax_checkpoint"] and "torch" in env
    step = next(r for r in recs if r["kind"] == "step")
    assert (step["arch"], step["decoder_path"], step["dtype"], step["k"]) == ("batchtopk", "dense", "bfloat16", 8)
    assert step["ms_per_step"] > 0 and step["loss_finite"] and step["compiled_memory_bytes"] > 0
    assert step["step_over_encoder_forward"] > 0 and step["flops_executed"] == step["flops_dense"] * 8 / 5
    prof = next(r for r in recs if r["kind"] == "profile")
    assert prof["decoder_path"] == "dense" and prof["top_ops"] and prof["profiled_ms_total"] > 0
    md = (out / acc.MARKDOWN).read_text()
    assert "## Train step" in md and "Measured ceilings" in md and "did not finish" not in md
    assert md == acc.render_markdown(recs)  # the report is a function of the JSONL
    # the output directory is never reused
    p = _run(f"--out={out}", "--size=small", "--sections=env")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: --out=")


def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    out = tmp_path / "acc"
    script = tmp_path / "fake.py"  # a "section" that crashes, then one that works
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from jaxcoders.perf import accelerator as acc\n"
        "a = dict(x.split('=', 1) for x in sys.argv[1:])\n"
        "if a['--section'] == 'selection':\n"
        "    raise RuntimeError('boom in the selection section')\n"
        "acc.Recorder(Path(a['--out']), a['--section'])('env', device_kind='fake', backend='cpu')\n")
    failures = acc.drive(script, out, "small", ["selection", "env"], budget_s=60)
    assert failures == 1
    recs = acc.read_records(out)
    err = next(r for r in recs if r["kind"] == "error")
    assert err["what"] == "selection" and "RuntimeError: boom" in err["log_tail"]
    assert any(r["kind"] == "env" for r in recs)
    assert "Sections that did not finish" in (out / acc.MARKDOWN).read_text()
    # an exhausted budget skips what is left
    failures = acc.drive(script, tmp_path / "b", "small", ["env", "env"], budget_s=4)
    assert [r["kind"] for r in acc.read_records(tmp_path / "b") if r["kind"] == "skipped"] == ["skipped", "skipped"]


def test_selection_and_equivalence_checks_pass_and_a_control_fails(tmp_path, monkeypatch):
    acc.section_selection(TINY, acc.Recorder(tmp_path, "selection"))
    acc.section_equivalence(TINY, acc.Recorder(tmp_path, "equivalence"))
    checks = [r for r in acc.read_records(tmp_path) if r["kind"] == "check"]
    assert len(checks) == 18 + 9 and all(r["passed"] for r in checks), [r for r in checks if not r["passed"]]
    times = [r for r in acc.read_records(tmp_path) if r["kind"] == "selection_time"]
    assert {(r["implementation"], r["method"]) for r in times} == {
        (i, m) for i in ("batch_topk_mask", "select_entries") for m in ("topk", "radix", "pallas")}

    # control: a candidate selection that drops one entry must fail its checks, and only those
    import jaxcoders.core.selection.candidates as sparse

    real = sparse.select_entries

    def drop_one(*a, **kw):
        b, j, valid = real(*a, **kw)
        return b, j, valid.at[-1].set(False)

    monkeypatch.setattr(sparse, "select_entries", drop_one)
    ctl = tmp_path / "control"
    ctl.mkdir()
    acc.section_selection(TINY, acc.Recorder(ctl, "selection"))
    failed = {r["implementation"] for r in acc.read_records(ctl) if r["kind"] == "check" and not r["passed"]}
    assert failed == {"select_entries"}


@pytest.mark.parametrize("args,msg", [
    (["--sections=bogus"], "unknown section 'bogus'"),
    (["--sections=step:99"], "unknown step configuration"),
    (["--budget_s=0"], "--budget_s must be positive"),
    (["extra"], "unexpected arguments"),
])
def test_bad_input_gives_one_error_line(tmp_path, args, msg):
    p = _run(f"--out={tmp_path / 'o'}", "--size=small", *args)
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and msg in last, p.stderr
    assert not (tmp_path / "o" / acc.JSONL).exists()


def test_committed_device_results_match_their_report():
    """docs/results/<date>_<device>_run<i>/ hold a device run's JSONL and the markdown it rendered;
    the report is a function of the JSONL (so the committed tables are the measured numbers)."""
    runs = sorted((ROOT / "docs" / "results").glob("*/accelerator_check.jsonl"))
    assert runs, "no device results committed"
    for path in runs:
        md = (path.parent / acc.MARKDOWN).read_text()
        assert acc.render_markdown(acc.read_records(path.parent)) == md, path
    first = acc.read_records(runs[0].parent)
    env = next(r for r in first if r["kind"] == "env")
    assert env["backend"] == "gpu" and "H200" in env["device_kind"] and env["size"] == "gemma"
