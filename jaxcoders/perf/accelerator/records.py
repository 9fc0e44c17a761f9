"""The check's JSON lines: one record per measurement or check, appended by every section's process."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from jaxcoders.perf.accelerator.plan import JSONL


class Recorder:
    """Appends JSON lines (one record each) to `<out>/accelerator_check.jsonl` and echoes them."""

    def __init__(self, out: Path, section: str):
        self.path = Path(out) / JSONL
        self.section = section

    def __call__(self, kind: str, **fields) -> dict:
        rec = {"kind": kind, "section": self.section,
               "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        rec.update(fields)
        line = json.dumps(rec, sort_keys=True, default=json_default)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        print(line, flush=True)
        return rec

    def check(self, name: str, passed: bool, **detail) -> bool:
        self("check", name=name, passed=bool(passed), **detail)
        return bool(passed)


def json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def read_records(out: Path) -> list[dict]:
    path = Path(out) / JSONL
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed process
                pass
    return recs
