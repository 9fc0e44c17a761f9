"""Stage 4 of the demo: an L1 and a BatchTopK crosscoder (F = `dict_size` latents over (2, d_model)
inputs) trained with the store-backed trainer (`jaxcoders.training.loop.train_and_evaluate`, even
text/chat batches, workdirs `<out>/runs/<arch>`), inputs normalized by the model itself from the
store's statistics; both exported in the reference layout to `<out>/l1`, `<out>/batchtopk`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from flax import nnx

from jaxcoders.config import CrossCoderConfig, RunConfig, TrainConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import normalization_buffers
from jaxcoders.data.loader import Loader
from jaxcoders.demo.config import ARCHS, DemoConfig
from jaxcoders.io.reference import save_reference
from jaxcoders.training.loop import train_and_evaluate


def run_configs(cfg: DemoConfig, arch: str, d_model: int) -> tuple:
    """(CrossCoderConfig, TrainConfig, RunConfig) of one architecture at the demo's sizes."""
    T, B = cfg.steps, cfg.batch_size
    if arch == "l1":
        mkw = dict(norm_init_scale=0.1)
        tkw = dict(l1_coefficient=cfg.l1_coefficient)
    else:
        # dead after ~1/10 of the run without firing (the paper's 10M tokens is longer than this run)
        mkw = dict(k=cfg.k, norm_init_scale=1.0)
        tkw = dict(k=cfg.k, threshold_start_step=T // 4, dead_tokens_threshold=max(B, T * B // 10))
    mcfg = CrossCoderConfig(2, d_model, cfg.dict_size, architecture=arch, same_init_for_all_models=True,
                            input_normalization=True, **mkw)
    tcfg = TrainConfig(lr=cfg.lr, warmup_steps=max(1, min(100, T // 10)), total_steps=T, seed=cfg.seed, **tkw)
    run = RunConfig(steps=T, batch_size=B, log_every=max(1, min(50, T // 10)), eval_every=T, eval_batches=8,
                    checkpoint_every=T, keep_checkpoints=1, seed=cfg.seed, export=False)
    return mcfg, tcfg, run


def initial_model(cfg: DemoConfig, mcfg: CrossCoderConfig, stats) -> CrossCoder:
    """A fresh crosscoder (seed `cfg.seed`) whose normalization buffers come from the store's
    per-model mean / std `stats` (inputs scaled to total RMS `cfg.target_rms`)."""
    fresh = CrossCoder(mcfg, rngs=nnx.Rngs(cfg.seed))
    return CrossCoder(mcfg, params=fresh.params,
                      buffers=normalization_buffers(fresh.buffers, stats.mean, stats.std, target_rms=cfg.target_rms))


def train_crosscoders(cfg: DemoConfig, store, log: Callable) -> dict:
    """Train the L1 and BatchTopK crosscoders on `store`; returns {arch: (model, workdir)}."""
    T, B = cfg.steps, cfg.batch_size
    st = store.stats
    out = {}
    for arch in ARCHS:
        mcfg, tcfg, run = run_configs(cfg, arch, store.d_model)
        init = initial_model(cfg, mcfg, st)
        workdir = Path(cfg.out, "runs", arch)
        shutil.rmtree(workdir, ignore_errors=True)  # the demo always trains afresh (models and store are cached)
        train = Loader(store, B, seed=cfg.seed, split="train", mix="even")

        def val():
            return Loader(store, B, split="validation", mix="even", shuffle=False, prefetch=0)

        log(f"      {arch}: F={cfg.dict_size}, {T} steps of {B} tokens"
            + (f", k={cfg.k}" if arch == "batchtopk" else f", mu={cfg.l1_coefficient}"))
        model = train_and_evaluate(mcfg, tcfg, run, workdir, train, val, init_model=init,
                                   data_description={"store": store.url, "split": "train", "mix": "even"},
                                   progress=cfg.progress)
        save_reference(model, Path(cfg.out, arch))
        out[arch] = (model, workdir)
    return out


def last_eval(workdir: Path) -> dict:
    """The last validation row (`val/...` metrics) of a trainer workdir's `metrics.jsonl`; {} if none."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "val/l0" in r]
    return evals[-1] if evals else {}
