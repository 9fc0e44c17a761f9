"""The research update's tied crosscoder at the Gemma-2-2B size (latent triples shared/base/chat).

    jaxcoders-train --config=gemma2_2b_tied --workdir=gs://YOUR_BUCKET/runs/gemma2-2b-L13-tied \
        --config.data.store=gs://YOUR_BUCKET/acts/gemma2-2b-L13
"""
from jaxcoders.configs.gemma2_2b_tied import get_config  # noqa: F401  (the preset lives in the package)
