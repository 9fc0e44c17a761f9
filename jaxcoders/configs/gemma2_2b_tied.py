"""The research update's tied crosscoder at the Gemma-2-2B size: latent triples (shared, base, chat),
F = 16,384 triples, η = 2, λ = 2 warmed up over 5 % of the run, LR 5e-5 constant for 80 % then
decaying to 0, batch 4096, inputs normalized (docs/method.md §4).

    jaxcoders-train --config=gemma2_2b_tied --workdir=gs://YOUR_BUCKET/runs/gemma2-2b-L13-tied \
        --config.data.store=gs://YOUR_BUCKET/acts/gemma2-2b-L13
"""
from jaxcoders.configs.schema import base_config

STEPS = 50_000  # 205M tokens at 4096 per step


def get_config():
    c = base_config()
    c.model.architecture = "tied"
    c.model.dict_size = 16_384  # triples
    c.train.lr = 5e-5
    c.train.warmup_steps = 0
    c.train.l1_coefficient = 2.0  # λ
    c.train.eta = 2.0
    c.train.grad_clip_norm = 1.0
    c.train.l1_warmup_steps = STEPS // 20  # 5 %
    c.train.decay_start = int(0.8 * STEPS)
    c.run.steps = STEPS
    c.run.batch_size = 4096
    c.run.eval_every = 2000
    c.run.checkpoint_every = 2000
    c.data.normalize = True  # the reference trains and analyses on normalized activations
    return c
