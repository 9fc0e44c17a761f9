"""The training loop: data in, sharded jitted steps, validation, metrics, orbax checkpoints, export.

    model = train_and_evaluate(model_cfg, train_cfg, run_cfg, workdir, train_source, val_source)

* `train_source` yields this process's rows of each global batch (numpy `(B_local, M, D)`) and has
  `state_dict()` / `load_state_dict()` for its cursor (e.g. `jaxcoders.data.loader.Loader`, or
  `ArrayBatches` below for in-memory arrays).
* `workdir/`: `config.json` (the resolved run config), `metrics.jsonl` (one JSON object per log /
  eval step), `checkpoints/` (orbax), `export/` (the final model in the reference layout), and with
  `RunConfig.tensorboard` `tensorboard/` (the same metrics as TensorBoard events).
* A rerun with the same workdir resumes from the latest checkpoint (same params, same data, no
  duplicate metric rows); a different config in the same workdir is refused. SIGTERM (TPU
  preemption) saves a checkpoint and stops cleanly. Only process 0 writes files other than
  checkpoints (orbax coordinates those).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from jaxcoders.config import CrossCoderConfig, RunConfig, TrainConfig
from jaxcoders.core.crosscoder import normalize_input
from jaxcoders.core.module import CrossCoder
from jaxcoders.io.reference import save_reference
from jaxcoders.locks import DirectoryLock
from jaxcoders.progress import on_terminal, progress_bar
from jaxcoders.training import sharding as shd
from jaxcoders.training.checkpoint import RunCheckpointer
from jaxcoders.training.evaluate import as_global_batch, evaluate, make_eval_step
from jaxcoders.training.metrics import TensorBoardLog, WandbLog
from jaxcoders.training.schedules import geometric_median, k_plan
from jaxcoders.training.sources import local_rows
from jaxcoders.training.state import init_train_state, shard_train_state
from jaxcoders.training.step import make_train_step
from jaxcoders.training.resume import check_room_for_checkpoint, check_workdir, config_diffs, mismatch_error, read_config_json, restore_latest
from jaxcoders.training.workdir import MetricsLog, is_remote, resolved_config, write_config

log = logging.getLogger(__name__)


def _any_process(flag: bool) -> bool:
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


class _closing:
    """Close `obj` (wait for pending async checkpoint writes, flush event files), also on errors."""

    def __init__(self, obj):
        self.obj = obj

    def __enter__(self):
        return self.obj

    def __exit__(self, *exc):
        self.obj.close()


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handler(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(
    model_cfg: CrossCoderConfig,
    train_cfg: TrainConfig,
    run_cfg: RunConfig,
    workdir: str | os.PathLike,
    train_source,
    val_source=None,
    *,
    init_model: Optional[CrossCoder] = None,
    data_description: Optional[dict] = None,
    mesh=None,
    progress: Optional[bool] = None,
    allow_config_change: bool = False,
) -> CrossCoder:
    """Train (or resume) a crosscoder in `workdir`; returns the trained model.

    `val_source`: a callable returning a fresh iterable of validation batches (local rows), or None.
    `data_description`: what the data is (source, fingerprint); recorded in config.json and every
    checkpoint, and compared on resume (`jaxcoders.training.resume`), as is the rest of the config;
    `allow_config_change=True` resumes despite differences. One writer per workdir: a second run on
    the same workdir is refused while this one holds its lock (`jaxcoders.locks.DirectoryLock`).
    """
    workdir = epath.Path(workdir)  # local paths and gs:// alike
    if jax.process_index() != 0:  # process 0 holds the workdir's lock for the whole run
        return _train(model_cfg, train_cfg, run_cfg, workdir, train_source, val_source, init_model,
                      data_description, mesh, progress, allow_config_change)
    with DirectoryLock(workdir, what="training workdir"):
        return _train(model_cfg, train_cfg, run_cfg, workdir, train_source, val_source, init_model,
                      data_description, mesh, progress, allow_config_change)


def _train(model_cfg, train_cfg, run_cfg, workdir, train_source, val_source, init_model, data_description, mesh,
           progress, allow_config_change) -> CrossCoder:
    is_writer = jax.process_index() == 0
    resolved = resolved_config(model_cfg, train_cfg, run_cfg, data_description)
    config_path = workdir / "config.json"
    old_config = read_config_json(config_path)
    if is_writer and old_config is None:
        check_workdir(workdir)
    if old_config is not None and not allow_config_change:
        diffs = config_diffs(old_config, resolved)
        if diffs:
            raise mismatch_error(workdir, diffs, "config.json")
    if mesh is None:
        if run_cfg.mesh_data or run_cfg.mesh_latent:
            mesh = shd.make_mesh(run_cfg.mesh_data or None, run_cfg.mesh_latent or None)
        else:
            mesh = shd.make_mesh(*shd.auto_mesh_shape(model_cfg.dict_size, run_cfg.batch_size))
    shd.check_shapes(model_cfg, run_cfg.batch_size, mesh)

    # k-annealing: the step is built for k_max and told k(t) each step
    plan = k_plan(model_cfg, train_cfg)
    model_cfg = plan.model_cfg

    if init_model is None:
        init_model = CrossCoder(model_cfg, rngs=nnx.Rngs(run_cfg.seed))
    state = shard_train_state(init_train_state(init_model, train_cfg, run_cfg.steps), model_cfg, train_cfg, mesh,
                              run_cfg.steps)
    step_fn = make_train_step(plan.step_cfg, train_cfg, run_cfg.steps, k_cap=plan.k_cap, mesh=mesh)
    eval_step = make_eval_step(model_cfg)

    rows = local_rows(mesh, run_cfg.batch_size)
    if (rows.stop - rows.start) * jax.process_count() != run_cfg.batch_size:
        raise ValueError(
            f"the mesh {dict(mesh.shape)} puts overlapping batch rows on several processes; keep the "
            "latent axis within one host (mesh_latent <= devices per host)"
        )
    ckpt_dir = str(workdir / "checkpoints") if is_remote(workdir) else os.path.abspath(str(workdir / "checkpoints"))
    ckpt = RunCheckpointer(ckpt_dir, keep=run_cfg.keep_checkpoints,
                           async_save=run_cfg.async_checkpoint)
    with _closing(ckpt):  # pending async writes finish (or the error surfaces) before the process exits
        return _run_loop(model_cfg, train_cfg, run_cfg, workdir, train_source, val_source, progress,
                         allow_config_change, is_writer, resolved, old_config, config_path, mesh, plan, state,
                         step_fn, eval_step, ckpt)


def _run_loop(model_cfg, train_cfg, run_cfg, workdir, train_source, val_source, progress, allow_config_change,
              is_writer, resolved, old_config, config_path, mesh, plan, state, step_fn, eval_step, ckpt):
    state, meta = restore_latest(ckpt, state, workdir, resolved, allow_config_change=allow_config_change,
                                 can_move=jax.process_count() == 1, have_config_json=old_config is not None)
    start = 0
    if meta is not None:
        train_source.load_state_dict(meta["cursor"])
        start = int(meta["step"])
        log.info("resumed from %s at step %d", workdir, start)
    if is_writer and (old_config is None or (allow_config_change and config_diffs(old_config, resolved))):
        write_config(workdir, resolved)
    metrics_path = workdir / "metrics.jsonl"
    metrics_log = MetricsLog(metrics_path, start, is_writer)
    tb = TensorBoardLog(workdir / "tensorboard", start, enabled=is_writer and run_cfg.tensorboard)
    wb = WandbLog(workdir, project=run_cfg.wandb_project, entity=run_cfg.wandb_entity, name=run_cfg.wandb_run_name,
                  tags=run_cfg.wandb_tags, config=resolved, enabled=is_writer)

    def write_metrics(row: dict) -> None:
        metrics_log.write(row)
        tb.write(row)
        wb.write(row)

    # a progress bar on a terminal; in a log file (or with progress=False) a plain line per log step
    show = progress if progress is not None else (is_writer and on_terminal())
    bar = progress_bar(run_cfg.steps, f"train {model_cfg.architecture}", "step", initial=start) if show else None
    t_last, step_last = time.time(), start
    pending = []
    step = start
    data_iter = iter(train_source)
    # the source's prefetch thread is stopped (and joined) on the way out, so that no thread reads
    # the store while the process exits
    source_closer = _closing(train_source) if hasattr(train_source, "close") else contextlib.nullcontext()
    with _Preemption() as preempt, _closing(tb), _closing(wb), source_closer:
        while step < run_cfg.steps:
            x = as_global_batch(next(data_iter), mesh, run_cfg.batch_size)
            if step == 0 and model_cfg.is_batchtopk and train_cfg.init_b_dec_geometric_median:
                x0 = normalize_input(model_cfg, state.buffers, x.astype(jnp.float32))
                gm = jax.jit(geometric_median, out_shardings=shd.named(mesh, shd.param_specs().b_dec_MD))(x0)
                state = state._replace(params=state.params._replace(b_dec_MD=gm))
            k_t = plan.k_at(train_cfg, step)
            state, metrics = step_fn(state, x, k_t)
            pending.append(metrics)
            step += 1
            if bar is not None:
                bar.update(1)
            at_log_step = step % run_cfg.log_every == 0 or step == run_cfg.steps
            if at_log_step:
                host = [jax.tree.map(lambda a: np.asarray(a).tolist(), jax.device_get(m)) for m in pending]
                pending.clear()
                bad = [step - len(host) + i for i, m in enumerate(host) if m["nonfinite_input"]]
                if bad:
                    raise ValueError(
                        f"the training batch of step {bad[0]} contains NaN or inf values (the step skipped it); "
                        f"training stopped at step {step}, the last checkpoint is kept: remove the non-finite rows "
                        "from the training data and rerun")
                now = time.time()
                tok_s = (step - step_last) * run_cfg.batch_size / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                row = {k: v for k, v in host[-1].items() if k != "nonfinite_input"}
                row.update(step=step - 1, tokens=step * run_cfg.batch_size, tokens_per_s=tok_s,
                           loss_mean=float(np.mean([m["loss"] for m in host])))
                write_metrics(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss_mean']:.4g}", tok_s=f"{tok_s:,.0f}")
                elif is_writer and progress is None:
                    log.info("step %d/%d  loss %.4g  %s tokens/s", step, run_cfg.steps, row["loss_mean"],
                             f"{tok_s:,.0f}")
            if val_source is not None and run_cfg.eval_every and (step % run_cfg.eval_every == 0 or step == run_cfg.steps):
                batches = (b for _, b in zip(range(run_cfg.eval_batches), val_source()))
                row = evaluate(model_cfg, state, batches, mesh, eval_step)
                row["step"] = step - 1
                write_metrics(row)
            stop = preempt.requested
            if jax.process_count() > 1:  # every host must stop (and save) at the same step
                stop = at_log_step and _any_process(stop)
            if step % run_cfg.checkpoint_every == 0 or step == run_cfg.steps or stop:
                check_room_for_checkpoint(ckpt.directory, state, step)
                ckpt.save(step, state, {"step": step, "cursor": train_source.state_dict(), "config": resolved},
                          force=True)
            if stop:
                log.warning("SIGTERM: checkpoint saved at step %d; stopping", step)
                break
    if bar is not None:
        bar.close()

    buffers = state.buffers._replace(k=jnp.asarray(plan.k_target, jnp.int32))
    params = jax.device_get(state.params)
    trained = CrossCoder(model_cfg, params=params, buffers=jax.device_get(buffers))
    trained.steps_done = step  # < run_cfg.steps after a preemption (SIGTERM)
    if run_cfg.export and is_writer and step >= run_cfg.steps:
        save_reference(trained, workdir / "export")
    return trained
