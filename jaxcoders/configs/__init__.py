"""Presets of the `train` command (`get_config()` each) and the config schema they are built from.

    jaxcoders-train --config=tiny --workdir=/tmp/tiny            # a preset by name
    jaxcoders-train --config=experiments/configs/tiny.py ...     # or by file, as before
    jaxcoders-train --config=gemma2_2b_batchtopk --config_help   # every field, with its docs

Presets: `tiny` (a BatchTopK smoke test on planted synthetic data), `gemma2_2b_batchtopk` and
`gemma2_2b_l1` (the paper's two crosscoders, Gemma-2-2B vs Gemma-2-2B-it, layer 13),
`gemma2_2b_tied` (the research update's tied crosscoder). Any preset trains the shared-latent L1
variant with `--config.model.n_shared_latents=S` (and `--config.train.shared_l1_coefficient`).
"""
from jaxcoders.configs.schema import base_config, describe, resolve

PRESETS = ("tiny", "gemma2_2b_batchtopk", "gemma2_2b_l1", "gemma2_2b_tied")

__all__ = ["PRESETS", "base_config", "describe", "resolve"]
