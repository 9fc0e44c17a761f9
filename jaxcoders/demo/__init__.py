"""The built-in demo: a tiny (base, chat) model pair trained locally, and the whole pipeline on it.

* `jaxcoders.demo.corpus`: the bundled English corpus and chat data with planted behaviours (no torch).
* `jaxcoders.demo.model_pair`: tokenizer, base pretraining, chat fine-tuning, cache (torch).
* `jaxcoders.demo.pipeline`: extraction → L1 + BatchTopK crosscoders → Latent Scaling and the
  analyses → exports → `report/summary.md` (what `make demo` / `experiments/demo.py` run).
"""
