"""Resuming a run without mixing: what a checkpoint was trained with must be what the rerun asks
for, and a checkpoint that does not restore is set aside for the newest one that does.

* Every checkpoint's JSON record holds the resolved run config (`workdir.resolved_config`: model,
  train and run sections, and the data's description with its fingerprint). A rerun compares its
  own resolved config with `config.json` *and* with the checkpoint it resumes; any difference
  outside `RESUMABLE_KEYS` is refused (`ResumeMismatch`) naming the keys and the two ways out: a
  new workdir, or `allow_config_change=True` (`--allow_config_change`), which resumes anyway and
  rewrites `config.json`.
* Restoring walks the checkpoints newest first. One whose record or arrays do not read (a
  truncated file, a torn copy) is reported by path and moved to `<workdir>/checkpoints_broken/`
  (never deleted), and the previous one is tried. On object stores (gs://) and with several
  processes nothing is moved: the error gives the command that moves it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Optional

from jaxcoders.files import free_disk_bytes
from jaxcoders.training.workdir import is_remote

log = logging.getLogger(__name__)

# keys that may change between a run and its resumption: how it is run, not what it learns
RESUMABLE_KEYS = {("run", "log_every"), ("run", "eval_every"), ("run", "eval_batches"),
                  ("run", "checkpoint_every"), ("run", "keep_checkpoints"), ("run", "export"),
                  ("run", "async_checkpoint"), ("run", "mesh_data"), ("run", "mesh_latent"),
                  ("run", "tensorboard"), ("run", "wandb_project"), ("run", "wandb_entity"),
                  ("run", "wandb_run_name"), ("run", "wandb_tags")}
BROKEN_DIR = "checkpoints_broken"


class ResumeMismatch(ValueError):
    """The rerun's config or data differ from what the workdir's run was trained with."""


class CheckpointError(ValueError):
    """No checkpoint of the workdir restores (and it could not be set aside automatically)."""


def config_diffs(old: dict, new: dict) -> list[str]:
    """`section.key: old -> new` for every key that differs (RESUMABLE_KEYS aside)."""
    diffs = []
    for section in ("model", "train", "run", "data"):
        a_sec, b_sec = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a_sec) | set(b_sec)):
            if (section, key) in RESUMABLE_KEYS:
                continue
            a, b = a_sec.get(key), b_sec.get(key)
            if a != b:
                diffs.append(f"{section}.{key}: {a!r} -> {b!r}")
    return diffs


def mismatch_error(workdir, diffs: list[str], against: str) -> ResumeMismatch:
    shown = "; ".join(d if len(d) < 160 else d[:157] + "..." for d in diffs[:4])
    more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
    return ResumeMismatch(
        f"{workdir} holds a run trained with a different config or data than this command ({against}: "
        f"{shown}{more}); use a new --workdir, rerun with the original flags and data, or pass "
        "--allow_config_change to resume that run with the new settings")


def read_config_json(path) -> Optional[dict]:
    """The workdir's config.json (None when absent); a corrupt file is an error naming it."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResumeMismatch(
            f"{path} is corrupt ({e}); restore it from a backup, or delete it to resume from what the "
            "checkpoints record") from e


RUN_ENTRIES = ("config.json", "metrics.jsonl", "checkpoints", BROKEN_DIR, "export", "tensorboard", "wandb_run_id")


def check_workdir(workdir) -> None:
    """A workdir without config.json must be new, empty or hold only a run's own entries (a run
    killed before writing config.json): never a directory of other files, whose numbered
    subdirectories the checkpoint manager could take for its own."""
    if not workdir.exists():
        return
    if not workdir.is_dir():
        raise ResumeMismatch(f"--workdir={workdir} is a file; choose a directory for the run")
    foreign = sorted(p.name for p in workdir.iterdir() if not p.name.startswith(".") and p.name not in RUN_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ResumeMismatch(f"--workdir={workdir} is not a training workdir (it holds {shown}); choose a new or "
                             "empty directory for the run")


def check_room_for_checkpoint(directory: str, state: Any, step: int) -> None:
    """Refuse (ENOSPC, before anything is written) a checkpoint the local disk cannot hold: the
    state's bytes plus 10 % and 1 MiB (orbax writes the new step before it drops the oldest). A
    full disk then costs nothing but this message; the previous checkpoints stay as they are."""
    import errno

    import jax

    free = free_disk_bytes(directory)
    if free is None:
        return
    need = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) * 1.1) + (1 << 20)
    if need > free:
        raise OSError(errno.ENOSPC, f"checkpoint {step} needs about {need / 1e6:.1f} MB but {free / 1e6:.1f} MB are free "
                      f"in {directory}; the disk is full (the earlier checkpoints are kept)", directory)


def _first_line(e: BaseException) -> str:
    """The error's gist: its first line without tensorstore's spec dump, the end kept when long (the
    cause is last in tensorstore's chained messages)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0].split(" [tensorstore_spec")[0]
    return line if len(line) <= 220 else "..." + line[-200:]


def _move_aside(workdir, step_path: str) -> str:
    dest_root = os.path.join(str(workdir), BROKEN_DIR)
    os.makedirs(dest_root, exist_ok=True)
    dest = os.path.join(dest_root, os.path.basename(step_path.rstrip("/")))
    if os.path.exists(dest):
        dest += time.strftime("-%Y%m%d-%H%M%S")
    shutil.move(step_path, dest)
    return dest


def restore_latest(ckpt, state: Any, workdir, resolved: dict, *, allow_config_change: bool, can_move: bool,
                   have_config_json: bool) -> tuple[Any, Optional[dict]]:
    """(state, meta) of the newest checkpoint that restores, or (state, None) when there is none.

    The checkpoint's recorded config is compared with `resolved` first (a mismatch is never taken
    for corruption). `can_move`: whether a broken checkpoint may be moved aside (one local process)."""
    tried, broken = set(), []
    while True:
        steps = [s for s in sorted(ckpt.all_steps(), reverse=True) if s not in tried]
        if not steps:
            if broken:
                raise CheckpointError(
                    f"none of the checkpoints of {workdir} restores ({', '.join(broken)} moved to "
                    f"{str(workdir).rstrip('/')}/{BROKEN_DIR}/); rerun the same command to start the run again from "
                    "step 0, or restore a checkpoint")
            return state, None
        step = steps[0]
        tried.add(step)
        path = ckpt.step_path(step)
        try:
            meta = ckpt.read_meta(step)
            if not isinstance(meta, dict) or "step" not in meta or "cursor" not in meta:
                raise ValueError("its record (meta) lacks the step or the data cursor")
        except Exception as e:  # noqa: BLE001 - any read failure means: this checkpoint is broken
            _set_aside(ckpt, workdir, path, e, can_move)
            broken.append(str(step))
            continue
        recorded = meta.get("config")
        if recorded is None and not have_config_json and not allow_config_change:
            raise ResumeMismatch(
                f"{workdir} has checkpoints but no config.json, and checkpoint {step} does not record its config, "
                "so this command's config cannot be checked against it; use a new --workdir, restore config.json, "
                "or pass --allow_config_change to resume it with this command's config")
        if recorded is not None and not allow_config_change:
            diffs = config_diffs(recorded, resolved)
            if diffs:
                raise mismatch_error(workdir, diffs, f"checkpoint {step}")
        try:
            with _stderr_held() as held:
                try:
                    return ckpt.restore(step, state)
                except Exception:
                    held.drop()  # the failed restore's pending reads print asyncio noise; our message says it all
                    raise
        except Exception as e:  # noqa: BLE001
            if allow_config_change and recorded is not None and config_diffs(recorded, resolved):
                raise CheckpointError(
                    f"checkpoint {path} does not fit this command's config ({_first_line(e)}); the changed "
                    "settings cannot resume this run: use a new --workdir") from e
            _set_aside(ckpt, workdir, path, e, can_move)
            broken.append(str(step))


class _stderr_held:
    """Holds what is written to file descriptor 2 (also by C++ and threads) while a checkpoint
    restores: replayed afterwards, or dropped (after a grace period for late writes) on failure."""

    GRACE_S = 0.5

    def __enter__(self):
        import tempfile

        self._drop = False
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (e.g. an embedding host): hold nothing
            self._saved = None
            return self
        self._tmp = tempfile.TemporaryFile()
        os.dup2(self._tmp.fileno(), 2)
        return self

    def drop(self) -> None:
        self._drop = True
        time.sleep(self.GRACE_S)

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if not self._drop:
            self._tmp.seek(0)
            data = self._tmp.read()
            if data:
                os.write(2, data)
        self._tmp.close()
        return False


def _set_aside(ckpt, workdir, path: str, error: BaseException, can_move: bool) -> None:
    if not can_move or is_remote(path):
        dest = f"{str(workdir).rstrip('/')}/{BROKEN_DIR}/"
        mover = "gcloud storage mv" if is_remote(path) else "mv"
        raise CheckpointError(
            f"checkpoint {path} does not restore ({_first_line(error)}); move it aside "
            f"(`{mover} {path} {dest}`) and rerun the same command to resume from the previous checkpoint"
        ) from error
    dest = _move_aside(workdir, path)
    log.warning("checkpoint %s does not restore (%s); moved it to %s and trying the previous one",
                path, _first_line(error), dest)
    ckpt.reload()
