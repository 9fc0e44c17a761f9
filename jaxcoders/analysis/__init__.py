"""jaxcoders.analysis: streaming latent analyses (Latent Scaling, usage statistics, decoder metrics).

Exports are lazy so importing a submodule stays cheap. Latent Scaling is
`jaxcoders.analysis.latent_scaling` (= `jaxcoders.latent_scaling`, in the submodule `scaling`)."""
from __future__ import annotations

import importlib

_LAZY = {
    "usage_statistics": "jaxcoders.analysis.stats",
    "decoder_metrics": "jaxcoders.analysis.decoder",
    "analyze": "jaxcoders.analysis.tables",
    "write_outputs": "jaxcoders.analysis.tables",
    "summary_line": "jaxcoders.analysis.tables",
    "run_pass": "jaxcoders.analysis.stream",
    "make_mesh": "jaxcoders.analysis.mesh",
    "latent_scaling": "jaxcoders.analysis.scaling",
    "collect_examples": "jaxcoders.analysis.examples",
    "write_examples": "jaxcoders.analysis.examples",
    "load_examples": "jaxcoders.analysis.examples",
    "max_activations": "jaxcoders.analysis.examples",
    "build_report": "jaxcoders.analysis.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxcoders.analysis' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
