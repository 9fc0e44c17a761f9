"""One writer per directory: a lock file that names its holder, with stale-lock detection.

    with DirectoryLock(workdir, what="training workdir"):
        ...  # only this process writes into workdir

The lock is `<dir>/.jaxcoders.lock`, a small JSON object {host, pid, command, started, heartbeat,
token}. Taking it:
* local paths: created with O_CREAT | O_EXCL (atomic); object stores (`gs://`): written when absent
  and read back to confirm that this process's token won a race;
* a lock already there is *stale*, and replaced with a warning, when its holder is a process of this
  host that no longer runs (killed, crashed), or when its heartbeat (rewritten every `heartbeat_s`
  seconds by a daemon thread) is older than `stale_after_s` (a holder on another host that died);
* otherwise `LockHeld` (a ValueError) names the holder and the way out.
The lock is removed on release (only if it is still this process's own).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

LOCK_NAME = ".jaxcoders.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class LockHeld(ValueError):
    """Another live process holds the directory's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


class _LocalFile:
    def __init__(self, path: Path):
        self.path = path

    def create(self, text: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True

    def read(self) -> Optional[str]:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def replace(self, text: str) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class _RemoteFile:
    """An object in a bucket (epath). Creation is write-if-absent, then a read-back confirms it."""

    def __init__(self, url: str):
        from etils import epath

        self.path = epath.Path(url)

    def create(self, text: str) -> bool:
        if self.path.exists():
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(text)
        time.sleep(0.2)  # a concurrent writer's object would now have replaced ours
        return self.read() == text

    def read(self) -> Optional[str]:
        try:
            return self.path.read_text() if self.path.exists() else None
        except FileNotFoundError:
            return None

    def replace(self, text: str) -> None:
        self.path.write_text(text)

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()


class DirectoryLock:
    """The one-writer lock of `directory` (local or `gs://`); a context manager."""

    def __init__(self, directory, *, what: str = "directory", heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.directory = str(directory)
        self.what = what
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        url = "://" in self.directory
        self.lock_path = f"{self.directory.rstrip('/')}/{LOCK_NAME}" if url else str(Path(directory) / LOCK_NAME)
        self._file = _RemoteFile(self.lock_path) if url else _LocalFile(Path(self.lock_path))
        self._token = uuid.uuid4().hex
        self._info: dict = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.held = False

    def _record(self) -> str:
        now = time.time()
        if not self._info:
            self._info = {"host": socket.gethostname(), "pid": os.getpid(),
                          "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
                          "started": now, "token": self._token}
        self._info["heartbeat"] = now
        return json.dumps(self._info)

    def _stale_reason(self, info: Optional[dict]) -> Optional[str]:
        if info is None:
            return "unreadable"
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            if not _pid_alive(info["pid"]):
                return f"its holder (pid {info['pid']} on this host) is no longer running"
            return None
        age = time.time() - float(info.get("heartbeat") or 0)
        if age > self.stale_after_s:
            return f"its holder's heartbeat is {age:.0f} s old (pid {info.get('pid')} on {info.get('host')})"
        return None

    def _describe(self, info: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started") or 0)))
        return (f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command', '?')}`, since {since})")

    def acquire(self) -> "DirectoryLock":
        if "://" not in self.directory and os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"{self.directory} is a file, not a directory; choose a directory for the {self.what}")
        for _ in range(5):
            if self._file.create(self._record()):
                self.held = True
                self._start_heartbeat()
                return self
            text = self._file.read()
            if text is None:
                continue  # released in between
            try:
                info = json.loads(text)
            except json.JSONDecodeError:  # being written right now, or torn by a crash
                info = None
                if time.time() - self._mtime() < 5.0:
                    time.sleep(0.5)
                    continue
            reason = self._stale_reason(info)
            if reason is None:
                raise LockHeld(
                    f"{self.directory} is in use: another process writes this {self.what} ({self._describe(info)}); "
                    f"wait for it to finish or stop it, or use another directory (if that process is gone, "
                    f"delete {self.lock_path})")
            log.warning("%s: replacing a stale lock (%s)", self.directory, reason)
            self._file.remove()
        raise LockHeld(f"could not take the lock {self.lock_path} (it keeps changing); is another process starting?")

    def _mtime(self) -> float:
        try:
            return os.path.getmtime(self.lock_path)
        except OSError:
            return 0.0

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if self._still_ours():
                        self._file.replace(self._record())
                except Exception:  # a heartbeat must never kill the run
                    pass

        self._thread = threading.Thread(target=beat, name="jaxcoders-lock-heartbeat", daemon=True)
        self._thread.start()

    def _still_ours(self) -> bool:
        text = self._file.read()
        try:
            return text is not None and json.loads(text).get("token") == self._token
        except json.JSONDecodeError:
            return False

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._still_ours():
                self._file.remove()
        finally:
            self.held = False

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
