"""The whole pipeline on gs:// against a local emulator (tests/gcs_emulator.py): extraction into a
gs:// store, training in a gs:// workdir killed with SIGKILL and resumed (its export equals an
uninterrupted local run, byte for byte), then analyze, collect-examples and report reading and
writing gs:// exactly like local paths; a missing gs:// crosscoder gives one error line."""
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("gcsfs", reason="gs:// paths need gcsfs (pip install 'jaxcoders[gcs]')")
pytest.importorskip("torch")
pytest.importorskip("datasets")

import extract_helpers as H  # noqa: E402
from gcs_emulator import gcs_emulator, list_objects, read_object  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"


def _env(gcs):
    return dict(os.environ, **gcs, HF_HUB_OFFLINE="1", CI="1", JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")


def _run(runner, script, *args, gcs, timeout=300, check=True):
    """`python experiments/<script> args` through the suite's fork server (conftest.cli_runner)."""
    rc, out, err = runner.run([str(EXP / script), *args], cwd=ROOT, env=_env(gcs), timeout=timeout)
    if check:
        assert rc == 0, f"{script} failed ({rc}):\n{err[-3000:]}"
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


TRAIN = ["--config=tiny", "--config.data.synthetic=False", "--config.run.steps=60", "--config.run.log_every=10",
         "--config.run.checkpoint_every=20", "--config.run.eval_every=0", "--config.run.async_checkpoint=False",
         "--config.model.dict_size=128", "--config.run.batch_size=128"]


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator(buckets=("bkt",)) as env:
        yield env


def test_extract_train_resume_analyze_examples_report_on_gcs(gcs, cli_runner, tmp_path):
    # 1. extraction into a gs:// store
    base, chat = H.build_tiny_model_pair(tmp_path / "models", arch="llama")
    text, chat_data = H.write_local_datasets(tmp_path / "data")
    store = "gs://bkt/acts/tiny"
    _run(cli_runner, "extract_activations.py", f"--base_model={base}", f"--chat_model={chat}", "--layer=1",
         f"--dataset={text},{chat_data}", "--text_column=text,", "--chat_column=,conversation",
         "--max_tokens=600", "--val_max_tokens=0", "--seq_len=32", "--dtype=float32", f"--out={store}", gcs=gcs)
    assert any(n.startswith("acts/tiny/") for n in list_objects(gcs, "bkt", "acts/tiny"))

    # 2. training in a gs:// workdir: SIGKILL after the first checkpoint, then the same command resumes
    args = TRAIN + [f"--config.data.store={store}"]
    ref_dir = tmp_path / "ref"
    _run(cli_runner, "train.py", *args, f"--workdir={ref_dir}", gcs=gcs)
    workdir = "gs://bkt/runs/tiny"
    job = cli_runner.start([EXP / "train.py", *args, f"--workdir={workdir}"], cwd=ROOT, env=_env(gcs))
    deadline = time.time() + 180
    while time.time() < deadline and job.rc is None:
        if any("/checkpoints/20/" in n for n in list_objects(gcs, "bkt", "runs/tiny/checkpoints")):
            break
        time.sleep(0.05)
    killed = job.rc is None
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert killed, "training finished before it could be killed"
    assert not any(n.startswith("runs/tiny/export/") for n in list_objects(gcs, "bkt", "runs/tiny"))
    p = _run(cli_runner, "train.py", *args, f"--workdir={workdir}", gcs=gcs)
    assert "done:" in p.stdout
    for name in ("model.safetensors", "config.json"):
        assert read_object(gcs, "bkt", f"runs/tiny/export/{name}") == (ref_dir / "export" / name).read_bytes(), name
    steps = [line for line in read_object(gcs, "bkt", "runs/tiny/metrics.jsonl").decode().splitlines() if line]
    assert len(steps) == len(set(steps)) and '"step": 59' in steps[-1]

    # 3. analysis, examples and the report on gs:// (crosscoder = the gs:// workdir)
    out = "gs://bkt/analysis"
    _run(cli_runner, "analyze.py", f"--crosscoder={workdir}", f"--store={store}", f"--out={out}", "--batch_size=256",
         gcs=gcs)
    _run(cli_runner, "collect_examples.py", f"--crosscoder={workdir}", f"--store={store}", f"--out={out}",
         "--batch_size=256", "--latents=all", gcs=gcs)
    p = _run(cli_runner, "report.py", f"--analysis={out}", gcs=gcs)
    names = set(list_objects(gcs, "bkt", "analysis/tiny/"))
    for f in ("latents.parquet", "summary.json", "examples.parquet", "examples.json", "report.html"):
        assert f"analysis/tiny/{f}" in names, (f, sorted(names))
    assert "gs://bkt/analysis/tiny/report.html" in p.stdout
    html = read_object(gcs, "bkt", "analysis/tiny/report.html").decode()
    assert "<html" in html.lower() and "latent" in html

    # 4. a missing crosscoder: one error line
    p = _run(cli_runner, "analyze.py", "--crosscoder=gs://bkt/runs/nope", f"--store={store}", f"--out={out}", gcs=gcs,
             check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: gs://bkt/runs/nope")


def test_reference_round_trip_on_gcs(gcs, fixtures_dir):
    import jaxcoders

    model = jaxcoders.load_reference(fixtures_dir / "batchtopk_crosscoder" / "model")
    jaxcoders.save_reference(model, "gs://bkt/exports/btk")
    again = jaxcoders.load_reference("gs://bkt/exports/btk")
    for a, b in zip(model.params, again.params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert again.cfg == model.cfg


def test_lock_and_export_rules_on_gcs(gcs):
    import jaxcoders
    from jaxcoders.files import OutputExistsError
    from jaxcoders.locks import DirectoryLock, LockHeld

    with DirectoryLock("gs://bkt/locked/run", what="training workdir"):
        assert "locked/run/.jaxcoders.lock" in list_objects(gcs, "bkt", "locked/")
        with pytest.raises(LockHeld, match="is in use"):
            DirectoryLock("gs://bkt/locked/run").acquire()
    assert "locked/run/.jaxcoders.lock" not in list_objects(gcs, "bkt", "locked/")
    # an export never lands among other objects, and never deletes them
    from etils import epath

    epath.Path("gs://bkt/mine/notes.txt").write_text("mine")
    from jaxcoders.config import CrossCoderConfig

    model = jaxcoders.CrossCoder(CrossCoderConfig(2, 4, 8, architecture="l1"))
    with pytest.raises(OutputExistsError, match="notes.txt"):
        jaxcoders.save_reference(model, "gs://bkt/mine")
    assert list_objects(gcs, "bkt", "mine/") == ["mine/notes.txt"]
