"""The driver: every section in its own subprocess under one wall-clock budget, then the report."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from jaxcoders.perf.accelerator.other_sections import (
    section_env,
    section_extraction,
    section_latent_scaling,
    section_pytest,
)
from jaxcoders.perf.accelerator.plan import LOG, MARKDOWN, SECTION_CAP_S, SECTIONS, STEP_SPECS, Size
from jaxcoders.perf.accelerator.records import Recorder, read_records
from jaxcoders.perf.accelerator.report import render_markdown
from jaxcoders.perf.accelerator.train_sections import section_equivalence, section_selection, section_step


def run_section(name: str, size: Size, out: Path, timeout: float) -> None:
    """Run one section in this process (the driver's subprocess)."""
    rec = Recorder(out, name)
    if name == "env":
        section_env(size, rec)
    elif name == "selection":
        section_selection(size, rec)
    elif name.startswith("step:"):
        section_step(size, STEP_SPECS[int(name.split(":", 1)[1])], rec)
    elif name == "equivalence":
        section_equivalence(size, rec)
    elif name == "latent_scaling":
        section_latent_scaling(size, rec)
    elif name == "extraction":
        section_extraction(size, rec)
    elif name == "pytest":
        section_pytest(size, rec, out, timeout)
    else:
        raise ValueError(f"unknown section {name!r}; choose from {SECTIONS}")


def expand_sections(sections) -> list[str]:
    out = []
    for s in sections:
        if s == "steps":
            out += [f"step:{i}" for i in range(len(STEP_SPECS))]
        elif s in SECTIONS:
            out.append(s)
        elif s.startswith("step:") and s[5:].isdigit() and int(s[5:]) < len(STEP_SPECS):
            out.append(s)
        elif s.startswith("step:"):
            raise ValueError(f"unknown step configuration {s!r}; choose step:0 … step:{len(STEP_SPECS) - 1}")
        else:
            raise ValueError(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    return out


def drive(script: Path, out: Path, size: str, sections, budget_s: float, env: Optional[dict] = None) -> int:
    """Run every section in a subprocess of `script --section=...` within `budget_s` seconds in all;
    then write the markdown report. Returns the number of failed checks and failed sections."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    rec = Recorder(out, "driver")
    child_env = dict(os.environ if env is None else env)
    root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, child_env.get("PYTHONPATH")]))
    child_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # each process takes what it uses
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    failures = 0
    log_path = out / LOG
    for name in expand_sections(sections):
        left = deadline - time.monotonic()
        cap = SECTION_CAP_S["steps" if name.startswith("step:") else name]
        if left < 5:
            rec("skipped", what=name, reason=f"budget of {budget_s:.0f} s spent")
            failures += 1
            continue
        timeout = min(cap, left)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(script), f"--section={name}", f"--size={size}", f"--out={out}",
               f"--section_timeout={timeout:.0f}"]
        with open(log_path, "a") as log:
            log.write(f"\n===== {name} (timeout {timeout:.0f} s)\n")
            log.flush()
            try:
                p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log, env=child_env, timeout=timeout)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        wall = time.perf_counter() - t0
        if rc != 0:
            failures += 1
            rec("error", what=name, returncode=rc, wall_s=round(wall, 1), log_tail=_tail(log_path, 6))
        else:
            rec("section", what=name, wall_s=round(wall, 1))
        print(f"# {name}: rc={rc} in {wall:.1f} s", file=sys.stderr, flush=True)
    recs = read_records(out)
    failures += sum(1 for r in recs if r["kind"] == "check" and not r["passed"])
    (out / MARKDOWN).write_text(render_markdown(recs))
    return failures


def _tail(path: Path, n: int) -> str:
    """The last `n` lines of the log's last section, ending at its last exception line if any."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text[text.rfind("\n===== "):].splitlines() if ln.strip()]
    exc = [i for i, ln in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln)]
    end = exc[-1] + 1 if exc else len(lines)
    return "\n".join(lines[max(0, end - n):end])[-1500:]
