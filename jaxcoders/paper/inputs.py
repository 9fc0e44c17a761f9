"""The inputs of a paper run, loaded and checked before any work: the two crosscoders (L1 and
BatchTopK, same activation width), the optional tied one, and the ActivationStore they were
trained on (M = 2 models of the crosscoders' width)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from jaxcoders.paper.config import ARCHS, PaperConfig, PaperError


@dataclasses.dataclass
class Inputs:
    crosscoders: dict  # {arch: CrossCoder}
    names: dict  # {arch: display name}
    store: object  # ActivationStore
    tied: Optional[object] = None


def _load(spec: str, flag: str):
    from jaxcoders.io.reference import load_reference

    if not spec:
        raise PaperError(f"{flag} is required: a crosscoder directory, workdir, gs://..., org/name or hf://...")
    return load_reference(spec)


def load_inputs(cfg: PaperConfig) -> Inputs:
    """Load and check everything the analyses read (not the torch models)."""
    from jaxcoders.data.store import ActivationStore
    from jaxcoders.io.sources import crosscoder_name

    models = {}
    for arch in ARCHS:
        m = _load(getattr(cfg, arch), f"--{arch}")
        if m.cfg.architecture != arch:
            raise PaperError(f"--{arch}={getattr(cfg, arch)} is a {m.cfg.architecture} crosscoder; pass the "
                             f"{arch} one there.")
        if m.cfg.num_models != 2:
            raise PaperError(f"--{arch}={getattr(cfg, arch)} has M = {m.cfg.num_models} models; the paper compares "
                             "base/chat crosscoders (M = 2).")
        models[arch] = m
    d = {a: m.cfg.activation_dim for a, m in models.items()}
    if len(set(d.values())) != 1:
        raise PaperError(f"the crosscoders have different activation widths ({d}); pass two trained on the same "
                         "activations.")
    tied = None
    if cfg.tied:
        tied = _load(cfg.tied, "--tied")
        if not tied.cfg.is_tied:
            raise PaperError(f"--tied={cfg.tied} is a {tied.cfg.architecture} crosscoder, not a tied one.")
        if tied.cfg.activation_dim != d["l1"]:
            raise PaperError(f"--tied has D = {tied.cfg.activation_dim} but the crosscoders have D = {d['l1']}.")
    if not cfg.store:
        raise PaperError("--store is required: the ActivationStore the crosscoders were trained on.")
    store = ActivationStore.open(cfg.store)
    if store.num_models != 2 or store.d_model != d["l1"]:
        raise PaperError(f"--store={cfg.store} holds (M, D) = ({store.num_models}, {store.d_model}) activations but "
                         f"the crosscoders expect (2, {d['l1']}); pass the store they were trained on.")
    names = {a: crosscoder_name(getattr(cfg, a)) for a in ARCHS}
    return Inputs(models, names, store, tied)
