"""The accelerator check: correctness and throughput of jaxcoders on one device, in one prepared run.

`experiments/accelerator_check.py` drives it. Every section runs in its own subprocess (a crash,
an out-of-memory or a compile failure costs that section only, and each process's peak device
memory is its own), under one wall-clock budget; sections append JSON lines to
`<out>/accelerator_check.jsonl` and the driver renders `<out>/accelerator_check.md` from them.

Sections, in the order they run (what matters most first):

* ``env``: device, versions, the measured ceilings: dense matmul rate in bf16 and in f32
  (`Precision.HIGHEST`) on n×n×n products, device-to-device copy bandwidth.
* ``selection``: at the size's (B, F) and k, every selection method (`topk`, `radix`, `pallas`),
  whole-matrix (`selection.batch_topk_mask`) and on candidates (`sparse.select_entries`), must
  give `lax.top_k`'s mask bit for bit, on ReLU(normal) scores, on scores with heavy ties
  straddling the cut, and with a traced k; then each is timed.
* ``step:<i>``: one train-step configuration each (`STEP_SPECS`): compile time, XLA's compiled
  memory, device peak memory, ms/step, tokens/s, executed matmul FLOP/s, the encoder forward
  alone (step / encoder-forward ratio).
* ``equivalence``: at a moderate size, the sparse BatchTopK loss, gradients and train steps
  against the dense ones; bf16 matmul inputs against f32 (`BF16_TOLERANCE`); the step jitted
  on a one-device mesh against the plain step; the sharded selection against the unsharded one.
* ``latent_scaling``: the Latent Scaling pass against a plain encode pass (same driver,
  device-resident batch).
* ``extraction``: a randomly initialised Gemma-2-2B-shaped model (same config, random weights,
  no download) through the real extraction into a local store, against bare forwards of the
  same model (`jaxcoders.extract.bench`).
* ``pytest``: the tests marked `accelerator` (`pytest -m accelerator`) on the device's backend.

Sizes: "gemma" (D=2304, F=73728, B=4096, k=100: the Gemma-2-2B preset) for accelerators,
"small" for CPU (the same code paths in seconds; CI runs it).
"""
from jaxcoders.perf.accelerator.driver import drive, expand_sections, run_section
from jaxcoders.perf.accelerator.measure import (
    compiled_bytes,
    copy_bandwidth,
    device_peak_bytes,
    matmul_rate,
    median,
    time_calls,
    top_device_ops,
)
from jaxcoders.perf.accelerator.other_sections import (
    section_env,
    section_extraction,
    section_latent_scaling,
    section_pytest,
)
from jaxcoders.perf.accelerator.plan import (
    BF16_TOLERANCE,
    JSONL,
    LOG,
    MARKDOWN,
    PYTEST_LOG,
    SECTION_CAP_S,
    SECTIONS,
    SIZES,
    SPARSE_TOLERANCE,
    STEP_SPECS,
    Size,
)
from jaxcoders.perf.accelerator.records import Recorder, read_records
from jaxcoders.perf.accelerator.report import render_markdown
from jaxcoders.perf.accelerator.train_sections import (
    section_equivalence,
    section_selection,
    section_step,
    step_setup,
)

__all__ = [
    "BF16_TOLERANCE",
    "JSONL",
    "LOG",
    "MARKDOWN",
    "PYTEST_LOG",
    "Recorder",
    "SECTIONS",
    "SECTION_CAP_S",
    "SIZES",
    "SPARSE_TOLERANCE",
    "STEP_SPECS",
    "Size",
    "compiled_bytes",
    "copy_bandwidth",
    "device_peak_bytes",
    "drive",
    "expand_sections",
    "matmul_rate",
    "median",
    "read_records",
    "render_markdown",
    "run_section",
    "section_env",
    "section_equivalence",
    "section_extraction",
    "section_latent_scaling",
    "section_pytest",
    "section_selection",
    "section_step",
    "step_setup",
    "time_calls",
    "top_device_ops",
]
