"""Opening what the analysis commands read: activations (an ActivationStore or an array file),
their per-row labels, and a readable name for a crosscoder path (no absl here).

Crosscoder paths: a reference-layout directory (model.safetensors + config.json), or a training
workdir holding one in `<workdir>/export/` (preferred) or `<workdir>/final/`.

Activations: `--store=<ActivationStore url>` (opened with `jaxcoders.data.store.ActivationStore.open`)
or `--acts=<file>`: an (N, M, D) `.npy` (memory-mapped) or an `.npz` holding `x` (e.g. the
reference fixtures' latent_scaling.npz). Per-row labels for the per-class statistics come from the
store (`dataset_ids` with the names in `datasets`; `token_classes`, ids of
`jaxcoders.data.store.TokenClass`), or from `--labels=<.npy of (N,) ints>` holding TokenClass ids
(0 text, 1 bos, 2 template, 3 system, 4 user, 5 assistant, 6 other_role; -1 none).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from jaxcoders.analysis import stats
from jaxcoders.io.sources import crosscoder_name  # noqa: F401 - the commands' name for outputs


def _attr(obj, *names):
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            try:
                return v() if callable(v) else v
            except TypeError:
                continue
    return None


def open_activations(store: Optional[str] = None, acts: Optional[str] = None, labels: Optional[str] = None):
    """(acts, labels dict, label_classes dict) from the CLI flags."""
    if bool(store) == bool(acts):
        raise ValueError("give exactly one of --store=<ActivationStore url> or --acts=<file.npy|file.npz>")
    lab, classes = {}, {}
    if store:
        from jaxcoders.data.store import ActivationStore  # lazy: being written alongside

        src = ActivationStore.open(store)
        ds = _attr(src, "dataset_ids")
        if ds is not None:
            lab["dataset"] = ds
            names = _attr(src, "dataset_names", "datasets")
            if names is not None:
                classes["dataset"] = tuple(str(n) for n in names)
        tc = _attr(src, "token_classes")
        if tc is not None:
            lab["token_class"] = tc
            classes["token_class"] = stats.token_class_names()
    else:
        p = Path(acts)
        if not p.is_file():
            raise FileNotFoundError(f"--acts={acts} does not exist; pass an (N, M, D) .npy or an .npz holding x")
        if p.suffix == ".npz":
            z = np.load(p)
            key = "x" if "x" in z.files else z.files[0]
            src = z[key]
        else:
            src = np.load(p, mmap_mode="r")
        if src.ndim != 3:
            raise ValueError(f"--acts={acts} has shape {src.shape}; expected (N, M, D)")
    if labels:
        lab["token_class"] = np.load(labels, mmap_mode="r")
        classes["token_class"] = stats.token_class_names()
    return src, lab, classes


def mesh_from_flags(latent: int = 1):
    from jaxcoders.analysis.mesh import make_mesh

    return make_mesh(latent=latent)
