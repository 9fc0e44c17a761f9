"""Where a crosscoder comes from, resolved to local files every command can read.

    path = fetch_crosscoder("runs/btk")                                  # a workdir: its export/
    path = fetch_crosscoder("gs://bucket/runs/btk")                      # object stores alike
    path = fetch_crosscoder("science-of-finetuning/gemma-2-2b-crosscoder-l13-mu4.1e-02-lr1e-04")
    path = fetch_crosscoder("hf://org/name@v1/layer13")                  # revision, subfolder
    name = crosscoder_name(spec)                                         # for output folders

A spec is a local directory or file (the reference layout: model.safetensors + config.json; the
tied layout: model.safetensors or *.pt + cfg.json), a training workdir holding one in `export/`
(preferred) or `final/`, any of these behind a URL that etils reads (`gs://...`; downloaded to a
temporary directory once per process), or a Hugging Face Hub repo (`jaxcoders.io.hub`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jaxcoders.io.hub import CROSSCODER_FILES, CrosscoderNotFound, HubSpec, parse_hub_spec, snapshot

WEIGHT_NAMES = ("model.safetensors", "model.pt", "ae.pt", "pytorch_model.bin")
WORKDIR_SUBDIRS = ("export", "final")
_FETCHED: dict[str, Path] = {}


def is_url(spec) -> bool:
    """An object-store or other URL etils reads (not hf://, which is the hub)."""
    s = str(spec)
    return "://" in s and not s.startswith(("hf://", "file://"))


def _holds_crosscoder(p) -> bool:
    """A directory with a crosscoder's weights (the reference layout, or a tied *.pt + cfg.json)."""
    if any((p / name).is_file() for name in WEIGHT_NAMES):
        return True
    return (p / "cfg.json").is_file() and any(str(f.name).endswith(".pt") for f in p.iterdir())


def find_reference_dir(path) -> Path:
    """The local directory (or file) holding the crosscoder for a local `path`: the path itself,
    or a workdir's `export/` (preferred) or `final/`."""
    p = Path(os.path.expanduser(str(path)).removeprefix("file://"))
    if p.is_file() or (p.is_dir() and _holds_crosscoder(p)):
        return p
    for sub in WORKDIR_SUBDIRS:
        if (p / sub).is_dir() and _holds_crosscoder(p / sub):
            return p / sub
    raise CrosscoderNotFound(
        f"{path} is not a crosscoder directory (model.safetensors + config.json) nor a workdir with "
        f"one in {path}/export/ or {path}/final/" + ("" if p.exists() else " (it does not exist)")
        + "; pass a reference directory, a workdir, gs://..., org/name or hf://org/name")


def _download(url: str) -> Path:
    """Copy a crosscoder's files from an object store to a temporary directory (once per process)."""
    if url in _FETCHED:
        return _FETCHED[url]
    from etils import epath

    src = epath.Path(url)
    if not src.exists():
        raise CrosscoderNotFound(f"{url} does not exist")
    if not src.is_dir():  # a weights file: it and the configs beside it
        base, names = src.parent, [src.name] + [n for n in ("config.json", "trainer_config.json", "cfg.json",
                                                             "jaxcoders.json")]
    else:
        base = next((src / sub for sub in ("",) + WORKDIR_SUBDIRS
                     if any((src / sub / w).exists() for w in WEIGHT_NAMES + ("cfg.json",))), None)
        if base is None:
            raise CrosscoderNotFound(f"{url} is neither a crosscoder directory nor a workdir with one in export/ "
                                     "or final/")
        names = [f.name for f in base.iterdir() if any(f.match(p) for p in CROSSCODER_FILES)]
    local = Path(tempfile.mkdtemp(prefix="jaxcoders-crosscoder-"))
    for name in names:
        if (base / name).exists():
            (local / name).write_bytes((base / name).read_bytes())
    _FETCHED[url] = local / src.name if not src.is_dir() else local
    return _FETCHED[url]


def fetch_crosscoder(spec) -> Path:
    """A local directory or file holding the crosscoder named by `spec` (see the module docstring).
    Raises CrosscoderNotFound with one sentence naming the spec."""
    s = str(spec)
    if is_url(s):
        return find_reference_dir(_download(s.rstrip("/")))
    hub = parse_hub_spec(s)
    if hub is None:
        return find_reference_dir(s)
    try:
        return find_reference_dir(snapshot(hub))
    except CrosscoderNotFound as e:
        if s.startswith("hf://"):
            raise
        raise CrosscoderNotFound(f"{s} is not a local path, and {e}") from e


def crosscoder_name(spec) -> str:
    """A readable name for outputs: the directory name (a workdir's for export/ or final/), the hub
    repo's name (with its subfolder), or the URL's last component."""
    s = str(spec).rstrip("/")
    hub = parse_hub_spec(s)
    if hub is not None:
        name = hub.repo_id.split("/", 1)[1]
        return f"{name}-{hub.subfolder.replace('/', '-')}" if hub.subfolder else name
    parts = [p for p in s.split("/") if p]
    if is_url(s):
        parts = parts[1:]  # drop "gs:"
        while parts and parts[-1] in WORKDIR_SUBDIRS + ("model",):
            parts = parts[:-1]
        return Path(parts[-1]).stem if parts else "crosscoder"
    ref = find_reference_dir(s).resolve()
    if ref.name in WORKDIR_SUBDIRS + ("model",) and ref.parent.name:
        return ref.parent.name
    return ref.stem if ref.is_file() else ref.name


__all__ = ["CrosscoderNotFound", "HubSpec", "crosscoder_name", "fetch_crosscoder", "find_reference_dir", "is_url"]
