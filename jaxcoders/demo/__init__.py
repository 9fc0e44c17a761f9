"""The built-in demo: a tiny (base, chat) model pair trained locally, and the whole pipeline on it.

    corpus        the bundled English corpus and chat data with planted behaviours (no torch)
    model_pair    tokenizer, base pretraining, chat fine-tuning, cache (torch)
    pipeline      `run_demo`: the stages in order (what `make demo` / `jaxcoders-demo` run)
    config        DemoConfig
    stages        the numbered stage log, quieting the libraries
    activations   stage 3: extraction into an ActivationStore
    crosscoders   stage 4: L1 and BatchTopK crosscoders with the store-backed trainer
    tagging       token tags (text, chat, greeting, refusal, trigger) and per-latent tag shares
    planted       which latents carry the planted behaviours
    causal        the causal evaluation of the demo's latent sets
    pages         the HTML reports' featured latents
    summary, verdict, formatting   summary.md / summary.json prose and tables
"""
