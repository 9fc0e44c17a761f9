"""The files of a run directory besides checkpoints: the resolved `config.json` (a resumed run must
match it) and `metrics.jsonl`. Local paths and object stores (`gs://`) alike (`etils.epath`)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional


def resolved_config(model_cfg, train_cfg, run_cfg, extra: Optional[dict]) -> dict:
    def plain(dc):
        d = dataclasses.asdict(dc)
        return {k: (v.name if hasattr(v, "name") else v) for k, v in d.items()}

    return {"model": plain(model_cfg), "train": plain(train_cfg), "run": plain(run_cfg), "data": extra or {}}


# keys that may change between a run and its resumption
_RESUMABLE_KEYS = {("run", "log_every"), ("run", "eval_every"), ("run", "eval_batches"),
                   ("run", "checkpoint_every"), ("run", "keep_checkpoints"), ("run", "export"),
                   ("run", "async_checkpoint"), ("run", "mesh_data"), ("run", "mesh_latent"),
                   ("run", "tensorboard"), ("run", "wandb_project"), ("run", "wandb_entity"),
                   ("run", "wandb_run_name"), ("run", "wandb_tags")}


def is_remote(path) -> bool:
    return "://" in str(path)


def write_text_atomic(path, text: str) -> None:
    """Local files: write a temporary sibling and rename (a crash never leaves half a file).
    Object stores (gs://): a single object write is already atomic."""
    from etils import epath

    path = epath.Path(path)
    if is_remote(path):
        path.write_text(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(str(tmp), str(path))


def check_or_write_config(workdir, resolved: dict, is_writer: bool) -> None:
    path = workdir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diffs = []
        for section in ("model", "train", "run", "data"):
            for key in sorted(set(old.get(section, {})) | set(resolved.get(section, {}))):
                if (section, key) in _RESUMABLE_KEYS:
                    continue
                a, b = old.get(section, {}).get(key), resolved.get(section, {}).get(key)
                if a != b:
                    diffs.append(f"{section}.{key}: {a!r} -> {b!r}")
        if diffs:
            raise ValueError(
                f"{workdir} holds a run with a different config ({'; '.join(diffs[:6])}); "
                "use a new --workdir, or rerun with the original flags to resume"
            )
        return
    if is_writer:
        workdir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(resolved, indent=2, sort_keys=True))


class MetricsLog:
    """`metrics.jsonl`: rows of steps >= the resumed step are dropped at start (they were written
    after the checkpoint we resume from). Local files are appended to; object stores, which cannot
    append, get the whole (small) file rewritten at each write."""

    def __init__(self, path, start_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        self.rows: list[str] = []
        if not enabled:
            return
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", -1) < start_step:
                        self.rows.append(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
        write_text_atomic(path, "".join(r + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(row)
        self.rows.append(line)
        if is_remote(self.path):
            self.path.write_text("".join(r + "\n" for r in self.rows))
        else:
            with open(str(self.path), "a") as fh:
                fh.write(line + "\n")
