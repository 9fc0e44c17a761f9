"""Object stores (gs://, and any URL etils.epath reads) for the commands' inputs and outputs.

The analysis commands compute on local files; these helpers make a URL look like a local folder:

    with local_output("gs://bucket/analysis") as out:       # a temporary folder, uploaded on exit
        write_outputs(..., out / "btk")                       # (with keep=True its present content
                                                              #  is downloaded first)
    d = local_copy("gs://bucket/analysis/btk")               # a folder (or file) downloaded once

Local paths pass through unchanged. Uploads happen only when the block finishes without an error,
file by file (each object write is atomic on GCS), so a failed command leaves what was there.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from jaxcoders.io.sources import is_url

_COPIES: dict[str, Path] = {}


def _epath(url: str):
    from etils import epath

    return epath.Path(url)


def _download_tree(src, dest: Path) -> None:
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            _download_tree(child, dest / child.name)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())


def _upload_tree(src: Path, dest) -> None:
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            _upload_tree(child, dest / child.name)
    else:
        dest.write_bytes(src.read_bytes())


def local_copy(spec) -> Path:
    """A local path for `spec`: itself when local; a URL's file or folder downloaded to a temporary
    folder (once per process). Raises FileNotFoundError when the URL does not exist."""
    s = str(spec)
    if not is_url(s):
        return Path(s)
    s = s.rstrip("/")
    if s not in _COPIES:
        src = _epath(s)
        if not src.exists():
            raise FileNotFoundError(f"{s} does not exist")
        local = Path(tempfile.mkdtemp(prefix="jaxcoders-copy-")) / src.name
        _download_tree(src, local)
        _COPIES[s] = local
    return _COPIES[s]


@contextlib.contextmanager
def local_output(spec, *, keep: bool = False) -> Iterator[Path]:
    """A local folder for outputs meant for `spec`: `spec` itself when local (created), else a
    temporary folder uploaded to the URL when the block ends without an error. `keep=True` first
    downloads what the URL already holds (outputs that read earlier outputs, e.g. examples that
    reuse analyze's max activations)."""
    s = str(spec)
    if not is_url(s):
        p = Path(s)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="jaxcoders-out-"))
    try:
        dest = _epath(s.rstrip("/"))
        if keep and dest.exists():
            _download_tree(dest, tmp)
        yield tmp
        _upload_tree(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shown(path, local_root: Path, spec) -> str:
    """How to name an output written under `local_root` for `spec`: the URL it was uploaded to."""
    if not is_url(str(spec)):
        return str(path)
    return f"{str(spec).rstrip('/')}/{Path(path).relative_to(local_root).as_posix()}"
