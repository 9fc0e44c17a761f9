"""Serving the dashboard: the Streamlit command line for a spec, started in place of the calling
process (`serve`, what `experiments/dashboard.py` does) or as a child process (`start`, for tests
and screenshots), and waiting until it answers (`wait_until_serving`).

The server binds `host` (127.0.0.1 by default: only this machine can open it), runs headless
(no browser opened, no usage statistics sent, no file watcher), and gets the spec through the
environment (`inputs.SPEC_ENV`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from jaxcoders.dashboard.inputs import SPEC_ENV, DashboardError, DashboardSpec

APP = Path(__file__).with_name("app.py")


def streamlit_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """argv of `python -m streamlit run app.py` on host:port, headless."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--global.developmentMode", "false", "--client.toolbarMode", "minimal"]


def server_env(spec: DashboardSpec, environ=None) -> dict:
    env = dict(os.environ if environ is None else environ)
    env[SPEC_ENV] = spec.to_json()
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return env


def url(port: int, host: str = "127.0.0.1") -> str:
    h = f"[{host}]" if ":" in host else host
    return f"http://{h}:{port}/"


def serve(spec: DashboardSpec, port: int, host: str = "127.0.0.1") -> None:
    """Replace this process by the Streamlit server (Ctrl-C stops it)."""
    cmd = streamlit_command(port, host)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, server_env(spec))


def start(spec: DashboardSpec, port: int, host: str = "127.0.0.1", *, log_file=None) -> subprocess.Popen:
    """The server as a child process (the caller terminates it); its output goes to `log_file`."""
    out = open(log_file, "w") if log_file else subprocess.DEVNULL
    return subprocess.Popen(streamlit_command(port, host), env=server_env(spec), stdout=out, stderr=subprocess.STDOUT)


def wait_until_serving(port: int, host: str = "127.0.0.1", *, timeout_s: float = 60.0,
                       proc: Optional[subprocess.Popen] = None) -> None:
    """Poll Streamlit's health endpoint until it answers "ok"; DashboardError after `timeout_s` or when
    `proc` exits first."""
    health = url(port, host) + "_stcore/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DashboardError(f"the dashboard server exited with status {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise DashboardError(f"the dashboard did not answer on {url(port, host)} within {timeout_s:.0f} s")
