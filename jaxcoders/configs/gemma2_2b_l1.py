"""The paper's L1 crosscoder: Gemma-2-2B vs Gemma-2-2B-it, layer 13, F = 32·2304, mu = 0.041.

    jaxcoders-train --config=gemma2_2b_l1 \
        --workdir=gs://YOUR_BUCKET/runs/gemma2-2b-L13-l1 \
        --config.data.store=gs://YOUR_BUCKET/acts/gemma2-2b-L13
"""
from jaxcoders.configs.schema import base_config


def get_config():
    c = base_config()
    c.model.architecture = "l1"
    c.model.dict_size = 73_728
    c.model.same_init_for_all_models = True  # the paper's runs
    c.model.norm_init_scale = 0.005  # the paper's script
    c.train.lr = 1e-4
    c.train.warmup_steps = 1000
    c.train.l1_coefficient = 0.041
    c.run.batch_size = 2048
    c.run.steps = 48_828
    c.run.eval_every = 2000
    c.run.checkpoint_every = 2000
    return c
