"""jaxcoders.interventions: causal evaluation of crosscoder edits and online analysis (docs/method.md §6).

Modules (torch is imported only by the torch-side ones, and only when they are used):

* `codes`   — crosscoder side (JAX, numpy in/out): codes, raw-space latent deltas, decoder
              directions, latent sets (best / worst half of chat-only latents by ν).
* `splice`  — (torch) a causal LM split after block L: read or replace the residual, continue.
* `edits`   — (torch) the edits: vanilla base/chat, base→chat, template-token patching,
              all latents (with the decoder-bias difference), latent subsets, steering.
* `metrics` — scored positions (assistant-predicting, first k per turn), CE / KL, bootstrap CIs.
* `run`     — the evaluation loop → interventions.json / .png (`experiments/interventions.py`).
* `online`  — per-token top latents of a prompt or chat (`experiments/inspect_prompt.py`).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "CrosscoderEdits": "jaxcoders.interventions.codes",
    "load_latent_sets": "jaxcoders.interventions.codes",
    "split_by_nu": "jaxcoders.interventions.codes",
    "SplitLM": "jaxcoders.interventions.splice",
    "load_split_model": "jaxcoders.interventions.splice",
    "Edit": "jaxcoders.interventions.edits",
    "EditContext": "jaxcoders.interventions.edits",
    "make_edits": "jaxcoders.interventions.edits",
    "InterventionConfig": "jaxcoders.interventions.run",
    "run_interventions": "jaxcoders.interventions.run",
    "inspect_prompt": "jaxcoders.interventions.online",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxcoders.interventions' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
