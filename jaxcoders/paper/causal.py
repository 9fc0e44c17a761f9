"""The causal evaluation of a paper run: the evaluation set (an existing file, or prompts the chat
model answers: `jaxcoders.interventions.evalset`), one `run_interventions` per crosscoder, and the
tables behind the KL figures.

Edits (docs/method.md §6): the unedited base model, the template-token patch and the chat model
itself are run once (with the first crosscoder: crosscoder "none" in the tables); per crosscoder
base + bias difference, all latents, and the latent sets: the chat-only latents (Δ > 0.9) and the
best / worst half of them by ν (`split_by_nu`, low ν = genuinely chat-specific). Empty sets are
left out (an empty set's edit is the bias edit).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from jaxcoders.interventions import metrics as M
from jaxcoders.interventions.codes import split_by_nu
from jaxcoders.paper.config import ARCHS, CROSSCODER_EDITS, MODEL_EDITS, PaperConfig

LABELS = {"base": "base model", "chat": "chat model", "template": "template-token patching",
          "bias_only": "base + bias difference", "all_latents": "base + all latents",
          "latents:chat_only": "base + chat-only latents"}


def edit_label(name: str) -> str:
    """A readable name of an edit for tables and legends."""
    if name in LABELS:
        return LABELS[name]
    for half in ("best", "worst"):
        if name.startswith(f"latents:{half}_half_"):
            nu = name.split(f"{half}_half_", 1)[1].replace("nu_error", "ν^ε").replace("nu_reconstruction", "ν^r")
            return f"base + {half} 50% chat-only by {nu}"
    return name


def evaluation_set(cfg: PaperConfig, out: Path, log: Callable) -> tuple[str, Optional[dict]]:
    """(path of the evaluation conversations, the builder's meta or None for a given file)."""
    if cfg.evalset:
        return cfg.evalset, None
    from jaxcoders.interventions.evalset import EvalSetConfig, build_evalset

    path = out / "evalset.jsonl"
    meta = build_evalset(EvalSetConfig(
        chat_model=cfg.chat_model, dataset=cfg.prompts, out=str(path), chat_column=cfg.prompt_chat_column
        if cfg.prompt_column is None else None, prompt_column=cfg.prompt_column, split=cfg.prompt_split,
        num_conversations=cfg.num_conversations, max_new_tokens=cfg.max_new_tokens, max_prompt_len=cfg.max_len,
        sample=cfg.sample, seed=cfg.seed, batch_size=cfg.generate_batch_size, device=cfg.device,
        model_dtype=cfg.model_dtype, progress=cfg.progress))
    log(f"      evaluation set: {meta['conversations']} conversations answered by the chat model → {path}")
    return str(path), meta


def latent_sets(table, nu_column: str) -> dict:
    """{name: sorted latent ids}: chat_only and the best / worst half of them by `nu_column`."""
    latent = table["latent"].to_numpy(np.int64)
    sets = {"chat_only": latent[table["tag"].to_numpy() == "chat-only"]}
    sets.update(split_by_nu(table, nu_column=nu_column))
    return {k: sorted(int(j) for j in v) for k, v in sets.items() if len(v)}


def causal_runs(cfg: PaperConfig, evalset: str, tables: dict, out: Path, log: Callable) -> dict:
    """`run_interventions` per crosscoder into `<out>/causal/<arch>/`; returns {arch: result dict}."""
    from jaxcoders.interventions.run import InterventionConfig, run_interventions

    res = {}
    for i, arch in enumerate(ARCHS):
        d = out / "causal" / arch
        d.mkdir(parents=True, exist_ok=True)
        sets = latent_sets(tables[arch], cfg.nu_column)
        (d / "latent_sets.json").write_text(json.dumps(sets))
        edits = (MODEL_EDITS if i == 0 else ()) + CROSSCODER_EDITS
        icfg = InterventionConfig(
            base_model=cfg.base_model, chat_model=cfg.chat_model, layer=cfg.layer, dataset=evalset, out=str(d),
            crosscoder=getattr(cfg, arch), chat_column=cfg.evalset_column, num_conversations=cfg.num_conversations,
            max_len=cfg.max_len, edits=edits, latents_file=str(d / "latent_sets.json") if sets else None,
            nu_column=cfg.nu_column, positions=cfg.positions, batch_size=cfg.eval_batch_size, device=cfg.device,
            model_dtype=cfg.model_dtype, n_boot=cfg.n_boot, seed=cfg.seed, progress=cfg.progress)
        r = run_interventions(icfg)
        r["_dir"] = str(d)
        res[arch] = r
        kl = {e: v["all"]["kl_chat"]["mean"] for e, v in r["edits"].items()}
        log(f"      {arch}: KL(P_chat ‖ ·) " + ", ".join(f"{edit_label(e)} {v:.3f}" for e, v in kl.items()
                                                      if v is not None) + f" ({r['tokens']['all']} tokens)")
    return res


def _owner(arch: str, edit: str) -> str:
    return "none" if edit in MODEL_EDITS else arch


def kl_by_position(results: dict, metric: str = "kl_chat"):
    """crosscoder, edit, label, position (0.. and "all"), mean, ci_low, ci_high, tokens, conversations."""
    import pandas as pd

    rows = []
    for arch, r in results.items():
        for edit, per in r["by_position"].items():
            for v in per[metric]:
                rows.append({"crosscoder": _owner(arch, edit), "edit": edit, "label": edit_label(edit),
                             "position": str(v["position"]), **{k: v[k] for k in ("mean", "ci_low", "ci_high", "tokens",
                                                                                  "conversations")}})
            a = r["edits"][edit]["all"][metric]
            rows.append({"crosscoder": _owner(arch, edit), "edit": edit, "label": edit_label(edit), "position": "all",
                         **{k: a[k] for k in ("mean", "ci_low", "ci_high", "tokens", "conversations")}})
    return pd.DataFrame(rows)


def causal_table(results: dict):
    """crosscoder, edit, label, subset (all / first_k), metric (kl_chat, kl_base, ce), mean and 95% CI."""
    import pandas as pd

    rows = []
    for arch, r in results.items():
        for edit, e in r["edits"].items():
            for subset in M.SUBSETS:
                for metric in M.METRICS:
                    v = e[subset][metric]
                    rows.append({"crosscoder": _owner(arch, edit), "edit": edit, "label": edit_label(edit),
                                 "subset": subset, "metric": metric,
                                 **{k: v[k] for k in ("mean", "ci_low", "ci_high", "tokens", "conversations")}})
    return pd.DataFrame(rows)


def best_vs_worst(results: dict, nu_column: str, n_boot: int, seed: int) -> dict:
    """Per crosscoder: KL(P_chat ‖ ·) of the worst half minus the best half (paired bootstrap over
    conversations, all assistant tokens and per position), or nothing when the halves are missing."""
    out = {}
    best, worst = f"latents:best_half_{nu_column}", f"latents:worst_half_{nu_column}"
    for arch, r in results.items():
        if best not in r["edits"] or worst not in r["edits"]:
            continue
        z = np.load(Path(r["_dir"]) / "interventions_per_conversation.npz")
        diff = {s: M.bootstrap_mean(z[f"{worst}/{s}/kl_chat_sum"] - z[f"{best}/{s}/kl_chat_sum"], z[f"count_{s}"],
                                    n_boot=n_boot, seed=seed) for s in M.SUBSETS}
        if "count_position" in z.files:
            d = z[f"{worst}/position/kl_chat_sum"] - z[f"{best}/position/kl_chat_sum"]
            diff["by_position"] = [M.bootstrap_mean(d[:, q], z["count_position"][:, q], n_boot=n_boot, seed=seed)
                                   for q in range(d.shape[1])]
        out[arch] = diff
    return out
