"""The files of a run directory besides checkpoints: the resolved `config.json` (a resumed run must
match it: `jaxcoders.training.resume`) and `metrics.jsonl`. Local paths and object stores (`gs://`)
alike (`etils.epath`)."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from jaxcoders.files import write_text_atomic


def resolved_config(model_cfg, train_cfg, run_cfg, extra: Optional[dict]) -> dict:
    def plain(dc):
        d = dataclasses.asdict(dc)
        return {k: (v.name if hasattr(v, "name") else v) for k, v in d.items()}

    return {"model": plain(model_cfg), "train": plain(train_cfg), "run": plain(run_cfg), "data": extra or {}}


def is_remote(path) -> bool:
    return "://" in str(path)


def write_config(workdir, resolved: dict) -> None:
    """Write `<workdir>/config.json` (atomically)."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(workdir / "config.json", json.dumps(resolved, indent=2, sort_keys=True))


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
