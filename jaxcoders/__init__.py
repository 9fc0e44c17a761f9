"""jaxcoders: crosscoder-based model diffing in JAX/Flax.

Public API (see README.md):

    model = jaxcoders.load_reference(path)        # reference (dictionary_learning) directory -> CrossCoder
    f = model.encode(x)                           # x (B, M, D) -> (B, F)   [(B, M, F) for BatchTopK DECOUPLED]
    x_hat = model.decode(f)                       # (B, M, D)
    jaxcoders.save_reference(model, out_dir)
    model, losses = jaxcoders.fit(model, batches, jaxcoders.TrainConfig(...))

Submodules are imported lazily so that `import jaxcoders.data` (or the torch-side extraction)
does not pull in the whole package.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "CrossCoderConfig": "jaxcoders.config",
    "TrainConfig": "jaxcoders.config",
    "CodeNormalization": "jaxcoders.config",
    "RunConfig": "jaxcoders.config",
    "CrossCoder": "jaxcoders.core.module",
    "CrossCoderParams": "jaxcoders.core.params",
    "fit": "jaxcoders.training.fit",
    "train_and_evaluate": "jaxcoders.training.loop",
    "load_reference": "jaxcoders.io.reference",
    "save_reference": "jaxcoders.io.reference",
    "upload_to_hub": "jaxcoders.io.reference",
    "latent_scaling": "jaxcoders.analysis.scaling",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxcoders' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
