"""The accelerator check: correctness and throughput on one device, in one prepared run.

    # on a GPU/TPU machine (≤ 8 minutes on one H200): the Gemma-2-2B preset
    python experiments/accelerator_check.py --out=accel_out
    # on CPU (what CI runs): the same code paths at small shapes, in seconds
    python experiments/accelerator_check.py --out=/tmp/accel --size=small --sections=env,selection,steps

Writes `<out>/accelerator_check.jsonl` (one JSON line per measurement or check),
`<out>/accelerator_check.md` (the tables), `<out>/accelerator_check.log` (each section's stderr)
and, for the pytest section, `<out>/pytest_accelerator.log`. Every section runs in its own
process under one wall-clock budget (`--budget_s`); a failing section is recorded and the rest
still run. Exit status 0 only if every section finished and every check passed.
What each section measures: `jaxcoders/perf/accelerator/`. Results: docs/accelerators.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

# Before jax starts: every process takes the device memory it uses, not 75 % of it up front (the
# driver and each section's process share the device).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from jaxcoders.perf import accelerator as acc  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "accelerator_check_out", "Output directory (JSONL, markdown, logs).")
flags.DEFINE_enum("size", "auto", ["auto", *acc.SIZES], "Shapes: gemma (accelerators), small (CPU); auto = gemma on "
                  "GPU/TPU, small on CPU.")
flags.DEFINE_list("sections", ["all"], f"Sections to run, in order: all or any of {', '.join(acc.SECTIONS)} "
                  "(or step:<i> for one train-step configuration). 'all' on CPU leaves out pytest.")
flags.DEFINE_float("budget_s", 450.0, "Wall-clock budget of the whole check (s); sections that do not fit are "
                   "recorded as skipped.")
flags.DEFINE_string("section", "", "Internal: run one section in this process.")
flags.DEFINE_float("section_timeout", 0.0, "Internal: the section's own time limit (s).")


def _backend() -> str:
    import jax

    return jax.default_backend()


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)  # one clear sentence, no traceback
    sys.exit(2)


@user_errors
def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.budget_s <= 0:
        _fail(f"--budget_s must be positive, got {FLAGS.budget_s:g}")
    out = Path(FLAGS.out)
    if FLAGS.section:
        size = acc.SIZES["small" if FLAGS.size == "auto" and _backend() == "cpu" else
                         ("gemma" if FLAGS.size == "auto" else FLAGS.size)]
        acc.run_section(FLAGS.section, size, out, FLAGS.section_timeout or 600.0)
        return
    if out.exists() and not out.is_dir():
        _fail(f"--out={out} is a file; give a directory")
    if (out / acc.JSONL).exists():
        _fail(f"--out={out} already holds {acc.JSONL}; choose a new directory (results are never overwritten)")
    sections = list(FLAGS.sections)
    size = FLAGS.size
    if sections == ["all"] or size == "auto":
        backend = _backend()  # the driver itself touches the device only here
        if size == "auto":
            size = "small" if backend == "cpu" else "gemma"
        if sections == ["all"]:
            sections = [s for s in acc.SECTIONS if not (s == "pytest" and backend == "cpu")]
    try:
        acc.expand_sections(sections)
    except ValueError as e:
        _fail(str(e))
    failures = acc.drive(Path(__file__).resolve(), out, size, sections, FLAGS.budget_s)
    print(f"wrote {out / acc.JSONL} and {out / acc.MARKDOWN}; {failures} failed check(s)/section(s)")
    sys.exit(1 if failures else 0)


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
