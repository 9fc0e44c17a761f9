"""Stage 7 of the demo, the HTML side: which latents get example cards (`card_latents`, (n,) int64
latent ids), which one the report opens on (`featured_latent`), and the max-activating examples
plus the static HTML report of each crosscoder (`html_report`: `<out>/report/<arch>/report.html`,
via `jaxcoders.analysis.examples` / `jaxcoders.analysis.report`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from jaxcoders.analysis.examples import collect_examples, write_examples
from jaxcoders.analysis.report import build_report


def card_latents(table, tp: dict, planted_share: np.ndarray, n: int) -> np.ndarray:
    """The latents that get example cards in the HTML report (examples cost time per latent):
    chat-only, then the planted latents, then base-only, then the most active ones; at most n."""
    total = tp["mass_CF"].sum(0)
    alive = total > 0
    dtag = table["tag"].to_numpy()
    order = []
    for sel, key in (((dtag == "chat-only") & alive, -total), (alive & (planted_share > 0.5), -planted_share * total),
                     ((dtag == "base-only") & alive, -total), (alive, -total)):
        idx = np.flatnonzero(sel)
        order += [j for j in idx[np.argsort(key[idx], kind="stable")] if j not in order]
    return np.sort(np.asarray(order[:n], np.int64))


def featured_latent(cc: dict, cards: np.ndarray):
    """The latent whose card the HTML report opens on: a chat-only latent that survives Latent
    Scaling and fires mostly on planted tokens, else the top chat-only latent, else the top planted
    latent; "first" (the report's own order) when none of them has a card."""
    chat_only = cc["top_chat_only"]
    ranked = ([r for r in chat_only if r["genuine"] and r["top_planted_share"] >= 0.5]
              + [r for r in chat_only if r["genuine"]] + chat_only + cc["top_planted"])
    return next((r["latent"] for r in ranked if r["latent"] in set(cards.tolist())), "first")


def html_report(out: Path, trained: dict, store, tables: dict, cards: dict, tok, log,
                open_latents: Optional[dict] = None) -> Optional[dict]:
    """Max-activating examples of the latents `cards` ({arch: latent ids}) and the static HTML
    report of each crosscoder (`jaxcoders.analysis.examples` / `.report`):
    `<out>/report/<arch>/report.html`.
    Returns {arch: path} of the reports written, or None when none was."""
    paths = {}
    for arch, (model, _) in trained.items():
        d = out / "report" / arch
        try:
            table = tables[arch][0]
            res = collect_examples(model, store, latents=cards[arch], per_bucket=10, before=16, after=4,
                                   max_activation=table["max_activation"].to_numpy(), batch_size=4096)
            write_examples(res, d)
            paths[arch] = str(build_report(d, tokenizer=tok, title=f"jaxcoders demo: {arch}", max_cards=200,
                                           sort_by="delta_norm", open_latent=(open_latents or {}).get(arch)))
        except Exception as e:  # the HTML report is an extra; summary.md stands on its own
            log(f"      ({arch}: HTML report skipped: {type(e).__name__}: {e})")
    return paths or None
