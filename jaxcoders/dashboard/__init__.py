"""jaxcoders.dashboard: a local, interactive crosscoder dashboard (Streamlit), the online companion of
the static report (docs/dashboard.md).

    python experiments/dashboard.py --demo_out=demo_out --port=8501
    python experiments/dashboard.py --crosscoder=runs/btk --base_model=google/gemma-2-2b \\
        --chat_model=google/gemma-2-2b-it --layer=13 --analysis=analysis_out --examples=examples_out

Two views: **Latents** (the analysis table with sorting, filters and search; a latent's page with
its numbers, activation density, logit lens and max-activating examples, base vs chat) and
**Prompt & steering** (type a text or a chat; both models run to block L once per prompt; per token
the crosscoder's top latents with their base and chat contributions; the text lit by one latent;
steering the chat model with α · a latent's decoder direction, next to the unsteered generation).

Modules, each with one job (torch, transformers and Streamlit are imported only where used):

* `inputs`   — the spec (`DashboardSpec`, `spec_from_demo`), its checks from configs only
               (`check_spec`: layer, D of crosscoder vs models, directories), ports;
* `latents`  — the offline data: table + examples (`load_latent_data`), the filter language,
               a latent's numbers / density / logit lens / example card;
* `models`   — `ModelSession`: crosscoder, base model to block L, chat model, tokenizers, the
               prompt cache, the residual hook used for reading and steering;
* `prompt`   — one prompt through both models and the crosscoder (`analyze`, cached);
* `steering` — decoder directions and seeded, bounded generation with and without the edit;
* `render`   — HTML in the static report's look (its style sheet, colours and token markup);
* `state`, `view_latents`, `view_prompt`, `page`, `app` — the Streamlit app;
* `server`   — the Streamlit command line (serve in place, or start and wait for tests).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "DashboardError": "jaxcoders.dashboard.inputs",
    "DashboardSpec": "jaxcoders.dashboard.inputs",
    "spec_from_demo": "jaxcoders.dashboard.inputs",
    "check_spec": "jaxcoders.dashboard.inputs",
    "ModelSession": "jaxcoders.dashboard.models",
    "analyze": "jaxcoders.dashboard.prompt",
    "make_prompt": "jaxcoders.dashboard.prompt",
    "steer": "jaxcoders.dashboard.steering",
    "SteerRequest": "jaxcoders.dashboard.steering",
    "serve": "jaxcoders.dashboard.server",
    "start": "jaxcoders.dashboard.server",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxcoders.dashboard' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
