"""Train a crosscoder (L1, BatchTopK or tied) on one CPU/GPU or on every host of a TPU pod.

    jaxcoders-train --config=tiny --workdir=/tmp/jaxcoders_tiny
    jaxcoders-train --config=gemma2_2b_batchtopk --workdir=gs://BUCKET/runs/btk \
        --config.data.store=gs://BUCKET/acts/gemma2-2b-L13
    python experiments/train.py --config=experiments/configs/tiny.py --workdir=/tmp/jaxcoders_tiny

--config is a preset name (tiny, gemma2_2b_batchtopk, gemma2_2b_l1, gemma2_2b_tied) or a config file with
`get_config()`. Every field of the four config sections can be overridden, e.g.
`--config.train.k_max=400 --config.train.k_annealing_steps=2000 --config.model.compute_dtype=bfloat16`;
`--config_help` lists them all with their types, defaults and documentation (they are the fields
of jaxcoders.config's dataclasses). Rerunning the same command with the same --workdir resumes from
the latest checkpoint (a rerun whose config or data differ is refused unless --allow_config_change;
a checkpoint that does not restore is moved to <workdir>/checkpoints_broken/ and the previous one
used; a second run on a workdir in use is refused); SIGTERM (preemption) checkpoints and exits. On
multi-host systems the same command runs on every host (tpu/run.sh); `jax.distributed.initialize` is called first. Outputs:
<workdir>/config.json, metrics.jsonl, checkpoints/, export/ (reference layout). docs/training.md.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from jaxcoders.cli.common import fail, one_line, run_app, user_errors
from jaxcoders.config import DataConfig
from jaxcoders.files import sampled_digest

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Preset name (tiny, gemma2_2b_batchtopk, gemma2_2b_l1, gemma2_2b_tied) or a config "
                                "file with get_config(); override fields with --config.<section>.<field>=...",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local path or gs://): config, metrics, checkpoints, export.")
flags.DEFINE_string("push_to_hub", "", "After training, upload the export (and a model card) to this Hugging Face "
                    "Hub repo, e.g. me/gemma2-2b-btk (needs HF_TOKEN or huggingface-cli login).")
flags.DEFINE_bool("allow_config_change", False, "Resume the workdir's run although this command's config or data "
                  "differ from what its checkpoints were trained with (config.json is rewritten); without it such a "
                  "rerun is refused, naming the differences.")
flags.DEFINE_bool("config_help", False, "Print every --config.<section>.<field> with its type, default and doc, "
                  "then exit.")

log = logging.getLogger("jaxcoders.cli.train")


def preset_path(value: str) -> str:
    """A preset name -> the path of its file in jaxcoders/configs (paths pass through)."""
    from jaxcoders import configs

    name, _, arg = value.partition(":")
    if not Path(name).exists() and name in configs.PRESETS:
        return str(Path(configs.__file__).parent / f"{name}.py") + (f":{arg}" if arg else "")
    return value


def build_data(data: DataConfig, seed: int, mesh, batch_size: int):
    """(train source, validation source factory or None, D, M, description, the store or None)."""
    import jax

    from jaxcoders.training.sources import ArrayBatches, ConcatSources, local_rows

    source = data.source()
    rows = local_rows(mesh, batch_size)
    if source == "store":
        from jaxcoders.data.loader import Loader
        from jaxcoders.data.store import ActivationStore
        from jaxcoders.training import sharding as shd

        store = ActivationStore.open(data.store)
        P, p = jax.process_count(), jax.process_index()
        readers = data.num_readers or P
        if readers % P:
            raise ValueError(f"--config.data.num_readers={readers} must be a multiple of the {P} processes")
        per = readers // P  # this process owns readers p*per ... (p+1)*per - 1, in order
        # normalization (data.normalize) lives in the model, so that its export reads raw activations
        loaders = [Loader(store, batch_size, seed=seed, split="train", mix=data.mix_weights(),
                          normalize=False,
                          shuffle_buffer_rows=data.shuffle_buffer_rows, prefetch=data.prefetch,
                          process_index=p * per + r, process_count=readers)
                   for r in range(per)]
        train = loaders[0] if per == 1 and readers == P else ConcatSources(loaders)
        val = None
        if data.val_split and data.val_split in store.splits:
            def val():
                return Loader(store, batch_size, seed=0, split=data.val_split, mix="concat", shuffle=False,
                              prefetch=0, num_epochs=1,
                              sharding=shd.named(mesh, shd.batch_spec()))
        desc = {"store": store.url, "mix": data.mix, "normalize": data.normalize, "target_rms": data.target_rms,
                **store.fingerprint()}
        return train, val, store.d_model, store.num_models, desc, store
    if source == "acts":
        acts = open_acts(data.acts)
        n_val = min(len(acts) // 10, 8 * batch_size)
        if len(acts) - n_val < batch_size:
            raise ValueError(f"--config.data.acts={data.acts} has {len(acts) - n_val} training rows (of {len(acts)}), "
                             f"fewer than one batch of {batch_size}; lower --config.run.batch_size or add rows")
        train = ArrayBatches(acts[n_val:], batch_size, seed=seed, rows=rows)
        val = (lambda: ArrayBatches(acts[:n_val], batch_size, rows=rows, shuffle=False)) if n_val >= batch_size else None
        desc = {"acts": str(data.acts), "acts_shape": list(acts.shape), "acts_dtype": str(acts.dtype),
                "acts_digest": sampled_digest(data.acts)}
        return train, val, acts.shape[2], acts.shape[1], desc, None
    from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary

    planted = make_dictionary(SyntheticSpec(seed=seed))
    acts, _ = planted.sample(max(64 * batch_size, 32768), seed=seed + 1)
    val_acts, _ = planted.sample(4 * batch_size, seed=seed + 2)
    train = ArrayBatches(acts, batch_size, seed=seed, rows=rows)
    val = lambda: ArrayBatches(val_acts, batch_size, rows=rows, shuffle=False)  # noqa: E731
    return train, val, acts.shape[2], acts.shape[1], {"synthetic": planted.spec.__dict__}, None


def open_acts(path: str):
    """The (N, M, D) float array of a .npy file (memory-mapped), or a ValueError saying what is wrong."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config.data.acts={path} does not exist; pass an (N, M, D) .npy file")
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError(f"--config.data.acts={path} is not a .npy file ("
                         + ("it is empty" if not magic else "no numpy header") + "); write it with numpy.save")
    try:
        acts = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"--config.data.acts={path} is not a readable .npy array ({one_line(e)}); "
                         "write it with numpy.save") from None
    if acts.ndim != 3 or not np.issubdtype(acts.dtype, np.floating):
        raise ValueError(f"--config.data.acts={path} must hold an (N, M, D) float array, got shape {acts.shape} "
                         f"dtype {acts.dtype}")
    return acts


def normalized_model(model_cfg, data: DataConfig, store, seed: int):
    """A fresh crosscoder that normalizes its own inputs with the store's statistics (docs/method.md
    §5), so that training, its export and every analysis read raw activations."""
    from flax import nnx

    from jaxcoders.core.module import CrossCoder
    from jaxcoders.core.params import normalization_buffers

    if store is None:
        raise ValueError("--config.data.normalize=True needs a store (--config.data.store) for the statistics")
    st = store.stats
    if st.count == 0:
        raise ValueError(f"--config.data.normalize=True needs statistics but {store.url} has none")
    cfg = model_cfg.replace(input_normalization=True)
    fresh = CrossCoder(cfg, rngs=nnx.Rngs(seed))
    buffers = normalization_buffers(fresh.buffers, st.mean, st.std, target_rms=data.target_rms)
    return CrossCoder(cfg, params=fresh.params, buffers=buffers)


def _make_mesh(c):
    from jaxcoders.training import sharding as shd

    if not c.run.mesh_data and not c.run.mesh_latent:  # auto: latent within a host, data across hosts
        return shd.make_mesh(*shd.auto_mesh_shape(c.model.dict_size or 1, c.run.batch_size))
    return shd.make_mesh(c.run.mesh_data or None, c.run.mesh_latent or None)


@user_errors
def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None:
        fail("--config is required: a preset name (tiny, gemma2_2b_batchtopk, gemma2_2b_l1, gemma2_2b_tied) or a config file")
    from jaxcoders.configs import describe, resolve

    c = FLAGS.config
    if FLAGS.config_help:
        print(describe(c))
        return
    if not FLAGS.workdir:
        fail("--workdir is required: the run directory (local path or gs://)")
    from jaxcoders.training.sharding import initialize_distributed_if_needed

    initialize_distributed_if_needed()
    import jax

    from jaxcoders.training.loop import train_and_evaluate

    log.info("process %d/%d, %d devices (%s)", jax.process_index(), jax.process_count(), jax.device_count(),
             jax.devices()[0].device_kind)
    resolve(c, 2, 1)  # validates every field before data is opened (M and D are checked later)
    mesh = _make_mesh(c)
    data = DataConfig(**dict(c.data))
    train, val, D, M, desc, store = build_data(data, c.run.seed, mesh, c.run.batch_size)
    try:
        model_cfg, train_cfg, run_cfg, _ = resolve(c, M, D)
        init_model = normalized_model(model_cfg, data, store, run_cfg.seed) if data.normalize else None
        if init_model is not None:
            model_cfg = init_model.cfg
        if val is not None and run_cfg.eval_every and data.source() == "store":
            try:  # fail now, not at the first evaluation, if the split cannot feed this layout
                val().close()
            except ValueError as e:
                raise ValueError(f"validation split {data.val_split!r}: {one_line(e)}; or train without validation "
                                 "(--config.data.val_split= or --config.run.eval_every=0)") from e
        log.info("mesh %s", dict(mesh.shape))
        model = train_and_evaluate(model_cfg, train_cfg, run_cfg, FLAGS.workdir, train, val, data_description=desc,
                                   mesh=mesh, init_model=init_model, allow_config_change=FLAGS.allow_config_change)
    finally:  # the loader's prefetch thread stops before the process exits, also after an error
        if hasattr(train, "close"):
            train.close()
    if getattr(model, "steps_done", None) is not None and model.steps_done < c.run.steps:
        if jax.process_index() == 0:
            print(f"stopped at step {model.steps_done} of {c.run.steps} (checkpoint saved); rerun the same command to "
                  "continue")
        return
    if FLAGS.push_to_hub and jax.process_index() == 0:
        from jaxcoders.io.reference import upload_to_hub

        log.info("pushed %s", upload_to_hub(model, FLAGS.push_to_hub))
    if jax.process_index() == 0:
        print(f"done: {model} -> {FLAGS.workdir}/export")


def run():
    """Entry point of the installed command."""
    sys.argv = [a if not a.startswith("--config=") else "--config=" + preset_path(a[len("--config="):])
                for a in sys.argv]
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
