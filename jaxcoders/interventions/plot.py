"""`interventions.png`: per edit, mean ± 95% CI of CE, KL(P_chat ‖ P_edit), KL(P_base ‖ P_edit) on all
assistant-predicting tokens and on the first k of each assistant turn (matplotlib, Agg)."""
from __future__ import annotations

import numpy as np

from jaxcoders.interventions.metrics import METRICS

_TITLES = {"ce": "CE (true next token)", "kl_chat": "KL(P_chat ‖ P_edited)", "kl_base": "KL(P_base ‖ P_edited)"}


def plot_results(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["edits"])
    k = result.get("config", {}).get("first_k", "k")
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 0.45 * len(names) + 1.8), sharey=True)
    y = np.arange(len(names))
    for ax, m in zip(axes, METRICS):
        for off, subset, label in ((-0.18, "all", "all assistant tokens"), (0.18, "first_k", f"first {k} per turn")):
            mean, lo, hi = [], [], []
            for n in names:
                v = result["edits"][n][subset][m]
                mu = np.nan if v["mean"] is None else v["mean"]
                mean.append(mu)
                lo.append(0.0 if v["mean"] is None else max(mu - v["ci_low"], 0.0))
                hi.append(0.0 if v["mean"] is None else max(v["ci_high"] - mu, 0.0))
            ax.barh(y + off, mean, height=0.34, xerr=[lo, hi], capsize=2, label=label)
        ax.set_title(_TITLES[m])
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([f"{n} → {result['edits'][n]['continue_with']}" for n in names])
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"layer {result['config']['layer']}: {result['num_conversations']} conversations, "
                 f"{result['tokens']['all']} scored tokens (95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
