"""The paper's L1 crosscoder: Gemma-2-2B vs Gemma-2-2B-it, layer 13, F = 32·2304, mu = 0.041.

    jaxcoders-train --config=gemma2_2b_l1 \
        --workdir=gs://YOUR_BUCKET/runs/gemma2-2b-L13-l1 \
        --config.data.store=gs://YOUR_BUCKET/acts/gemma2-2b-L13
"""
from jaxcoders.configs.gemma2_2b_l1 import get_config  # noqa: F401  (the preset lives in the package)
