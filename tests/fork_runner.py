"""Run many command-line scripts quickly in tests: a server process imports the heavy libraries once
(jax, flax, orbax, tensorstore, torch, transformers, pandas, ...) and forks one child per command.
The child runs the script exactly as `python script.py args` would (as `__main__`, with its own
argv, working directory, extra environment, stdout/stderr in files) and its exit status is the
command's. On this 2-core machine that saves ~2-3 s of imports per command.

Forking is safe because the server only *imports*: no jax backend, no torch or arrow thread pool is
started before a fork (each child starts its own). Commands never import into the server.

    with ForkRunners(3) as runners:
        rc, out, err = runners.run(["experiments/train.py", "--config=tiny", ...], cwd=tmp, env={...})
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

PRELOAD = ("numpy", "jax", "jax.numpy", "flax.nnx", "optax", "orbax.checkpoint", "tensorstore", "ml_collections",
           "absl.app", "etils.epath", "safetensors.numpy", "jaxcoders.training.loop", "jaxcoders.analysis.tables",
           "jaxcoders.io.reference", "pandas", "pyarrow.parquet", "matplotlib", "torch", "transformers", "datasets")

SERVER = r'''
import json, os, runpy, signal, sys, time, traceback
for name in sys.argv[1].split(","):
    try:
        __import__(name)
    except ImportError:
        pass
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.update(req["env"])
            for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = list(req["argv"])
            try:
                runpy.run_path(req["argv"][0], run_name="__main__")
                code = 0
            except SystemExit as e:
                if e.code is None:
                    code = 0
                elif isinstance(e.code, int):
                    code = e.code
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    deadline = time.time() + req["timeout"]
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
        else:
            time.sleep(0.01)
    rc = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps({"rc": rc}) + "\n"); sys.stdout.flush()
'''


class ForkRunner:
    """One server process; `run` is blocking (use several runners for parallel commands)."""

    def __init__(self, env: Optional[dict] = None, preload=PRELOAD):
        self._tmp = tempfile.mkdtemp(prefix="jaxcoders-forks-")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, ",".join(preload)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=self._tmp)
        self._ready = False
        self._n = 0

    def _wait_ready(self) -> None:
        if not self._ready:
            line = self.proc.stdout.readline()
            assert line.strip() == "ready", f"fork server did not start ({line!r})"
            self._ready = True

    def run(self, argv: list, *, cwd, env: Optional[dict] = None, timeout: float = 600) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of `python argv[0] argv[1:]` run in `cwd` with `env` added."""
        self._wait_ready()
        self._n += 1
        out, err = (Path(self._tmp) / f"{self._n}.{k}" for k in ("out", "err"))
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": {k: str(v) for k, v in (env or {}).items()},
               "stdout": str(out), "stderr": str(err), "timeout": timeout}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        rc = json.loads(line)["rc"]
        return rc, out.read_text(errors="replace"), err.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ForkRunners:
    """A pool of `ForkRunner`s: `run` takes a free one (thread-safe), so threads run commands in parallel."""

    def __init__(self, n: int, env: Optional[dict] = None):
        self.runners = [ForkRunner(env) for _ in range(n)]
        self._free: queue.Queue = queue.Queue()
        for r in self.runners:
            self._free.put(r)

    def run(self, argv: list, **kw) -> tuple[int, str, str]:
        r = self._free.get()
        try:
            return r.run(argv, **kw)
        finally:
            self._free.put(r)

    def close(self) -> None:
        for r in self.runners:
            r.close()

    def __enter__(self) -> "ForkRunners":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def in_repo_env() -> dict:
    """The environment commands run with in tests (CPU, offline, one thread)."""
    return dict(os.environ, CI="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", HF_ENDPOINT="http://127.0.0.1:9")
