"""The paper's baseline: one SAE per model (an M = 1 dictionary) on the store's model-0 (base) and
model-1 (chat) columns, trained with the crosscoders' trainer (`train_and_evaluate` + `Loader`,
even dataset mix), then matched across the two models by decoder cosine (`analysis.sae_match`).

Each SAE normalizes its own inputs from the store's statistics of its model (docs/method.md §5,
`target_rms`), as the demo's crosscoders do. Workdirs `<out>/sae/<base|chat>/` (a rerun with the
same settings resumes, or returns the finished model). Statistics (FVE, L0, dead fraction) come
from the usage statistics over the same store rows as the crosscoders' analysis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from jaxcoders.analysis import sae_match, stats
from jaxcoders.paper.config import PaperConfig

MODELS = ("base", "chat")


class ModelColumn:
    """Model m's rows of an (N, M, D) source as an (N, 1, D) one: a view of an ActivationStore (or
    array) for the analysis pass, or of a Loader (its batches) for the trainer."""

    def __init__(self, source, m: int):
        self.source, self.m = source, int(m)

    # -- row access (analysis passes)
    @property
    def num_rows(self) -> int:
        n = getattr(self.source, "num_rows", None)
        return int(n) if n is not None else len(self.source)

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, rows):
        return np.asarray(self.source[rows])[:, self.m:self.m + 1]

    # -- batches (training)
    def __iter__(self):
        for x in self.source:
            yield x[:, self.m:self.m + 1]

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)

    def close(self) -> None:
        if hasattr(self.source, "close"):
            self.source.close()


def sae_configs(cfg: PaperConfig, d_model: int, dict_size: int, k: int) -> tuple:
    """(CrossCoderConfig with M = 1, TrainConfig, RunConfig) of one SAE."""
    from jaxcoders.config import CrossCoderConfig, RunConfig, TrainConfig

    T, B = cfg.sae_steps, cfg.sae_batch_size
    arch = cfg.sae_architecture
    if arch == "batchtopk":
        mkw = dict(k=k, norm_init_scale=1.0)
        tkw = dict(k=k, threshold_start_step=max(1, T // 4), dead_tokens_threshold=max(B, T * B // 10))
    else:
        mkw = dict(norm_init_scale=0.1)
        tkw = dict(l1_coefficient=cfg.sae_l1_coefficient)
    mcfg = CrossCoderConfig(1, d_model, dict_size, architecture=arch, input_normalization=cfg.sae_target_rms is not None,
                            **mkw)
    tcfg = TrainConfig(lr=cfg.sae_lr, warmup_steps=max(1, min(100, T // 10)), total_steps=T, seed=cfg.seed, **tkw)
    run = RunConfig(steps=T, batch_size=B, log_every=max(1, min(50, T // 10)), eval_every=0, checkpoint_every=T,
                    keep_checkpoints=1, seed=cfg.seed, export=True)
    return mcfg, tcfg, run


def train_sae(cfg: PaperConfig, store, m: int, dict_size: int, k: int, workdir: Path):
    """The SAE of model m (0 = base, 1 = chat) trained on the store's train split."""
    from flax import nnx

    from jaxcoders.core.module import CrossCoder
    from jaxcoders.core.params import normalization_buffers
    from jaxcoders.data.loader import Loader
    from jaxcoders.training.loop import train_and_evaluate

    mcfg, tcfg, run = sae_configs(cfg, store.d_model, dict_size, k)
    init = CrossCoder(mcfg, rngs=nnx.Rngs(cfg.seed + m))
    if mcfg.input_normalization:
        st = store.stats
        init = CrossCoder(mcfg, params=init.params, buffers=normalization_buffers(
            init.buffers, st.mean[m:m + 1], st.std[m:m + 1], target_rms=cfg.sae_target_rms))
    train = ModelColumn(Loader(store, cfg.sae_batch_size, seed=cfg.seed, split="train", mix="even"), m)
    return train_and_evaluate(mcfg, tcfg, run, workdir, train, None, init_model=init,
                              data_description={"store": store.url, "split": "train", "mix": "even", "model": m},
                              progress=cfg.progress)


def sae_baseline(cfg: PaperConfig, store, dict_size: int, k: int, out: Path, log: Callable) -> dict:
    """Train both SAEs, their usage statistics and the cross-model matching:
    {"summaries": {"sae_base": {...}, "sae_chat": {...}}, "match": sae_match.match_saes(...),
     "workdirs": {...}}."""
    saes, summaries, workdirs = {}, {}, {}
    for m, name in enumerate(MODELS):
        workdir = out / "sae" / name
        log(f"      SAE of the {name} model: F={dict_size}, {cfg.sae_architecture}"
            + (f" (k={k})" if cfg.sae_architecture == "batchtopk" else "") + f", {cfg.sae_steps} steps of "
            f"{cfg.sae_batch_size} tokens")
        sae = train_sae(cfg, store, m, dict_size, k, workdir)
        res = stats.usage_statistics(sae, ModelColumn(store, m), batch_size=cfg.batch_size, max_rows=cfg.max_tokens)
        saes[name], workdirs[name] = sae, str(workdir)
        summaries[f"sae_{name}"] = {**res["scalar"], f"fve_{name}": res["scalar"]["fve"],
                                    "alive": ~np.asarray(res["latent"]["dead"], bool)}
    match = sae_match.match_saes(np.asarray(saes["base"].params.w_dec_MFD)[0],
                                 np.asarray(saes["chat"].params.w_dec_MFD)[0],
                                 alive_base=summaries["sae_base"].pop("alive"),
                                 alive_chat=summaries["sae_chat"].pop("alive"),
                                 low=cfg.twin_low, high=cfg.twin_high)
    return {"summaries": summaries, "match": match, "workdirs": workdirs}
