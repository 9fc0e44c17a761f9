"""Defaults shared by every preset: the fields experiments/train.py understands.

Every field can be overridden on the command line, e.g. `--config.train.k=32`.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        architecture="batchtopk", dict_size=4096, k=100, code_normalization="CROSSCODER",
        same_init_for_all_models=True, init_with_transpose=True, norm_init_scale=1.0, compute_dtype="float32",
    ))
    c.train = ml_collections.ConfigDict(dict(
        lr=1e-4, warmup_steps=1000, decay_start=-1, l1_coefficient=0.041, l1_warmup_steps=0, use_mse_loss=False,
        k_max=-1, k_annealing_steps=0, threshold_start_step=1000, threshold_beta=0.999, auxk_alpha=1 / 32,
        dead_tokens_threshold=10_000_000, top_k_aux=-1, grad_clip_norm=-1.0, selection_method="topk",
        decoder_mode="auto", resample_steps=-1,
    ))
    c.run = ml_collections.ConfigDict(dict(
        steps=10_000, batch_size=2048, log_every=100, eval_every=1000, eval_batches=8, checkpoint_every=1000,
        keep_checkpoints=3, mesh_data=0, mesh_latent=0, seed=0, export=True, async_checkpoint=True,
        tensorboard=False,
    ))
    # data: an ActivationStore URL (file path, file://, gs://) with "train" (and optionally
    # "validation") splits; or `acts`: a .npy file of (N, M, D) activations; or "synthetic".
    c.data = ml_collections.ConfigDict(dict(
        store="", acts="", synthetic=False, val_split="validation", mix="even", normalize=False, target_rms=1.0,
        shuffle_buffer_rows=65536, prefetch=2, num_readers=0,
    ))
    # num_readers: logical partitions of the store (0 = one per process). Fixing it (e.g. to the
    # largest host count you will use) makes the batch sequence independent of the host count.
    return c
