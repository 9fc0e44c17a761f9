"""A tiny BatchTopK run on planted synthetic activations: a smoke test that needs no store.

    jaxcoders-train --config=tiny --workdir=/tmp/jaxcoders_tiny
    python experiments/train.py --config=experiments/configs/tiny.py --workdir=/tmp/jaxcoders_tiny

With a store instead of synthetic data:

    jaxcoders-train --config=tiny --workdir=/tmp/tiny_store \
        --config.data.synthetic=False --config.data.store=/tmp/acts_store
"""
from jaxcoders.configs.schema import base_config


def get_config():
    c = base_config()
    c.model.architecture = "batchtopk"
    c.model.dict_size = 256
    c.model.k = 4
    c.model.same_init_for_all_models = True
    c.model.norm_init_scale = 1.0
    c.train.lr = 2e-3
    c.train.warmup_steps = 20
    c.train.threshold_start_step = 50
    c.run.steps = 200
    c.run.batch_size = 256
    c.run.log_every = 20
    c.run.eval_every = 100
    c.run.checkpoint_every = 100
    c.data.synthetic = True
    return c
