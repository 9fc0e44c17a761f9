"""Shared pytest setup: fixture paths; JAX on CPU with deterministic defaults."""
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One persistent XLA compilation cache for the suite and every command it starts in a subprocess
# (the CLI tests compile the same train steps and analysis passes many times over): measured on the
# tiny BatchTopK step, compile 2.6 s -> 0.4 s when cached. Entries are keyed by the HLO, the
# compile options, XLA_FLAGS and the jax/jaxlib versions, so a stale entry is never used. Set
# JAX_COMPILATION_CACHE_DIR= (empty) to run without it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "reference"


def pytest_collection_modifyitems(config, items):
    """Groups for `pytest -n N --dist loadgroup` (`make test`): the tests of one module share a
    worker (their module- and session-scoped fixtures are built once), and every test that reads
    the shared demo output (`demo_small`) runs on one worker, so the demo runs once."""
    for item in items:
        if not any(m.name == "xdist_group" for m in item.iter_markers()):
            group = "demo_small" if "demo_small" in getattr(item, "fixturenames", ()) else item.module.__name__
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"missing {FIXTURES}"
    return FIXTURES


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
    test, the paper and the dashboard tests): (out, models_dir, completed process). Read it, never
    write into it: copy what a test needs to change."""
    base = tmp_path_factory.mktemp("demo_small")
    out, models = base / "demo", base / "models"
    r = run_demo_cli(["--small", f"--out={out}", f"--models_dir={models}"])
    return out, models, r
