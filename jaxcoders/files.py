"""Writing into paths a user names, without losing or mixing anything.

* `write_bytes_atomic` / `write_text_atomic`: a file is written to a temporary sibling and renamed
  over its name, so a crash leaves the old file or the new one, never half of one; the new file gets
  the ordinary permissions of the umask (not the 0600 of `tempfile`). Object stores (`gs://`): one
  object write is already atomic.
* `check_output_dir`: the rule of every command that writes files of its own into a user-named
  directory: a path that is a file is refused; an existing directory is used only when everything
  in it is one of the command's own file names (a previous output) unless `overwrite=True`; hidden
  names (`.*`) are not counted. Nothing else in the directory is ever deleted or renamed.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class OutputExistsError(ValueError):
    """A user-named output path that holds something the command did not write."""


def is_url(path) -> bool:
    return "://" in str(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` (local: temporary sibling + rename, mode 0666 & ~umask; URL: one object)."""
    if is_url(path):
        from etils import epath

        epath.Path(path).write_bytes(data)
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _listing(path) -> list[str] | None:
    """Names in directory `path` (local or URL); None when nothing is there."""
    if is_url(path):
        from etils import epath

        p = epath.Path(path)
        if not p.exists():
            return None
        if not p.is_dir():
            return [""]  # an object under that exact name
        return [c.name for c in p.iterdir()]
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return None
    if not p.is_dir():
        return [""]
    return [c.name for c in p.iterdir()]


def check_output_dir(path, own_names: Iterable[str], *, overwrite: bool = False, what: str = "output") -> None:
    """Refuse to write into `path` unless it is absent, empty, or holds only `own_names`.

    A file at `path` is always refused. `overwrite=True` accepts a directory holding other files (they
    are left as they are). Raises `OutputExistsError` (a ValueError) with what to do."""
    names = _listing(path)
    if names is None:
        return
    if names == [""]:
        raise OutputExistsError(f"{path} is a file, not a directory; choose another path for the {what}")
    own = set(own_names)
    foreign = sorted(n for n in names if n not in own and not n.startswith("."))  # hidden: ours or the OS's
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"{path} already holds files that are not a {what} ({shown}); choose an empty or new directory, "
            "or pass overwrite=True (--overwrite) to write beside them (nothing of theirs is removed)"
        )


def remove_stale(path, names: Iterable[str]) -> None:
    """Delete those of `names` (the command's own files from a previous output) that exist in `path`."""
    for name in names:
        if is_url(path):
            from etils import epath

            f = epath.Path(path) / name
            if f.exists():
                f.unlink()
        else:
            (Path(path) / name).unlink(missing_ok=True)


def write_files(path, files: dict[str, bytes], *, own_names: Iterable[str], overwrite: bool = False,
                what: str = "output") -> None:
    """Write `files` ({name: bytes}) into directory `path` (local or URL) under `check_output_dir`'s
    rule: each file atomically, in the given order; those of `own_names` not in `files` (left by an
    older output of the same command) are removed afterwards, nothing else is touched."""
    own = set(own_names) | set(files)
    check_output_dir(path, own, overwrite=overwrite, what=what)
    if is_url(path):
        from etils import epath

        epath.Path(path).mkdir(parents=True, exist_ok=True)
        join = lambda name: f"{str(path).rstrip('/')}/{name}"
    else:
        Path(path).mkdir(parents=True, exist_ok=True)
        join = lambda name: Path(path) / name
    for name, data in files.items():
        write_bytes_atomic(join(name), data)
    remove_stale(path, sorted(own - set(files)))


def sampled_digest(path, *, blocks: int = 4, block_bytes: int = 1 << 20) -> str:
    """A cheap fingerprint of a (possibly huge) local file: its size and the SHA-256 of `blocks`
    evenly spaced blocks of `block_bytes` (the whole file when it is smaller). Any rewrite of the file
    with other content almost surely changes it; reading it costs at most blocks * block_bytes."""
    import hashlib

    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= blocks * block_bytes:
            h.update(fh.read())
        else:
            for i in range(blocks):
                fh.seek((size - block_bytes) * i // (blocks - 1))
                h.update(fh.read(block_bytes))
    return f"{size}:{h.hexdigest()[:32]}"


OUTPUT_MARKER = ".jaxcoders-output"


def claim_output_dir(path, command: str, *, overwrite: bool = False) -> None:
    """Make `path` the output directory of `command` (local or URL), before any work is done.

    Accepted: a new or empty directory, or one this command wrote before (it holds the marker file
    `OUTPUT_MARKER` naming the command). A file is refused; a directory with other content is
    refused unless `overwrite` (`--overwrite`): the command then writes its files beside the others
    and removes nothing. The marker is written here."""
    names = _listing(path)
    if names == [""]:
        raise OutputExistsError(f"{path} is a file, not a directory; choose another output directory")
    if names:
        visible = [n for n in names if not n.startswith(".")]
        marker = _read_marker(path) if OUTPUT_MARKER in names else None
        if visible and marker != command and not overwrite:
            shown = ", ".join(sorted(visible)[:4]) + (f" and {len(visible) - 4} more" if len(visible) > 4 else "")
            owner = f"the output of `{marker}`" if marker else "files this command did not write"
            raise OutputExistsError(
                f"{path} already holds {owner} ({shown}); choose a new or empty directory, or pass --overwrite to "
                "write beside them (nothing there is deleted)")
    if is_url(path):
        from etils import epath

        epath.Path(path).mkdir(parents=True, exist_ok=True)
        write_text_atomic(f"{str(path).rstrip('/')}/{OUTPUT_MARKER}", command + "\n")
    else:
        Path(path).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(path) / OUTPUT_MARKER, command + "\n")


def _read_marker(path) -> str | None:
    try:
        if is_url(path):
            from etils import epath

            return (epath.Path(path) / OUTPUT_MARKER).read_text().strip()
        return (Path(path) / OUTPUT_MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def free_disk_bytes(path) -> int | None:
    """Free bytes on the filesystem that would hold local `path` (None if unknown or a URL)."""
    import shutil

    if is_url(path):
        return None
    p = os.path.abspath(str(path))
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None
