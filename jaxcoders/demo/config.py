"""The demo's settings: `DemoConfig` (the sizes of every stage of `jaxcoders.demo.pipeline`) and
`ARCHS`, the two crosscoder architectures it trains (in this order)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from jaxcoders.demo.model_pair import Recipe

ARCHS = ("l1", "batchtopk")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of every stage. Defaults: `make demo` (< 10 min on 2 CPU cores with nothing cached)."""

    out: str = "demo_out"
    models_dir: Optional[str] = None  # cache of model pairs; None = ~/.cache/jaxcoders/demo_models
    recipe: Recipe = Recipe()
    layer: Optional[int] = None  # residual stream after this block; None = num_layers // 2
    text_tokens: int = 40_000  # training rows per dataset (text, chat)
    chat_tokens: int = 40_000
    val_tokens: int = 8_000  # validation rows per dataset
    n_chats: int = 2_000  # conversations generated for the extraction (it stops at the token budget)
    seq_len: int = 128
    extract_batch_size: int = 16
    dict_size: int = 1024
    steps: int = 1000
    batch_size: int = 512
    k: int = 16
    l1_coefficient: float = 0.05
    lr: float = 1e-3
    target_rms: float = 1.0  # inputs normalized to this total RMS (both models together)
    seed: int = 0
    top_latents: int = 8  # chat-only latents listed per crosscoder
    top_examples: int = 5  # top-activating tokens shown per latent
    report_latents: int = 96  # latents with example cards in the HTML reports
    eval_chats: int = 200  # held-out conversations of the causal evaluation (0 = skip it)
    eval_max_len: int = 256  # their token budget each
    paper: bool = True  # stage 8: the paper's figures (jaxcoders.paper) on this output
    progress: bool = True

    @classmethod
    def small(cls, **kw) -> "DemoConfig":
        """The same pipeline at CI size (tiny pair, ~10k tokens, 256 latents)."""
        base = dict(recipe=Recipe.small(), text_tokens=6_000, chat_tokens=6_000, val_tokens=1_500, n_chats=400,
                    seq_len=96, dict_size=256, steps=200, batch_size=256, k=8, top_latents=5, top_examples=3,
                    report_latents=32, eval_chats=24, eval_max_len=128)
        base.update(kw)
        return cls(**base)
