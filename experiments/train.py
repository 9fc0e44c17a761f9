"""Train a crosscoder (L1 or BatchTopK) on one CPU/GPU or on every host of a TPU pod.

    python experiments/train.py --config=experiments/configs/tiny.py --workdir=/tmp/jaxcoders_tiny
    python experiments/train.py --config=experiments/configs/gemma2_2b_batchtopk.py \
        --workdir=gs://BUCKET/runs/btk --config.data.store=gs://BUCKET/acts/gemma2-2b-L13

Any config field can be overridden: `--config.train.k_max=400 --config.train.k_annealing_steps=2000`
(-1 means "unset" for optional numbers). Rerunning the same command with the same --workdir
resumes from the latest checkpoint; SIGTERM (preemption) checkpoints and exits. On multi-host
systems the same command runs on every host (see tpu/run.sh); `jax.distributed.initialize` is
called first. Outputs: <workdir>/config.json, metrics.jsonl, checkpoints/, export/ (reference layout).
"""
from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Preset config file (experiments/configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local path or gs://): config, metrics, checkpoints, export.")
flags.mark_flags_as_required(["config", "workdir"])


def _opt(v):
    """-1 / "" in a config means unset."""
    return None if v in (-1, -1.0, "", None) else v


def build_configs(c, activation_dim: int, num_models: int):
    from jaxcoders.config import CrossCoderConfig, TrainConfig
    from jaxcoders.config import RunConfig

    m = c.model
    model_cfg = CrossCoderConfig(
        num_models=num_models, activation_dim=activation_dim, dict_size=int(m.dict_size),
        architecture=m.architecture, code_normalization=m.code_normalization,
        k=int(m.k) if m.architecture == "batchtopk" else None,
        same_init_for_all_models=bool(m.same_init_for_all_models), init_with_transpose=bool(m.init_with_transpose),
        norm_init_scale=_opt(m.norm_init_scale), compute_dtype=m.compute_dtype,
    )
    t = c.train
    train_cfg = TrainConfig(
        lr=t.lr, warmup_steps=t.warmup_steps, decay_start=_opt(t.decay_start), total_steps=c.run.steps,
        l1_coefficient=t.l1_coefficient, l1_warmup_steps=t.l1_warmup_steps, use_mse_loss=t.use_mse_loss,
        k_max=_opt(t.k_max), k_annealing_steps=t.k_annealing_steps, threshold_start_step=t.threshold_start_step,
        threshold_beta=t.threshold_beta, auxk_alpha=t.auxk_alpha, dead_tokens_threshold=t.dead_tokens_threshold,
        top_k_aux=_opt(t.top_k_aux), grad_clip_norm=_opt(t.grad_clip_norm), selection_method=t.selection_method,
        decoder_mode=t.decoder_mode, resample_steps=_opt(t.resample_steps), seed=c.run.seed,
    )
    run_cfg = RunConfig(**{k: c.run[k] for k in c.run.keys()})
    return model_cfg, train_cfg, run_cfg


def build_data(c, mesh, batch_size: int):
    """(train_source, val_source factory or None, activation_dim, num_models, description)."""
    import jax
    import numpy as np

    from jaxcoders.training.sources import ArrayBatches, local_rows

    d = c.data
    chosen = [bool(d.store), bool(d.acts), bool(d.synthetic)]
    if sum(chosen) != 1:
        raise app.UsageError("set exactly one of --config.data.store, --config.data.acts, --config.data.synthetic")
    rows = local_rows(mesh, c.run.batch_size)
    if d.store:
        from jaxcoders.training import sharding as shd
        from jaxcoders.data.loader import Loader
        from jaxcoders.data.store import ActivationStore

        from jaxcoders.training.sources import ConcatSources

        store = ActivationStore.open(d.store)
        mix = d.mix if d.mix in ("even", "concat") else [float(w) for w in str(d.mix).split(",")]
        P, p = jax.process_count(), jax.process_index()
        readers = d.num_readers or P
        if readers % P:
            raise app.UsageError(f"--config.data.num_readers={readers} must be a multiple of the {P} processes")
        per = readers // P  # this process owns readers p*per ... (p+1)*per - 1, in order
        loaders = [Loader(store, batch_size,
                          seed=c.run.seed, split="train", mix=mix, normalize=d.normalize, target_rms=d.target_rms,
                          shuffle_buffer_rows=d.shuffle_buffer_rows, prefetch=d.prefetch,
                          process_index=p * per + r, process_count=readers)
                   for r in range(per)]
        train = loaders[0] if per == 1 and readers == P else ConcatSources(loaders)
        val = None
        if d.val_split and d.val_split in store.splits:
            def val():
                return Loader(store, batch_size, seed=0, split=d.val_split, mix="concat", shuffle=False,
                              normalize=d.normalize, target_rms=d.target_rms, prefetch=0, num_epochs=1,
                              sharding=shd.named(mesh, shd.batch_spec()))
        if val is not None and c.run.eval_every:
            val().close()  # fail now, not at the first evaluation, if the split cannot feed this layout
        M, D = store.num_models, store.d_model
        desc = {"store": store.url, "mix": d.mix, "normalize": d.normalize, "target_rms": d.target_rms}
        return train, val, D, M, desc
    if d.acts:
        acts = np.load(d.acts, mmap_mode="r")
        if acts.ndim != 3:
            raise app.UsageError(f"{d.acts} must hold an (N, M, D) array, got shape {acts.shape}")
        n_val = min(len(acts) // 10, 8 * batch_size)
        train = ArrayBatches(acts[n_val:], batch_size, seed=c.run.seed, rows=rows)
        val = (lambda: ArrayBatches(acts[:n_val], batch_size, rows=rows, shuffle=False)) if n_val >= batch_size else None
        return train, val, acts.shape[2], acts.shape[1], {"acts": str(d.acts)}
    from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary

    planted = make_dictionary(SyntheticSpec(seed=c.run.seed))
    acts, _ = planted.sample(max(64 * batch_size, 32768), seed=c.run.seed + 1)
    val_acts, _ = planted.sample(4 * batch_size, seed=c.run.seed + 2)
    train = ArrayBatches(acts, batch_size, seed=c.run.seed, rows=rows)
    val = lambda: ArrayBatches(val_acts, batch_size, rows=rows, shuffle=False)  # noqa: E731
    del jax
    return train, val, acts.shape[2], acts.shape[1], {"synthetic": planted.spec.__dict__}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from jaxcoders.training.sharding import initialize_distributed_if_needed

    initialize_distributed_if_needed()
    import jax

    from jaxcoders.training import sharding as shd
    from jaxcoders.training.loop import train_and_evaluate

    c = FLAGS.config
    logging.info("process %d/%d, %d devices (%s)", jax.process_index(), jax.process_count(), jax.device_count(),
                 jax.devices()[0].device_kind)
    if not c.run.mesh_data and not c.run.mesh_latent:  # auto: latent within a host, data across hosts
        mesh = shd.make_mesh(*shd.auto_mesh_shape(c.model.dict_size, c.run.batch_size))
    else:
        mesh = shd.make_mesh(c.run.mesh_data or None, c.run.mesh_latent or None)
    logging.info("mesh %s", dict(mesh.shape))
    train, val, D, M, desc = build_data(c, mesh, c.run.batch_size)
    model_cfg, train_cfg, run_cfg = build_configs(c, D, M)
    model = train_and_evaluate(model_cfg, train_cfg, run_cfg, FLAGS.workdir, train, val, data_description=desc,
                               mesh=mesh)
    if jax.process_index() == 0:
        print(f"done: {model} -> {FLAGS.workdir}/export")


if __name__ == "__main__":
    app.run(main)
