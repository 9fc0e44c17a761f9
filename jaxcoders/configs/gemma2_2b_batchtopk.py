"""The paper's BatchTopK crosscoder: Gemma-2-2B vs Gemma-2-2B-it, layer 13, F = 32·2304, k = 100.

Extract the activations first (docs/pipeline.md), then on a GPU host or a TPU VM:

    jaxcoders-train --config=gemma2_2b_batchtopk \
        --workdir=gs://YOUR_BUCKET/runs/gemma2-2b-L13-btk100 \
        --config.data.store=gs://YOUR_BUCKET/acts/gemma2-2b-L13

On a TPU pod slice, launch the same command on every worker with tpu/run.sh.
"""
from jaxcoders.configs.schema import base_config


def get_config():
    c = base_config()
    c.model.architecture = "batchtopk"
    c.model.dict_size = 73_728
    c.model.k = 100
    c.model.same_init_for_all_models = True  # the paper's runs
    c.model.norm_init_scale = 1.0
    c.train.lr = 1e-4
    c.train.warmup_steps = 1000
    c.train.threshold_start_step = 1000
    c.run.batch_size = 2048
    c.run.steps = 48_828  # 100M tokens (50M FineWeb + 50M LMSYS) at 2048 tokens per step
    c.run.eval_every = 2000
    c.run.checkpoint_every = 2000
    return c
