"""What the accelerator check measures: sizes, the train-step configurations, the sections and
their time caps, the correctness tolerances, the output file names."""
from __future__ import annotations

import dataclasses

JSONL = "accelerator_check.jsonl"


MARKDOWN = "accelerator_check.md"


LOG = "accelerator_check.log"


PYTEST_LOG = "pytest_accelerator.log"


# bf16 matmul inputs (f32 accumulation) against the f32 step on the same inputs and weights:
# relative error of the loss and relative L2 error of each gradient (‖g_bf16 − g_f32‖ / ‖g_f32‖).
# BatchTopK's gradient bound is looser: bf16 scores can move entries across the selection cut.
BF16_TOLERANCE = {"loss": 1e-2, "grad_l1": 0.1, "grad_batchtopk": 0.2}


# f32 sparse vs dense BatchTopK (same selection, other summation order)
SPARSE_TOLERANCE = {"loss": 1e-5, "grad": 1e-4, "params_after_steps": 1e-4}


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    D: int
    F: int
    B: int
    k: int
    matmul_n: int  # n of the n×n×n peak matmuls
    copy_mib: int  # bytes of the copy-bandwidth test
    eq: tuple  # (D, F, B, k) of the equivalence section
    steps: int  # timed steps per configuration
    extract_tokens: int  # tokens per dataset of the extraction benchmark (0 = skip)
    extract_model: str  # "gemma2-2b" or "tiny"


SIZES = {
    "gemma": Size("gemma", 2304, 73728, 4096, 100, 8192, 2048, (512, 16384, 2048, 32), 6, 131072, "gemma2-2b"),
    "small": Size("small", 64, 1024, 256, 8, 256, 16, (16, 256, 64, 4), 3, 2048, "tiny"),
}


# The train-step configurations timed (BatchTopK k = the size's k). Selection methods are compared
# on the sparse bf16 step (where selection is the largest share) and timed alone in "selection".
# profile=True also records the device's top kernels over 3 profiled steps (`top_device_ops`).
STEP_SPECS = (
    dict(arch="l1", dtype="bfloat16", profile=True),
    dict(arch="l1", dtype="float32"),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="dense", selection="topk", profile=True),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="sparse", selection="topk", profile=True),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="sparse", selection="radix"),
    dict(arch="batchtopk", dtype="bfloat16", decoder_mode="sparse", selection="pallas"),
    dict(arch="batchtopk", dtype="float32", decoder_mode="dense", selection="topk"),
    dict(arch="batchtopk", dtype="float32", decoder_mode="sparse", selection="topk"),
)


SECTIONS = ("env", "selection", "steps", "equivalence", "latent_scaling", "extraction", "pytest")


# Wall-clock caps per section (s); "steps" is per configuration. The global budget cuts them shorter.
SECTION_CAP_S = {"env": 60, "selection": 120, "steps": 60, "equivalence": 160, "latent_scaling": 60,
                 "extraction": 150, "pytest": 150}
