"""Run many command-line scripts quickly in tests: a server process imports the heavy libraries once
(jax, flax, orbax, tensorstore, torch, transformers, pandas, ...) and forks one child per command.
The child runs the script exactly as `python script.py args` would (as `__main__`, with its own
argv, working directory, extra environment, stdout/stderr in files) and its exit status is the
command's. On this 2-core machine that saves ~3-4 s of imports per command.

One server runs any number of commands at once (`start` returns a handle with the child's pid, so
a test can signal it or run the processes of a multi-process job side by side).

Forking is safe because the server only *imports*: no jax backend, no torch or arrow thread pool is
started before a fork (each child starts its own, and reads XLA_FLAGS, JAX_* and the rest of the
environment it was given when it starts them). Commands never import into the server.

    with ForkRunner(env=in_repo_env()) as runner:
        rc, out, err = runner.run(["experiments/train.py", "--config=tiny", ...], cwd=tmp, env={...})
        jobs = [runner.start([...], cwd=tmp, env={"JAX_PROCESS_ID": str(i)}) for i in range(4)]
        results = [j.wait() for j in jobs]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

PRELOAD = ("numpy", "jax", "jax.numpy", "flax.nnx", "optax", "orbax.checkpoint", "tensorstore", "ml_collections",
           "absl.app", "etils.epath", "safetensors.numpy", "jaxcoders.training.loop", "jaxcoders.analysis.tables",
           "jaxcoders.io.reference", "pandas", "pyarrow.parquet", "matplotlib", "torch", "transformers", "datasets",
           # transformers resolves its classes lazily: without these, every command that loads one of
           # the tests' tiny models imported them again (~48 s of CPU over the suite, py-spy)
           "transformers.models", "transformers.models.auto.tokenization_auto",
           "transformers.models.llama.modeling_llama", "transformers.models.gemma2.modeling_gemma2", "gcsfs")

# The server: one loop that reads requests (JSON lines on stdin), forks a child per request, answers
# {"id", "pid"} at once and {"id", "rc"} when the child ends (killed with SIGKILL past its deadline).
SERVER = r'''
import json, os, runpy, select, signal, sys, time, traceback
for name in sys.argv[1].split(","):
    try:
        __import__(name)
    except ImportError:
        pass
def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
def child(req):
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
            if sys.argv[0] == "-m":  # python -m module args
                sys.argv = sys.argv[1:]
                runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
            elif sys.argv[0] == "-c":  # python -c code args
                code_text, sys.argv = sys.argv[1], ["-c", *sys.argv[2:]]
                exec(compile(code_text, "<string>", "exec"), {"__name__": "__main__"})
            else:
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
reply({"ready": True})
running, buf, eof = {}, b"", False
while not (eof and not running):
    if not eof and select.select([0], [], [], 0.01)[0]:
        data = os.read(0, 65536)
        eof = not data
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(req)
            running[pid] = (req["id"], time.time() + req["timeout"])
            reply({"id": req["id"], "pid": pid})
    elif eof:
        time.sleep(0.01)
    for pid, (rid, deadline) in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done and time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            done, status = os.waitpid(pid, 0)
        if done:
            del running[pid]
            reply({"id": rid, "rc": os.waitstatus_to_exitcode(status)})
'''


class Job:
    """A command started by `ForkRunner.start`: `.pid` (a real process: it can be signalled), `.wait()`."""

    def __init__(self, rid: int, out: Path, err: Path):
        self.id, self._out, self._err = rid, out, err
        self.pid: Optional[int] = None
        self.rc: Optional[int] = None
        self._started, self._done = threading.Event(), threading.Event()

    def wait(self, timeout: Optional[float] = None) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once the command has ended."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"command {self.id} still running")
        if self.rc is None:
            raise RuntimeError("the fork server died")
        return self.rc, self._out.read_text(errors="replace"), self._err.read_text(errors="replace")


class ForkRunner:
    """One server process; `start` runs a command in a forked child (any number at once), `run` waits for it."""

    def __init__(self, env: Optional[dict] = None, preload=PRELOAD):
        self._tmp = tempfile.mkdtemp(prefix="jaxcoders-forks-")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, ",".join(preload)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=self._tmp)
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._n = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self._ready.set()
                continue
            job = self._jobs[msg["id"]]
            if "pid" in msg:
                job.pid = msg["pid"]
                job._started.set()
            else:
                job.rc = msg["rc"]
                job._done.set()
        for job in list(self._jobs.values()):  # the server is gone: nothing else will answer
            job._started.set()
            job._done.set()
        self._ready.set()

    def start(self, argv: list, *, cwd, env: Optional[dict] = None, timeout: float = 600) -> Job:
        """Start `python argv[0] argv[1:]` (argv[0] "-m" or "-c": `python -m module ...`, `python -c code ...`)
        in `cwd` with `env` added; returns once it runs (with its pid)."""
        if not self._ready.wait(120) or self.proc.poll() is not None:
            raise RuntimeError("fork server did not start")
        with self._lock:
            self._n += 1
            rid = self._n
            out, err = (Path(self._tmp) / f"{rid}.{k}" for k in ("out", "err"))
            job = self._jobs[rid] = Job(rid, out, err)
            req = {"id": rid, "argv": [str(a) for a in argv], "cwd": str(cwd),
                   "env": {k: str(v) for k, v in (env or {}).items()}, "stdout": str(out), "stderr": str(err),
                   "timeout": timeout}
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        job._started.wait()
        if job.pid is None:
            raise RuntimeError("the fork server died")
        return job

    def run(self, argv: list, *, cwd, env: Optional[dict] = None, timeout: float = 600) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of `python argv[0] argv[1:]` run in `cwd` with `env` added."""
        return self.start(argv, cwd=cwd, env=env, timeout=timeout).wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> "ForkRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def in_repo_env() -> dict:
    """The environment commands run with in tests (CPU, offline, one thread)."""
    return dict(os.environ, CI="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", HF_ENDPOINT="http://127.0.0.1:9")
