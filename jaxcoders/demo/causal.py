"""Stage 7 of the demo, causal side: `jaxcoders.interventions` on held-out chats for each
crosscoder (`<out>/report/<arch>/interventions/`: KL to the chat / base model per edit in
`CAUSAL_EDITS`, plus one `latents:<set>` edit per named latent set of `latent_sets`: the
chat-minus-base decoder difference of the chat-only, Latent-Scaling-surviving and planted
latents and a same-size control)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from jaxcoders.demo import corpus
from jaxcoders.demo.config import ARCHS, DemoConfig

# edits of the demo's causal evaluation (jaxcoders.interventions.edits), then "latents" (one edit
# per latent set of `latent_sets`)
CAUSAL_EDITS = ("base", "chat", "base_to_chat", "template", "chat_recon", "all_latents", "all_latents_no_bias",
                "bias_only")


def latent_sets(result_cc: dict, table) -> dict:
    """Named latent sets whose chat-minus-base decoder difference the `latents:<set>` edits add to
    the base residual: the chat-only latents (Δnorm > 0.9), those surviving Latent Scaling, the
    planted latents (> 50% of their activation mass on planted tokens) and as a same-size control
    the most active other latents. Empty sets are left out."""
    dtag = table["tag"].to_numpy()
    latent = table["latent"].to_numpy() if "latent" in table else np.arange(len(table))
    sets = {"chat_only": latent[dtag == "chat-only"]}
    if "genuine_chat_specific" in table:
        sets["chat_only_surviving_ls"] = latent[table["genuine_chat_specific"].fillna(False).to_numpy(bool)]
    share = np.asarray(table["planted_share"], np.float64) if "planted_share" in table else None
    if share is not None:
        planted = latent[np.nan_to_num(share) > 0.5]
        sets["planted"] = planted
        if len(planted) and "frequency" in table:  # control: as many non-planted latents, the most frequent
            others = np.flatnonzero(~np.isin(latent, planted) & (np.nan_to_num(share) <= 0.5))
            freq = np.nan_to_num(np.asarray(table["frequency"], np.float64))[others]
            sets["control_frequent"] = np.sort(latent[others[np.argsort(-freq, kind="stable")[:len(planted)]]])
    return {k: sorted(int(j) for j in v) for k, v in sets.items() if len(v)}


def _edit_means(r: dict, sets: dict) -> dict:
    """The summary of one `run_interventions` result: per edit and subset the KL / CE statistics."""
    return {"edits": {name: {s: {m: e[s][m] for m in ("kl_chat", "kl_base", "ce")} for s in ("all", "first_k")}
                      for name, e in r["edits"].items()},
            "latent_sets": {k: len(v) for k, v in sets.items()},
            "conversations": r["num_conversations"], "tokens": r["tokens"], "seconds": r["seconds"]}


def causal_evaluation(cfg: DemoConfig, pair, layer: int, result: dict, log: Callable) -> Optional[dict]:
    """`jaxcoders.interventions.run_interventions` for each crosscoder on `cfg.eval_chats` fresh
    conversations: `<out>/report/<arch>/interventions/` (JSON with 95% CIs, per-conversation npz,
    plot). Returns {arch: {edit: {subset: {metric: mean/CI}}}, "latent_sets": ...} or None when skipped."""
    if cfg.eval_chats <= 0:
        return None
    import pandas as pd  # the analysis extra

    from jaxcoders.interventions.run import InterventionConfig, run_interventions  # torch side: lazy

    out = Path(cfg.out)
    path = corpus.write_eval_chats(out / "data", n=cfg.eval_chats, seed=cfg.seed + 200)
    res = {}
    for arch in ARCHS:
        d = out / "report" / arch
        table = pd.read_parquet(d / "latents.parquet")
        sets = latent_sets(result["crosscoders"][arch], table)
        (d / "latent_sets.json").write_text(json.dumps(sets))
        icfg = InterventionConfig(
            base_model=pair.base_dir, chat_model=pair.chat_dir, layer=layer, dataset=path, out=str(d / "interventions"),
            crosscoder=str(out / arch), chat_column="conversation", num_conversations=cfg.eval_chats,
            max_len=cfg.eval_max_len, edits=CAUSAL_EDITS, latents_file=str(d / "latent_sets.json") if sets else None,
            batch_size=8, device="cpu", seed=cfg.seed, progress=cfg.progress)
        r = run_interventions(icfg)
        res[arch] = _edit_means(r, sets)
        kl = lambda e: r["edits"][e]["all"]["kl_chat"]["mean"]  # noqa: E731
        log(f"      {arch}: KL(P_chat ‖ ·) base {kl('base'):.3f}, all latents {kl('all_latents'):.3f}, "
            f"chat recon {kl('chat_recon'):.3f} ({r['tokens']['all']} tokens, {r['seconds']:.0f} s)")
    return res
