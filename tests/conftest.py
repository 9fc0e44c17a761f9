"""Shared pytest setup: fixture paths; JAX on CPU with deterministic defaults."""
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One persistent XLA compilation cache for the suite and every command it starts in a subprocess
# (the CLI tests compile the same train steps and analysis passes many times over): measured on the
# tiny BatchTopK step, compile 2.6 s -> 0.4 s when cached. Every compile is cached (minimum compile
# time 0), the ~30 small eager ops of a run's init and logging too: a second tiny training process
# then costs 5.1 s of CPU instead of 8.1 s (0.2 s minimum). Entries are keyed by the HLO, the
# compile options, XLA_FLAGS and the jax/jaxlib versions, so a stale entry is never used. Set
# JAX_COMPILATION_CACHE_DIR= (empty) to run without it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Compile for the tests' tiny shapes, where compile time is most of the cost: LLVM's optimisation
# off, and XLA:CPU's older elemental emitters for fusions instead of the MLIR fusion emitters (XLA's
# HLO passes still run, so the programs are the ones users get; only the machine code is generated
# differently). Measured on tests/test_sparse.py (cold cache, 2 cores): 62 -> 42 s of CPU with the
# optimisation off, -> 45 s with the fusion emitters off alone, -> 42 s with both (from 64 s).
# Subprocesses inherit it; tests that set XLA_FLAGS for a subprocess append to os.environ's. Set
# JAXCODERS_TEST_XLA_OPT=1 to test with XLA's defaults instead (the whole suite passes either way).


def _jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib has XLA flag `flag` (XLA aborts on an unknown one): its name is in
    the library's strings."""
    import importlib.util
    import mmap

    spec = importlib.util.find_spec("jaxlib")
    libs = sorted(Path(spec.origin).parent.glob("*.so"), key=lambda p: "jax_common" not in p.name)  # it is there
    for lib in libs:
        with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m.find(flag.encode()) >= 0:
                return True
    return False


if os.environ.get("JAXCODERS_TEST_XLA_OPT", "0") == "0":
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in _flags:
        _flags += " --xla_backend_optimization_level=0"
    if "xla_cpu_use_fusion_emitters" not in _flags and _jaxlib_knows("xla_cpu_use_fusion_emitters"):
        _flags += " --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = _flags.strip()

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "reference"


# Seconds each module takes (`--durations=0`, summed per module, cold compilation cache, 2 workers,
# 2026-12-06; test_paper's includes building the shared demo). Only the order they give matters.
MODULE_SECONDS = {
    "test_paper": 115, "test_dashboard": 49, "test_tpu_scripts": 45, "test_accelerator_check": 41,
    "test_reliability": 41, "test_gcs_pipeline": 38, "test_sparse": 37, "test_toy": 31, "test_trainer": 29,
    "test_report": 24, "test_benchmark": 22, "test_selection": 22, "test_pod_rehearsal": 18,
}
LONG_MODULE_SECONDS = 20


def pytest_collection_modifyitems(config, items):
    """Order for `make test` (`pytest -n 2 --dist loadfile --no-loadscope-reorder`: a module's tests
    share one worker, so its module-scoped fixtures are built once; the workers take modules in this
    order):
    1. the first module that reads the shared demo output (`demo_small`), so the demo, the suite's
       longest single job, starts at once on one worker;
    2. the long modules (MODULE_SECONDS >= LONG_MODULE_SECONDS), longest first;
    3. the other modules that read the demo output: by now it is ready, so they never wait for it;
    4. the short modules, so that both workers run out of work at about the same time."""
    users = [it.module.__name__ for it in items if "demo_small" in getattr(it, "fixturenames", ())]
    first, readers = (users[0] if users else None), set(users)

    def key(it):
        name = it.module.__name__
        secs = MODULE_SECONDS.get(name, 0)
        if name == first:
            return (0, 0)
        if name in readers:
            return (2, -secs)
        return (1, -secs) if secs >= LONG_MODULE_SECONDS else (3, 0)

    items.sort(key=key)  # stable: the order within a module, and among the short ones, is kept


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"missing {FIXTURES}"
    return FIXTURES


@pytest.fixture(scope="session")
def cli_runner():
    """A fork server (tests/fork_runner.py) for command-line tests: `cli_runner.run([script, *args],
    cwd=, env=)` -> (rc, stdout, stderr), as `python script args` would give, without paying the
    imports (~3-4 s on 2 cores) per command; `cli_runner.start(...)` -> a job with `.pid` and
    `.wait()` for commands that run side by side or get signalled. One per worker, closed when the
    session ends."""
    import fork_runner

    with fork_runner.ForkRunner(env=fork_runner.in_repo_env()) as runner:
        yield runner


def run_demo_cli(args, env_extra=None, timeout=900):
    """`experiments/demo.py <args>` in a subprocess with every hub unreachable; asserts rc 0."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, CI="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_ENDPOINT="http://127.0.0.1:9", **(env_extra or {}))  # nothing may reach a hub
    r = subprocess.run([sys.executable, str(root / "experiments" / "demo.py"), *args],
                       capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """One `experiments/demo.py --small` run shared by every test that reads a demo output (the demo
    test, the paper and the dashboard tests), by all pytest-xdist workers of the run (the first to
    ask builds it under a file lock; the others wait for it and reuse it):
    (out, models_dir, result with .stdout/.stderr). Read it, never write into it: copy what a test
    needs to change."""
    import fcntl
    import json
    import shutil
    from types import SimpleNamespace

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, shared by its workers
    base = root / "demo_small"
    out, models, done = base / "demo", base / "models", base / "result.json"
    with open(root / "demo_small.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(base, ignore_errors=True)  # what a failed attempt left
            base.mkdir()
            r = run_demo_cli(["--small", f"--out={out}", f"--models_dir={models}"])
            done.write_text(json.dumps({"stdout": r.stdout, "stderr": r.stderr}))
    return out, models, SimpleNamespace(returncode=0, **json.loads(done.read_text()))
