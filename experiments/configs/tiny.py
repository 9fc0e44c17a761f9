"""A tiny BatchTopK run on planted synthetic activations: a smoke test that needs no store.

    jaxcoders-train --config=tiny --workdir=/tmp/jaxcoders_tiny
    python experiments/train.py --config=experiments/configs/tiny.py --workdir=/tmp/jaxcoders_tiny

With a store instead of synthetic data:

    jaxcoders-train --config=tiny --workdir=/tmp/tiny_store \
        --config.data.synthetic=False --config.data.store=/tmp/acts_store
"""
from jaxcoders.configs.tiny import get_config  # noqa: F401  (the preset lives in the package)
