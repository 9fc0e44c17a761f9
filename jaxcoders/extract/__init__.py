"""jaxcoders.extract: activation extraction with PyTorch `transformers` (the torch side).

    config.py   ExtractConfig / DatasetSpec, flag parsing           (no torch)
    text.py     datasets, chat templates, token classes, tokenizer agreement
    models.py   load a model, run it only up to block L (= HF hidden_states[L+1])
    writer.py   the writer thread: buffered chunk-aligned writes, crash-safe commits
    run.py      run_extraction(cfg): the resumable driver
    bench.py    extraction tokens/s vs bare forward passes

Nothing here is imported by `jaxcoders.data` or the training code; torch is imported lazily.
"""
