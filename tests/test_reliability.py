"""Careless and hostile use (docs/reliability.md): every case ends in one clear `error:` line (exit
status 2, no traceback, the inputs' bytes unchanged) or in the correct behaviour.

The command-line cases run as real subprocesses, several at a time (`results` below), after one
shared setup: a tiny `.npy` of activations, a workdir trained by the CLI (W0, 20 steps, checkpoints
at 10 and 20), a store, a tiny local model pair and datasets. Each case copies what it changes
into its own directory. The library-level cases (save_reference, load_reference, locks, output
directories, the loader) run in-process. The kill -9 and disk-full cases live in test_trainer.py,
test_train.py, test_extract.py and test_store.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "jaxcoders-test-datasets-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxcoders  # noqa: E402
from fork_runner import ForkRunner, in_repo_env  # noqa: E402
from jaxcoders.files import OutputExistsError, check_output_dir, claim_output_dir  # noqa: E402
from jaxcoders.locks import LOCK_NAME, DirectoryLock, LockHeld  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
TRAIN_FLAGS = ["--config=tiny", "--config.data.synthetic=False", "--config.run.steps=20",
               "--config.run.checkpoint_every=10", "--config.run.batch_size=64", "--config.model.dict_size=32",
               "--config.run.eval_every=10", "--config.run.log_every=10"]


def _env() -> dict:
    return in_repo_env()


RUNNERS: Optional[ForkRunner] = None  # the session's fork server (`cli_runner`), set by the `results` fixture


def _cli(argv: list, cwd, env: Optional[dict] = None) -> tuple[int, str, str]:
    """Run experiments/<argv[0]> with flags argv[1:] (a forked child of a preloaded server)."""
    return RUNNERS.run([str(EXP / argv[0]), *argv[1:]], cwd=cwd, env=env, timeout=600)


def _digest(paths) -> dict:
    """sha256 of every file under `paths` (directories recursively; hidden lock files aside)."""
    out = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.exists() else []
        for f in files:
            if f.name == LOCK_NAME:
                continue
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@dataclasses.dataclass
class Case:
    """One command-line case: `prepare(base, case_dir) -> argv` (script and flags), the expected exit
    status and message fragment, which paths must keep their bytes, and an optional check of the
    outcome `check(case_dir, stdout, stderr)`."""

    name: str
    prepare: Callable[[Path, Path], list]
    rc: int
    message: str
    inputs: Callable[[Path, Path], list] = lambda base, d: []
    check: Optional[Callable[[Path, str, str], None]] = None
    outcome: str = ""  # what a case with exit status 0 does (for docs/reliability.md)


def train(*flags) -> list:
    return ["train.py", *TRAIN_FLAGS, *flags]


def then(*effects):
    """The argv (the last item) after the side effects before it (already evaluated): lets a case's
    `prepare` write its inputs in one expression."""
    return effects[-1]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _save_tensors(path: Path, update: Callable[[dict], None]) -> None:
    from safetensors.numpy import load_file, save_file

    t = load_file(str(path))
    update(t)
    save_file(t, str(path))


def _replace_acts(base: Path, d: Path) -> list:
    wd = _copy(base / "W0", d / "w")
    x = np.load(base / "acts.npy")
    np.save(d / "acts.npy", x)
    cfg = json.loads((wd / "config.json").read_text())
    # the workdir trained on base/acts.npy: point it at this case's copy, then change the copy
    cfg["data"]["acts"] = str(d / "acts.npy")
    (wd / "config.json").write_text(json.dumps(cfg))
    x[7, 0, 0] += 1.0
    np.save(d / "acts.npy", x)
    return train(f"--config.data.acts={d / 'acts.npy'}", f"--workdir={wd}")


def _lock_file(wd: Path, pid: int, host: Optional[str] = None, heartbeat: Optional[float] = None) -> None:
    info = {"host": host or socket.gethostname(), "pid": pid, "command": "train.py (another run)",
            "started": time.time() - 60, "heartbeat": time.time() if heartbeat is None else heartbeat, "token": "x"}
    (wd / LOCK_NAME).write_text(json.dumps(info))


def _corrupt_latest(wd: Path) -> None:
    for f in (wd / "checkpoints" / "20" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])


def _export_with(base: Path, d: Path, update=None, config_update=None) -> Path:
    exp = _copy(base / "W0" / "export", d / "cc")
    if update:
        _save_tensors(exp / "model.safetensors", update)
    if config_update:
        cfg = json.loads((exp / "config.json").read_text())
        cfg.update(config_update)
        (exp / "config.json").write_text(json.dumps(cfg))
    return exp


def _nan_in(name):
    def update(t):
        t[name] = t[name].copy()
        t[name].flat[3] = np.nan
    return update


def _check_fallback(d: Path, out: str, err: str) -> None:
    wd = d / "w"
    assert "does not restore" in err and "checkpoints_broken" in err, err[-2000:]
    assert (wd / "checkpoints_broken" / "20").is_dir()  # moved aside, not deleted
    assert "resumed from" in err and "at step 10" in err
    ref = (d.parent / "base" / "W0" / "export" / "model.safetensors").read_bytes()
    assert (wd / "export" / "model.safetensors").read_bytes() == ref  # resuming from 10 gives the same bits


def _check_stale(d: Path, out: str, err: str) -> None:
    assert "replacing a stale lock" in err and "done:" in out
    assert not (d / "w" / LOCK_NAME).exists()  # released at the end


def _check_no_store(d: Path, out: str, err: str) -> None:
    assert not (d / "store" / "zarr.json").exists()  # validated before anything was written


def _extract_args(base: Path, out, text=None, **extra) -> list:
    b, c = base / "models" / "gemma2-base", base / "models" / "gemma2-chat"
    args = ["extract_activations.py", f"--base_model={b}", f"--chat_model={c}", "--layer=1",
            f"--dataset={text or base / 'data' / 'text.jsonl'}", "--text_column=text", "--max_tokens=300",
            "--val_max_tokens=50", "--seq_len=32", "--dtype=float32", f"--out={out}"]
    return args + [f"--{k}={v}" for k, v in extra.items()]


def _empty_texts(base: Path, d: Path) -> list:
    p = d / "empty.jsonl"
    p.write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(5)))
    return _extract_args(base, d / "store", text=p)


def _changed_weights(base: Path, d: Path) -> list:
    """An extraction killed after its first commit; then the chat model's weights are replaced."""
    models = _copy(base / "models", d / "models")
    store = d / "store"
    args = _extract_args(base, store, chunk_rows=32)
    args = [a.replace(str(base / "models"), str(models)) for a in args]
    rc, _, err = _cli(args, d, env={"JAXCODERS_EXTRACT_TEST_KILL": "commit:1"})
    assert rc == 137, err[-2000:]
    _save_tensors(models / "gemma2-chat" / "model.safetensors",
                  lambda t: t.update({k: (v * 1.01).astype(v.dtype) for k, v in t.items() if v.dtype.kind == "f"}))
    return args


def _locked_store(base: Path, d: Path) -> list:
    (d / "store").mkdir()
    _lock_file(d / "store", os.getpid())
    return _extract_args(base, d / "store")


CASES = [
    # --- train: flags and config values --------------------------------------------------------
    Case("train-unknown-config-field", lambda b, d: train("--config.train.lrr=1", f"--workdir={d / 'w'}"), 2,
         "unknown config field --config.train.lrr; did you mean --config.train.lr?"),
    Case("train-unknown-section", lambda b, d: train("--config.trian.lr=1", f"--workdir={d / 'w'}"), 2,
         "unknown config field --config.trian"),
    Case("train-bad-value-type", lambda b, d: train("--config.run.batch_size=abc", f"--workdir={d / 'w'}"), 2,
         "--config.run.batch_size=abc"),
    Case("train-batch-size-zero", lambda b, d: train("--config.run.batch_size=0", f"--config.data.acts={b / 'acts.npy'}",
                                                    f"--workdir={d / 'w'}"), 2, "batch_size must be positive"),
    Case("train-negative-lr", lambda b, d: train("--config.train.lr=-1", f"--config.data.acts={b / 'acts.npy'}",
                                                 f"--workdir={d / 'w'}"), 2, "lr must be positive"),
    Case("train-k-above-dict-size", lambda b, d: train("--config.model.k=64", f"--config.data.acts={b / 'acts.npy'}",
                                                       f"--workdir={d / 'w'}"), 2, "k=64 is larger than dict_size=32"),
    Case("train-unknown-flag", lambda b, d: train("--workdirr=x"), 2, "Unknown command line flag 'workdirr'"),
    Case("train-no-workdir", lambda b, d: train(f"--config.data.acts={b / 'acts.npy'}"), 2, "--workdir is required"),
    Case("train-two-sources", lambda b, d: train(f"--config.data.acts={b / 'acts.npy'}", "--config.data.synthetic=True",
                                                 f"--workdir={d / 'w'}"), 2, "set exactly one of"),
    # --- train: bad data ------------------------------------------------------------------------
    Case("train-missing-npy", lambda b, d: train(f"--config.data.acts={d / 'nope.npy'}", f"--workdir={d / 'w'}"), 2,
         "does not exist"),
    Case("train-empty-npy", lambda b, d: then((d / "e.npy").write_bytes(b""),
                                              train(f"--config.data.acts={d / 'e.npy'}", f"--workdir={d / 'w'}")),
         2, "is not a .npy file (it is empty)",
         inputs=lambda b, d: [d / "e.npy"]),
    Case("train-text-as-npy", lambda b, d: then((d / "t.npy").write_text("hello"),
                                                train(f"--config.data.acts={d / 't.npy'}", f"--workdir={d / 'w'}")),
         2, "no numpy header",
         inputs=lambda b, d: [d / "t.npy"]),
    Case("train-2d-npy", lambda b, d: then(np.save(d / "x.npy", np.zeros((10, 16), np.float32)),
                                           train(f"--config.data.acts={d / 'x.npy'}", f"--workdir={d / 'w'}")),
         2, "must hold an (N, M, D) float array"),
    Case("train-batch-larger-than-npy", lambda b, d: train(f"--config.data.acts={b / 'acts.npy'}",
                                                           "--config.run.batch_size=4096", f"--workdir={d / 'w'}"), 2,
         "fewer than one batch of 4096", inputs=lambda b, d: [b / "acts.npy"]),
    Case("train-batch-larger-than-store", lambda b, d: train(f"--config.data.store={b / 'store'}",
                                                             "--config.run.batch_size=4096", f"--workdir={d / 'w'}"),
         2, "fewer than its 4096 rows of one batch", inputs=lambda b, d: [b / "store"]),
    Case("train-val-split-smaller-than-batch", lambda b, d: train(f"--config.data.store={b / 'store'}",
                                                                  "--config.run.batch_size=512", f"--workdir={d / 'w'}"),
         2, "validation split 'validation'", inputs=lambda b, d: [b / "store"]),
    Case("train-nan-in-training-data", lambda b, d: train(f"--config.data.acts={b / 'nan_train.npy'}",
                                                          f"--workdir={d / 'w'}"), 2,
         "contains NaN or inf values (the step skipped it)", inputs=lambda b, d: [b / "nan_train.npy"]),
    Case("train-nan-in-validation-data", lambda b, d: train(f"--config.data.acts={b / 'nan_val.npy'}",
                                                            f"--workdir={d / 'w'}"), 2,
         "the validation data contains", inputs=lambda b, d: [b / "nan_val.npy"]),
    # --- train: workdirs ------------------------------------------------------------------------
    Case("train-resume-other-k", lambda b, d: train(f"--config.data.acts={b / 'acts.npy'}", "--config.model.k=8",
                                                    f"--workdir={_copy(b / 'W0', d / 'w')}"), 2,
         "(config.json: model.k: 4 -> 8)", inputs=lambda b, d: [d / "w"]),
    Case("train-resume-no-config-json-other-k",
         lambda b, d: then((_copy(b / "W0", d / "w") / "config.json").unlink(),
                           train(f"--config.data.acts={b / 'acts.npy'}", "--config.model.k=8", f"--workdir={d / 'w'}")),
         2, "(checkpoint 20: model.k: 4 -> 8)", inputs=lambda b, d: [d / "w"]),
    Case("train-resume-data-replaced", _replace_acts, 2, "data.acts_digest",
         inputs=lambda b, d: [d / "w", d / "acts.npy"]),
    Case("train-resume-store-overwritten", lambda b, d: ["train-resume-store"], 2, "data.store_",
         inputs=lambda b, d: [d / "w", d / "store"]),
    Case("train-corrupt-config-json",
         lambda b, d: then((_copy(b / "W0", d / "w") / "config.json").write_text("{bad"),
                           train(f"--config.data.acts={b / 'acts.npy'}", f"--workdir={d / 'w'}")),
         2, "config.json is corrupt", inputs=lambda b, d: [d / "w"]),
    Case("train-workdir-is-a-foreign-dir",
         lambda b, d: then((d / "w").mkdir(), (d / "w" / "notes.txt").write_text("mine"),
                           train(f"--config.data.acts={b / 'acts.npy'}", f"--workdir={d / 'w'}")),
         2, "is not a training workdir (it holds notes.txt)", inputs=lambda b, d: [d / "w"]),
    Case("train-workdir-is-a-file",
         lambda b, d: then((d / "w").write_text("x"), train(f"--config.data.acts={b / 'acts.npy'}", f"--workdir={d / 'w'}")),
         2, "is a file", inputs=lambda b, d: [d / "w"]),
    Case("train-workdir-in-use",
         lambda b, d: then(_lock_file(_copy(b / "W0", d / "w"), os.getpid()),
                           train(f"--config.data.acts={b / 'acts.npy'}", f"--workdir={d / 'w'}")),
         2, "is in use: another process writes this training workdir", inputs=lambda b, d: [d / "w"]),
    Case("train-stale-lock-dead-pid",
         lambda b, d: then(_lock_file(_copy(b / "W0", d / "w"), 2 ** 22 + 12345),
                           train(f"--config.data.acts={b / 'acts.npy'}", f"--workdir={d / 'w'}")),
         0, "", check=_check_stale, outcome="the dead holder's lock is replaced (a warning names it); training resumes"),
    Case("train-stale-lock-other-host",
         lambda b, d: then(_lock_file(_copy(b / "W0", d / "w"), 1, host="elsewhere", heartbeat=time.time() - 3600),
                           train(f"--config.data.acts={b / 'acts.npy'}", f"--workdir={d / 'w'}")),
         0, "", check=_check_stale, outcome="a lock whose heartbeat is an hour old is replaced; training resumes"),
    Case("train-corrupt-latest-checkpoint",
         lambda b, d: then(_corrupt_latest(_copy(b / "W0", d / "w")),
                           train(f"--config.data.acts={b / 'acts.npy'}", f"--workdir={d / 'w'}")),
         0, "", check=_check_fallback, outcome="the broken checkpoint is named and moved to checkpoints_broken/; "
         "training resumes from the previous one (same export bytes as the uninterrupted run)"),
    # --- analysis commands ----------------------------------------------------------------------
    Case("analyze-missing-crosscoder", lambda b, d: ["analyze.py", f"--crosscoder={d / 'nope'}",
                                                     f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"], 2,
         "does not exist"),
    Case("analyze-nan-weights", lambda b, d: ["analyze.py", f"--crosscoder={_export_with(b, d, _nan_in('decoder.weight'))}",
                                              f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"], 2,
         "decoder.weight holds 1 NaN/inf values", inputs=lambda b, d: [d / "cc"]),
    Case("analyze-config-k-disagrees", lambda b, d: ["analyze.py", f"--crosscoder={_export_with(b, d, config_update={'k': 7})}",
                                                     f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"], 2,
         "k=7 disagrees with k=4", inputs=lambda b, d: [d / "cc"]),
    Case("analyze-config-normalization-disagrees",
         lambda b, d: ["analyze.py", f"--crosscoder={_export_with(b, d, config_update={'code_normalization': 'SAE'})}",
                       f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"], 2,
         "code_normalization=SAE disagrees with CROSSCODER", inputs=lambda b, d: [d / "cc"]),
    Case("analyze-mean-wrong-shape",
         lambda b, d: ["analyze.py",
                       f"--crosscoder={_export_with(b, d, lambda t: t.update(activation_mean=np.zeros((2, 5), np.float32)))}",
                       f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"], 2,
         "activation_mean has shape (2, 5), expected (2, 16)", inputs=lambda b, d: [d / "cc"]),
    Case("analyze-corrupt-safetensors",
         lambda b, d: then((_export_with(b, d) / "model.safetensors").write_bytes(b"\x00" * 40),
                           ["analyze.py", f"--crosscoder={d / 'cc'}", f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"]),
         2, "is not a readable safetensors file", inputs=lambda b, d: [d / "cc"]),
    Case("analyze-dimension-mismatch",
         lambda b, d: then(np.save(d / "a8.npy", np.zeros((64, 2, 8), np.float32)),
                           ["analyze.py", f"--crosscoder={b / 'W0'}", f"--acts={d / 'a8.npy'}", f"--out={d / 'out'}"]), 2,
         "the crosscoder expects (n, 2, 16)"),
    Case("analyze-out-is-a-file",
         lambda b, d: then((d / "out").write_text("mine"),
                           ["analyze.py", f"--crosscoder={b / 'W0'}", f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"]), 2,
         "is a file", inputs=lambda b, d: [d / "out"]),
    Case("analyze-out-holds-other-files",
         lambda b, d: then((d / "out").mkdir(), (d / "out" / "thesis.tex").write_text("mine"),
                           ["analyze.py", f"--crosscoder={b / 'W0'}", f"--acts={b / 'acts.npy'}", f"--out={d / 'out'}"]), 2,
         "already holds files this command did not write (thesis.tex)", inputs=lambda b, d: [d / "out"]),
    Case("collect-examples-bad-store", lambda b, d: ["collect_examples.py", f"--crosscoder={b / 'W0'}",
                                                     f"--store={d / 'nostore'}", f"--out={d / 'out'}"], 2, "nostore"),
    Case("report-missing-analysis", lambda b, d: ["report.py", f"--analysis={d / 'nothing'}"], 2, "nothing"),
    Case("interventions-out-holds-other-files",
         lambda b, d: then((d / "out").mkdir(), (d / "out" / "thesis.tex").write_text("mine"),
                           ["interventions.py", "--base_model=nothing", "--chat_model=nothing", "--layer=1",
                            "--dataset=nothing", f"--out={d / 'out'}"]), 2,
         "already holds files this command did not write (thesis.tex)", inputs=lambda b, d: [d / "out"]),
    Case("demo-out-holds-other-files",
         lambda b, d: then((d / "out").mkdir(), (d / "out" / "thesis.tex").write_text("mine"),
                           ["demo.py", "--small", f"--out={d / 'out'}", f"--models_dir={d / 'models'}"]), 2,
         "already holds files this command did not write (thesis.tex)", inputs=lambda b, d: [d / "out"],
         outcome="refused before a model is built: the demo only replaces its own store and workdirs"),
    # --- extraction -----------------------------------------------------------------------------
    Case("extract-all-empty-texts", _empty_texts, 2, "produces no tokens", check=lambda d, o, e: _check_no_store(d, o, e)),
    Case("extract-store-in-use", _locked_store, 2, "is in use: another process writes this activation store"),
    Case("extract-resume-changed-local-weights", _changed_weights, 2, "the weights in --chat_model",
         inputs=lambda b, d: [d / "store"]),
]


def _prepare_base(base: Path) -> None:
    from jaxcoders.data.store import ActivationStore

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 2, 16)).astype(np.float32)
    np.save(base / "acts.npy", x)
    bad = x.copy()
    bad[2000, 0, 3] = np.nan  # a training row (the first 10 % validate)
    np.save(base / "nan_train.npy", bad)
    bad = x.copy()
    bad[10, 1, 2] = np.inf  # a validation row
    np.save(base / "nan_val.npy", bad)
    splits = np.where(np.arange(len(x)) < 2700, "train", "validation")
    ActivationStore.create_from_arrays(str(base / "store"), x, splits=splits)
    rc, _, err = _cli(train(f"--config.data.acts={base / 'acts.npy'}", f"--workdir={base / 'W0'}"), base)
    assert rc == 0, err[-3000:]
    import extract_helpers as H

    H.write_local_datasets(base / "data")
    H.build_tiny_model_pair(base / "models", "gemma2")


def _run_case(case: Case, base: Path, root: Path) -> dict:
    d = root / case.name
    d.mkdir()
    argv = case.prepare(base, d)
    if argv and argv[0] == "train-resume-store":  # train on a store, overwrite it in place, rerun
        x = np.load(base / "acts.npy")
        from jaxcoders.data.store import ActivationStore

        splits = np.where(np.arange(len(x)) < 2700, "train", "validation")
        ActivationStore.create_from_arrays(str(d / "store"), x, splits=splits)
        argv = train(f"--config.data.store={d / 'store'}", f"--workdir={d / 'w'}")
        rc, _, err = _cli(argv, d)
        assert rc == 0, err[-2000:]
        time.sleep(1.1)  # a new creation time
        ActivationStore.create_from_arrays(str(d / "store"), x[::-1].copy(), splits=splits, overwrite=True)
    before = _digest(case.inputs(base, d))
    t0 = time.time()
    rc, out, err = _cli(argv, d)
    return {"command": Path(argv[0]).stem.replace("_", "-").replace("extract-activations", "extract"),
            "rc": rc, "out": out, "err": err, "before": before, "after": _digest(case.inputs(base, d)), "dir": d,
            "seconds": time.time() - t0}


@pytest.fixture(scope="module")
def results(tmp_path_factory, cli_runner):
    global RUNNERS
    RUNNERS = cli_runner  # its environment is `_env()`; three commands at a time below
    root = tmp_path_factory.mktemp("reliability")
    base = root / "base"
    base.mkdir()
    _prepare_base(base)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c.name: pool.submit(_run_case, c, base, root) for c in CASES}
        return {name: f.result() for name, f in futures.items()}


def _table(results: dict, root: Path) -> str:
    """docs/reliability.md's table: each case, its command and what it now gives."""
    rows = ["| case | command | exit | what it gives |", "|---|---|---|---|"]
    for c in CASES:
        r = results[c.name]
        if c.rc == 2:
            line = next((ln for ln in r["err"].splitlines() if ln.startswith("error: ")), "")
        else:
            line = c.outcome
        line = line.replace(str(root), "<tmp>").replace("|", "\\|")
        if len(line) > 260:
            line = line[:257] + "..."
        rows.append(f"| `{c.name}` | `{r['command']}` | {r['rc']} | {line} |")
    return "\n".join(rows) + "\n"


def test_docs_table_lists_every_case(results):
    """docs/reliability.md holds the table of these cases (regenerate it with
    JAXCODERS_RELIABILITY_TABLE=docs/reliability_table.md pytest tests/test_reliability.py)."""
    target = os.environ.get("JAXCODERS_RELIABILITY_TABLE")
    if target:
        Path(target).write_text(_table(results, next(iter(results.values()))["dir"].parent))
    doc = (ROOT / "docs" / "reliability.md").read_text()
    missing = [c.name for c in CASES if f"`{c.name}`" not in doc]
    assert not missing, f"docs/reliability.md lacks the cases {missing}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case(case: Case, results):
    r = results[case.name]
    tail = f"\nstdout:\n{r['out'][-1500:]}\nstderr:\n{r['err'][-3000:]}"
    assert r["rc"] == case.rc, tail
    assert "Traceback" not in r["err"] and "Traceback" not in r["out"], tail
    if case.rc == 2:
        errors = [ln for ln in r["err"].splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, tail
        assert case.message in errors[0], tail
    assert r["after"] == r["before"], "the inputs changed"
    if case.check is not None:
        case.check(r["dir"], r["out"], r["err"])


def test_debug_shows_the_traceback(tmp_path):
    p = subprocess.run([sys.executable, str(EXP / "train.py"), *TRAIN_FLAGS, f"--config.data.acts={tmp_path / 'no.npy'}",
                        f"--workdir={tmp_path / 'w'}", "--debug"], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0 and "Traceback" in p.stderr and "does not exist" in p.stderr


# --------------------------------------------------------------------------------------------
# library level


def _tiny_model(arch="batchtopk"):
    from flax import nnx

    from jaxcoders.config import CrossCoderConfig

    return jaxcoders.CrossCoder(CrossCoderConfig(2, 8, 16, architecture=arch, k=2 if arch == "batchtopk" else None),
                                rngs=nnx.Rngs(0))


def test_save_reference_never_loses_files(tmp_path):
    model = _tiny_model()
    # a directory of the user's: refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = _digest([mine])
    with pytest.raises(OutputExistsError, match="thesis.tex"):
        jaxcoders.save_reference(model, mine)
    assert _digest([mine]) == before and sorted(os.listdir(mine)) == ["thesis.tex"]
    # ... unless asked: the export lands beside the user's file, which stays
    jaxcoders.save_reference(model, mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "model.safetensors").is_file()
    # onto a file: refused, the file stays a file
    f = tmp_path / "file"
    f.write_text("data")
    with pytest.raises(OutputExistsError, match="is a file"):
        jaxcoders.save_reference(model, f)
    assert f.read_text() == "data"
    # a previous export is replaced in place, with ordinary permissions and no temporary leftovers
    out = jaxcoders.save_reference(model, tmp_path / "export")
    jaxcoders.save_reference(_tiny_model("l1"), out)
    assert jaxcoders.load_reference(out).cfg.architecture == "l1"
    umask = os.umask(0)
    os.umask(umask)
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "trainer_config.json"]
    # a tied export into the same directory removes the reference files it replaces, nothing else
    jaxcoders.save_reference(_tiny_model("tied"), out)
    assert sorted(os.listdir(out)) == ["cfg.json", "model.safetensors"]
    assert jaxcoders.load_reference(out).cfg.architecture == "tied"


def test_load_reference_refuses_non_finite_and_misshaped(tmp_path):
    from jaxcoders.io.hub import ReferenceFormatError

    out = jaxcoders.save_reference(_tiny_model(), tmp_path / "cc")
    _save_tensors(out / "model.safetensors", lambda t: t.update(threshold=np.asarray(np.inf, np.float32)))
    with pytest.raises(ReferenceFormatError, match="threshold holds 1 NaN/inf"):
        jaxcoders.load_reference(out)
    out = jaxcoders.save_reference(_tiny_model(), tmp_path / "cc2")
    _save_tensors(out / "model.safetensors", lambda t: t.update(activation_std=np.ones((3, 8), np.float32)))
    with pytest.raises(ReferenceFormatError, match=r"activation_std has shape \(3, 8\)"):
        jaxcoders.load_reference(out)
    # control: the untouched export loads
    assert jaxcoders.load_reference(jaxcoders.save_reference(_tiny_model(), tmp_path / "ok")).cfg.k == 2


def test_output_dirs(tmp_path):
    claim_output_dir(tmp_path / "a", "analysis")
    (tmp_path / "a" / "latents.parquet").write_text("x")
    claim_output_dir(tmp_path / "a", "analysis")  # its own output again: fine
    with pytest.raises(OutputExistsError, match="the output of `analysis`"):
        claim_output_dir(tmp_path / "a", "demo")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".DS_Store").write_text("")  # hidden files do not count
    claim_output_dir(tmp_path / "b", "demo")
    check_output_dir(tmp_path / "c", ["x"])  # absent: fine


def test_lock_one_writer_and_stale_detection(tmp_path, caplog):
    wd = tmp_path / "w"
    with DirectoryLock(wd, what="training workdir") as lock:
        info = json.loads((wd / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and lock.held
        with pytest.raises(LockHeld, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            DirectoryLock(wd).acquire()
    assert not (wd / LOCK_NAME).exists()
    # a holder on this host that is gone, and one elsewhere whose heartbeat stopped: both stale
    for kw in ({"pid": 2 ** 22 + 7}, {"pid": 1, "host": "elsewhere", "heartbeat": time.time() - 3600}):
        _lock_file(wd, **kw)
        with DirectoryLock(wd):
            pass
        assert not (wd / LOCK_NAME).exists()
    # elsewhere with a fresh heartbeat: held
    _lock_file(wd, 1, host="elsewhere")
    with pytest.raises(LockHeld, match="elsewhere"):
        DirectoryLock(wd).acquire()
    # the heartbeat thread keeps the lock fresh
    (wd / LOCK_NAME).unlink()
    lock = DirectoryLock(wd, heartbeat_s=0.05).acquire()
    first = json.loads((wd / LOCK_NAME).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((wd / LOCK_NAME).read_text())["heartbeat"] > first
    lock.release()


def test_loader_refuses_batches_that_would_repeat_rows(tmp_path):
    from jaxcoders.data.loader import Loader, LoaderError
    from jaxcoders.data.store import ActivationStore

    x = np.random.default_rng(0).standard_normal((300, 2, 4)).astype(np.float32)
    st = ActivationStore.create_from_arrays(str(tmp_path / "s"), x, dataset_ids=np.arange(300) % 2,
                                            dataset_names=["a", "b"])
    with pytest.raises(LoaderError, match="dataset 0 .* has 150 rows"):
        Loader(st, 512, prefetch=0)
    Loader(st, 256, prefetch=0).close()  # control: 128 rows of each per batch fit


def test_disk_full_before_a_checkpoint(monkeypatch, tmp_path):
    """A checkpoint the disk cannot hold is refused before anything is written (ENOSPC, one line)."""
    import errno

    import jax.numpy as jnp

    from jaxcoders.cli.common import describe_error
    from jaxcoders.training import resume

    state = {"w": jnp.zeros((1000, 1000), jnp.float32)}  # 4 MB
    monkeypatch.setattr(resume, "free_disk_bytes", lambda path: 3_000_000)
    with pytest.raises(OSError) as info:
        resume.check_room_for_checkpoint(str(tmp_path), state, 20)
    assert info.value.errno == errno.ENOSPC
    msg = describe_error(info.value)
    assert msg.startswith("checkpoint 20 needs about 5.4 MB but 3.0 MB are free") and "rerun the same command" in msg
    monkeypatch.setattr(resume, "free_disk_bytes", lambda path: 10_000_000)
    resume.check_room_for_checkpoint(str(tmp_path), state, 20)  # control: room enough


def test_disk_full_during_training_on_a_small_filesystem(tmp_path, cli_runner):
    """A real full disk (a 12 MB tmpfs; needs the right to mount, else skipped): one error line, the
    earlier checkpoints intact, and the rerun with room resumes from them to the same bytes as an
    uninterrupted run."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        np.save(tmp_path / "acts.npy", np.random.default_rng(0).standard_normal((2000, 2, 64)).astype(np.float32))
        args = [str(EXP / "train.py"), *TRAIN_FLAGS, "--config.model.dict_size=2048", "--config.run.steps=60",
                "--config.run.eval_every=0", f"--config.data.acts={tmp_path / 'acts.npy'}"]
        rc, _, err = cli_runner.run([*args, f"--workdir={mnt / 'w'}"], cwd=tmp_path, env=_env(), timeout=300)
        assert rc == 2 and "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("error: checkpoint ") and "MB are free" in err
        kept = sorted(int(s.name) for s in (mnt / "w" / "checkpoints").iterdir())
        assert kept and all(s % 10 == 0 for s in kept)
        shutil.copytree(mnt / "w", tmp_path / "w")  # room again: the same command resumes from the last one
        rc, _, err = cli_runner.run([*args, f"--workdir={tmp_path / 'w'}"], cwd=tmp_path, env=_env(), timeout=300)
        assert rc == 0 and f"at step {kept[-1]}" in err, err[-3000:]
        rc, _, err = cli_runner.run([*args, f"--workdir={tmp_path / 'ref'}"], cwd=tmp_path, env=_env(),
                                    timeout=300)  # uninterrupted
        assert rc == 0, err[-2000:]
        for name in ("model.safetensors", "config.json"):
            assert (tmp_path / "w" / "export" / name).read_bytes() == (tmp_path / "ref" / "export" / name).read_bytes()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
