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

import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders import sharding as shd
from jaxcoders.checkpoint import RunCheckpointer
from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.crosscoder import (
    CrossCoder,
    code_normalization,
    decode,
    decoder_norms,
    encode_relu,
    normalize_input,
    select_threshold,
    select_train,
)
from jaxcoders.tied import tied_code
from jaxcoders.train import (
    TrainState,
    geometric_median,
    init_train_state,
    k_at_step,
    make_train_step,
    shard_train_state,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a run is executed (not what is learned).

    steps: total optimizer steps.  batch_size: global tokens per step.
    log_every / eval_every / checkpoint_every: intervals in steps (0 = off for eval).
    eval_batches: validation batches per evaluation.  keep_checkpoints: orbax max_to_keep.
    mesh_data / mesh_latent: mesh axis sizes (0 = auto).  seed: initialisation seed.
    export: write the final model in the reference layout to `workdir/export`.
    tensorboard: also write the metrics as TensorBoard events to `workdir/tensorboard`
    (`jaxcoders.tensorboard`; needs tensorboardX).
    """

    steps: int
    batch_size: int
    log_every: int = 100
    eval_every: int = 1000
    eval_batches: int = 8
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    mesh_data: int = 0
    mesh_latent: int = 0
    seed: int = 0
    export: bool = True
    async_checkpoint: bool = True
    tensorboard: bool = False

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive (got {self.steps}, {self.batch_size})")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


# ----------------------------------------------------------------------------- in-memory data


class ArrayBatches:
    """Resumable, shuffled batches from an in-memory (N, M, D) array.

    Each epoch is a fresh permutation (seeded by (seed, epoch)); the cursor is (epoch, position).
    With several processes, each yields only its `rows` slice of every global batch."""

    def __init__(self, acts_NMD, batch_size: int, *, seed: int = 0, rows: Optional[slice] = None,
                 shuffle: bool = True):
        self.acts = acts_NMD
        self.batch_size = batch_size
        self.seed = seed
        self.rows = rows or slice(0, batch_size)
        self.shuffle = shuffle
        n = len(acts_NMD)
        if n < batch_size:
            raise ValueError(f"{n} activation rows cannot fill one batch of {batch_size}")
        self.batches_per_epoch = n // batch_size
        self.epoch, self.position = 0, 0

    def _perm(self, epoch: int):
        if not self.shuffle:
            return np.arange(len(self.acts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.acts))

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        perm = self._perm(self.epoch)
        idx = perm[self.position * self.batch_size:(self.position + 1) * self.batch_size][self.rows]
        self.position += 1
        return np.asarray(self.acts[np.sort(idx)] if not self.shuffle else self.acts[idx], np.float32)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class ConcatSources:
    """Several data sources read as one: each yields part of this process's rows, concatenated in
    order. Used to decouple the data partitioning from the number of hosts: a store read by R
    logical readers gives the same global batches whether 1 process owns all R readers or R
    processes own one each (the pod rehearsal test relies on it)."""

    def __init__(self, sources):
        self.sources = list(sources)
        self._iters = None

    def __iter__(self):
        self._iters = [iter(s) for s in self.sources]
        return self

    def __next__(self):
        if self._iters is None:
            iter(self)
        parts = [np.asarray(next(it)) for it in self._iters]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def state_dict(self) -> dict:
        return {"sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        states = state["sources"]
        if len(states) != len(self.sources):
            raise ValueError(f"the saved data cursor has {len(states)} readers, this run has {len(self.sources)}; "
                             "resume with the same --config.data.num_readers")
        for s, st in zip(self.sources, states):
            s.load_state_dict(st)
        self._iters = None


def local_rows(mesh, batch_size: int) -> slice:
    """The rows of a global (B, M, D) batch that this process's devices hold."""
    sharding = jax.sharding.NamedSharding(mesh, shd.batch_spec())
    idx = sharding.addressable_devices_indices_map((batch_size, 1, 1))
    starts = [s[0].start or 0 for s in idx.values()]
    stops = [s[0].stop if s[0].stop is not None else batch_size for s in idx.values()]
    return slice(min(starts), max(stops))


# ----------------------------------------------------------------------------- validation


def make_eval_step(cfg: CrossCoderConfig):
    """Jitted accumulation of pooled validation statistics for one batch."""

    def eval_step(params, buffers, x_BMD):
        x = normalize_input(cfg, buffers, x_BMD.astype(jnp.float32))
        if cfg.is_tied:
            f = tied_code(cfg, params, x)  # (B, 3, F)
            e = x - decode(cfg, params, f)
            fired = jnp.any(f > 0, axis=(0, 1))
            return {
                "sum_x_MD": jnp.sum(x, 0), "sum_x2_MD": jnp.sum(x * x, 0),
                "sum_e_MD": jnp.sum(e, 0), "sum_e2_MD": jnp.sum(e * e, 0),
                "n": jnp.float32(x.shape[0]), "l0_sum": jnp.sum(f > 0).astype(jnp.float32),
                "fired_F": fired,
            }
        f_BF = encode_relu(cfg, params, x)
        if cfg.is_batchtopk:
            c = code_normalization(cfg, params.w_dec_MFD)
            f_thr = select_threshold(cfg, f_BF, c, buffers.threshold)
            f_top, _ = select_train(cfg, f_BF, c, cfg.k)
            # before theta exists (theta < 0) the inference code is the training selection
            unset = jnp.any(buffers.threshold < 0)
            f = jnp.where(unset, f_top, f_thr)
        else:
            f = f_BF
        e = x - decode(cfg, params, f)
        fired = jnp.any(f > 0, axis=tuple(range(f.ndim - 1)))
        return {
            "sum_x_MD": jnp.sum(x, 0), "sum_x2_MD": jnp.sum(x * x, 0),
            "sum_e_MD": jnp.sum(e, 0), "sum_e2_MD": jnp.sum(e * e, 0),
            "n": jnp.float32(x.shape[0]), "l0_sum": jnp.sum(f > 0) / (f.shape[1] if f.ndim == 3 else 1),
            "fired_F": fired,
        }

    return jax.jit(eval_step)


def _as_global_batch(x, mesh, batch_size: int):
    """A loader's batch as the global (B, M, D) array sharded on "data" (loaders may already
    yield global arrays; otherwise `x` holds this process's rows)."""
    if isinstance(x, jax.Array) and x.shape[0] == batch_size and not x.is_fully_addressable:
        return x
    if isinstance(x, jax.Array) and x.shape[0] == batch_size and jax.process_count() == 1:
        return jax.device_put(x, shd.named(mesh, shd.batch_spec()))
    return shd.global_batch(np.asarray(x), mesh)


def evaluate(cfg, state: TrainState, batches: Iterable, mesh, eval_step) -> dict:
    acc = None
    for x in batches:
        out = eval_step(state.params, state.buffers, _as_global_batch(x, mesh, None))
        if acc is None:
            acc = out
        else:
            acc = {k: (acc[k] | out[k]) if k == "fired_F" else acc[k] + out[k] for k in acc}
    if acc is None:
        return {}
    acc = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float64), acc)
    n = acc["n"]
    var_x = acc["sum_x2_MD"] / n - (acc["sum_x_MD"] / n) ** 2
    var_e = acc["sum_e2_MD"] / n - (acc["sum_e_MD"] / n) ** 2
    fve = 1.0 - var_e.sum(-1) / var_x.sum(-1)  # pooled over the whole validation set, per model
    norms = np.asarray(jax.device_get(decoder_norms(state.params.w_dec_MFD)), np.float64)
    delta = 0.5 * ((norms[1] - norms[0]) / np.maximum(np.maximum(norms[0], norms[1]), 1e-12) + 1.0)
    out = {f"val/fve_model{m}": float(fve[m]) for m in range(len(fve))}
    out.update({
        "val/l0": float(acc["l0_sum"] / n),
        "val/dead_fraction": float(1.0 - acc["fired_F"].mean()),
        "val/chat_only": int((delta > 0.9).sum()),
        "val/base_only": int((delta < 0.1).sum()),
        "val/shared": int(((delta >= 0.4) & (delta <= 0.6)).sum()),
    })
    return out


# ----------------------------------------------------------------------------- workdir files


def _resolved_config(model_cfg, train_cfg, run_cfg, extra: Optional[dict]) -> dict:
    def plain(dc):
        d = dataclasses.asdict(dc)
        return {k: (v.name if hasattr(v, "name") else v) for k, v in d.items()}

    return {"model": plain(model_cfg), "train": plain(train_cfg), "run": plain(run_cfg), "data": extra or {}}


# keys that may change between a run and its resumption
_RESUMABLE_KEYS = {("run", "log_every"), ("run", "eval_every"), ("run", "eval_batches"),
                   ("run", "checkpoint_every"), ("run", "keep_checkpoints"), ("run", "export"),
                   ("run", "async_checkpoint"), ("run", "mesh_data"), ("run", "mesh_latent"),
                   ("run", "tensorboard")}


def _is_remote(path) -> bool:
    return "://" in str(path)


def write_text_atomic(path, text: str) -> None:
    """Local files: write a temporary sibling and rename (a crash never leaves half a file).
    Object stores (gs://): a single object write is already atomic."""
    from etils import epath

    path = epath.Path(path)
    if _is_remote(path):
        path.write_text(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(str(tmp), str(path))


def check_or_write_config(workdir, resolved: dict, is_writer: bool) -> None:
    path = workdir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diffs = []
        for section in ("model", "train", "run", "data"):
            for key in sorted(set(old.get(section, {})) | set(resolved.get(section, {}))):
                if (section, key) in _RESUMABLE_KEYS:
                    continue
                a, b = old.get(section, {}).get(key), resolved.get(section, {}).get(key)
                if a != b:
                    diffs.append(f"{section}.{key}: {a!r} -> {b!r}")
        if diffs:
            raise ValueError(
                f"{workdir} holds a run with a different config ({'; '.join(diffs[:6])}); "
                "use a new --workdir, or rerun with the original flags to resume"
            )
        return
    if is_writer:
        workdir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(resolved, indent=2, sort_keys=True))


class MetricsLog:
    """`metrics.jsonl`: rows of steps >= the resumed step are dropped at start (they were written
    after the checkpoint we resume from). Local files are appended to; object stores, which cannot
    append, get the whole (small) file rewritten at each write."""

    def __init__(self, path, start_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        self.rows: list[str] = []
        if not enabled:
            return
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", -1) < start_step:
                        self.rows.append(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
        write_text_atomic(path, "".join(r + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(row)
        self.rows.append(line)
        if _is_remote(self.path):
            self.path.write_text("".join(r + "\n" for r in self.rows))
        else:
            with open(str(self.path), "a") as fh:
                fh.write(line + "\n")


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


# ----------------------------------------------------------------------------- the loop


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
) -> CrossCoder:
    """Train (or resume) a crosscoder in `workdir`; returns the trained model.

    `val_source`: a callable returning a fresh iterable of validation batches (local rows), or None.
    """
    from etils import epath

    workdir = epath.Path(workdir)  # local paths and gs:// alike
    is_writer = jax.process_index() == 0
    resolved = _resolved_config(model_cfg, train_cfg, run_cfg, data_description)
    check_or_write_config(workdir, resolved, is_writer)
    if mesh is None:
        if run_cfg.mesh_data or run_cfg.mesh_latent:
            mesh = shd.make_mesh(run_cfg.mesh_data or None, run_cfg.mesh_latent or None)
        else:
            mesh = shd.make_mesh(*shd.auto_mesh_shape(model_cfg.dict_size, run_cfg.batch_size))
    shd.check_shapes(model_cfg, run_cfg.batch_size, mesh)

    # model k-annealing: the step is built for k_max and told k(t) each step
    k_target = train_cfg.k if train_cfg.k is not None else model_cfg.k
    if model_cfg.is_batchtopk:
        model_cfg = model_cfg.replace(k=k_target)
        k_max = train_cfg.k_max if train_cfg.k_max is not None else k_target
        annealing = train_cfg.k_annealing_steps > 0 and k_max != k_target
        step_cfg, k_cap = (model_cfg.replace(k=k_max), k_max) if annealing else (model_cfg, None)
    else:
        step_cfg, k_cap = model_cfg, None

    if init_model is None:
        from flax import nnx

        init_model = CrossCoder(model_cfg, rngs=nnx.Rngs(run_cfg.seed))
    state = shard_train_state(init_train_state(init_model, train_cfg, run_cfg.steps), model_cfg, train_cfg, mesh,
                              run_cfg.steps)
    step_fn = make_train_step(step_cfg, train_cfg, run_cfg.steps, k_cap=k_cap, mesh=mesh)
    eval_step = make_eval_step(model_cfg)

    ckpt_dir = str(workdir / "checkpoints") if _is_remote(workdir) else os.path.abspath(str(workdir / "checkpoints"))
    ckpt = RunCheckpointer(ckpt_dir, keep=run_cfg.keep_checkpoints,
                           async_save=run_cfg.async_checkpoint)
    metrics_path = workdir / "metrics.jsonl"
    rows = local_rows(mesh, run_cfg.batch_size)
    if (rows.stop - rows.start) * jax.process_count() != run_cfg.batch_size:
        raise ValueError(
            f"the mesh {dict(mesh.shape)} puts overlapping batch rows on several processes; keep the "
            "latent axis within one host (mesh_latent <= devices per host)"
        )
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, state)
        train_source.load_state_dict(meta["cursor"])
        start = int(meta["step"])
        log.info("resumed from %s at step %d", workdir, start)
    metrics_log = MetricsLog(metrics_path, start, is_writer)
    from jaxcoders.tensorboard import TensorBoardLog

    tb = TensorBoardLog(workdir / "tensorboard", start, enabled=is_writer and run_cfg.tensorboard)

    def write_metrics(row: dict) -> None:
        metrics_log.write(row)
        tb.write(row)

    show = progress if progress is not None else (is_writer and not os.environ.get("CI"))
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=run_cfg.steps, initial=start, desc=f"train {model_cfg.architecture}", unit="step")
    t_last, step_last = time.time(), start
    pending = []
    step = start
    data_iter = iter(train_source)
    with _Preemption() as preempt, _closing(ckpt), _closing(tb):
        while step < run_cfg.steps:
            x = _as_global_batch(next(data_iter), mesh, run_cfg.batch_size)
            if step == 0 and model_cfg.is_batchtopk and train_cfg.init_b_dec_geometric_median:
                x0 = normalize_input(model_cfg, state.buffers, x.astype(jnp.float32))
                gm = jax.jit(geometric_median, out_shardings=shd.named(mesh, shd.param_specs().b_dec_MD))(x0)
                state = state._replace(params=state.params._replace(b_dec_MD=gm))
            k_t = jnp.asarray(k_at_step(train_cfg, k_target, step) if model_cfg.is_batchtopk else 0, jnp.int32)
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
                    raise ValueError(f"training batch at step {bad[0]} contains NaN or inf values (skipped); "
                                     "clean the activation store")
                now = time.time()
                tok_s = (step - step_last) * run_cfg.batch_size / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                row = {k: v for k, v in host[-1].items() if k != "nonfinite_input"}
                row.update(step=step - 1, tokens=step * run_cfg.batch_size, tokens_per_s=tok_s,
                           loss_mean=float(np.mean([m["loss"] for m in host])))
                write_metrics(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss_mean']:.4g}", tok_s=f"{tok_s:,.0f}")
            if val_source is not None and run_cfg.eval_every and (step % run_cfg.eval_every == 0 or step == run_cfg.steps):
                batches = (b for _, b in zip(range(run_cfg.eval_batches), val_source()))
                row = evaluate(model_cfg, state, batches, mesh, eval_step)
                row["step"] = step - 1
                write_metrics(row)
            stop = preempt.requested
            if jax.process_count() > 1:  # every host must stop (and save) at the same step
                stop = at_log_step and _any_process(stop)
            if step % run_cfg.checkpoint_every == 0 or step == run_cfg.steps or stop:
                ckpt.save(step, state, {"step": step, "cursor": train_source.state_dict()},
                          force=True)
            if stop:
                log.warning("SIGTERM: checkpoint saved at step %d; stopping", step)
                break
    if bar is not None:
        bar.close()

    buffers = state.buffers._replace(k=jnp.asarray(k_target or 0, jnp.int32))
    params = jax.device_get(state.params)
    trained = CrossCoder(model_cfg, params=params, buffers=jax.device_get(buffers))
    if run_cfg.export and is_writer and step >= run_cfg.steps:
        from jaxcoders.io.safetensors import save_reference

        save_reference(trained, workdir / "export")
    return trained
