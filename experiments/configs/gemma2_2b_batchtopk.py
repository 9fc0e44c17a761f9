"""The paper's BatchTopK crosscoder: Gemma-2-2B vs Gemma-2-2B-it, layer 13, F = 32·2304, k = 100.

Extract the activations first (docs/pipeline.md), then on a GPU host or a TPU VM:

    jaxcoders-train --config=gemma2_2b_batchtopk \
        --workdir=gs://YOUR_BUCKET/runs/gemma2-2b-L13-btk100 \
        --config.data.store=gs://YOUR_BUCKET/acts/gemma2-2b-L13

On a TPU pod slice, launch the same command on every worker with tpu/run.sh.
"""
from jaxcoders.configs.gemma2_2b_batchtopk import get_config  # noqa: F401  (the preset lives in the package)
