"""jaxcoders.paper: the paper's figures and tables for one L1 and one BatchTopK crosscoder, from one
command (`experiments/paper.py`, docs/paper.md). Composition of the package's analyses
(`jaxcoders.analysis`), causal evaluation (`jaxcoders.interventions`) and trainer (the separate-SAE
baseline); it sits above them (layer 6) and below the demo, which runs it.

Modules: `config` (PaperConfig, from a demo output), `inputs`, `tables` (latent tables and the frames
behind the figures), `baseline` (separate SAEs), `causal`, `figures`, `document` (paper.md), `run`
(`run_paper`).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "PaperConfig": "jaxcoders.paper.config",
    "PaperError": "jaxcoders.paper.config",
    "run_paper": "jaxcoders.paper.run",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxcoders.paper' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
