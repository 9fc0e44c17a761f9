"""The paper's figures (PNG, matplotlib Agg), each returning the numbers it draws as a data frame
(written next to it as CSV by `jaxcoders.paper.run`). Colours follow `analysis.plots.COLORS`; the two
crosscoders are drawn in the same axes wherever the paper compares them."""
from __future__ import annotations

import json

import numpy as np

from jaxcoders.analysis.decoder import TAGS
from jaxcoders.analysis.plots import COLORS, pyplot, save_figure
from jaxcoders.analysis.tables import NU_ERROR_MAX, NU_RECON_MAX

CC_STYLE = {"l1": dict(color="tab:purple", ls="-"), "batchtopk": dict(color="tab:orange", ls="-"),
            "none": dict(color="0.3", ls="--")}
BANDS = (((0.0, 0.1), "base-only"), ((0.4, 0.6), "shared"), ((0.9, 1.0), "chat-only"))
NU_RANGE = (-0.5, 1.5)  # ν outside is drawn in the edge bins


def _hist_rows(values, bins, **keys) -> list[dict]:
    counts, edges = np.histogram(np.clip(values, bins[0], bins[-1]), bins=bins)
    return [{**keys, "bin_lo": float(lo), "bin_hi": float(hi), "count": int(c)}
            for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


def delta_norm_figure(tables: dict, names: dict, path):
    """Δnorm histograms of both crosscoders on one (log) axis with the class bands."""
    import pandas as pd

    plt = pyplot()
    bins = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (lo, hi), tag in BANDS:
        ax.axvspan(lo, hi, color=COLORS[tag], alpha=0.08, lw=0)
    for x in (0.1, 0.4, 0.6, 0.9):
        ax.axvline(x, color="0.4", ls=":", lw=0.8)
    rows = []
    for arch, t in tables.items():
        d = t["delta_norm"].to_numpy(float)
        d = d[np.isfinite(d)]
        r = _hist_rows(d, bins, crosscoder=arch)
        rows += r
        name = names.get(arch, arch)
        ax.stairs([x["count"] for x in r], bins, label=(f"{name} ({arch}" if name != arch else f"{arch} (") + f"F={len(t)})",
                  lw=1.4, **CC_STYLE[arch])
    ax.set_yscale("log")
    ax.set_xlabel("relative decoder norm Δ (0 = base-only, 1 = chat-only)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    ax.set_title("bands: base-only < 0.1, shared 0.4–0.6, chat-only > 0.9", fontsize=9)
    save_figure(fig, path)
    return pd.DataFrame(rows)


def decoder_cos_figure(tables: dict, path):
    """cos(base, chat decoder row) per Δnorm class, both crosscoders in each panel."""
    import pandas as pd

    plt = pyplot()
    bins = np.linspace(-1, 1, 81)
    fig, axes = plt.subplots(1, len(TAGS), figsize=(4 * len(TAGS), 3.3))
    rows = []
    for ax, tag in zip(axes, TAGS):
        for arch, t in tables.items():
            c = t["decoder_cos"].to_numpy(float)[(t["tag"].to_numpy() == tag)]
            c = c[np.isfinite(c)]
            r = _hist_rows(c, bins, crosscoder=arch, tag=tag)
            rows += r
            if c.size:
                ax.stairs([x["count"] for x in r], bins, label=f"{arch} ({c.size})", lw=1.3, **CC_STYLE[arch])
        ax.set_title(tag, fontsize=10, color=COLORS[tag])
        ax.set_xlabel("decoder cosine (base, chat)")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("latents")
    save_figure(fig, path)
    return pd.DataFrame(rows)


def nu_distributions_figure(nu, path):
    """ν^ε and ν^r per class (chat-only vs the shared baseline vs other), per crosscoder."""
    import pandas as pd

    plt = pyplot()
    archs = list(dict.fromkeys(nu["crosscoder"]))
    bins = np.linspace(*NU_RANGE, 61)
    fig, axes = plt.subplots(len(archs), 2, figsize=(10, 3.2 * len(archs)), squeeze=False)
    rows = []
    for i, arch in enumerate(archs):
        for j, (col, thr, sym) in enumerate((("nu_error", NU_ERROR_MAX, "ε"), ("nu_reconstruction", NU_RECON_MAX, "r"))):
            ax = axes[i, j]
            for tag in ("chat-only", "shared", "other"):
                v = nu[(nu["crosscoder"] == arch) & (nu["tag"] == tag)][col].to_numpy(float)
                v = v[np.isfinite(v)]
                r = _hist_rows(v, bins, crosscoder=arch, tag=tag, ratio=col)
                rows += r
                if v.size:
                    dens = np.asarray([x["count"] for x in r], float) / v.size
                    label = f"{tag} ({v.size})" + (" — baseline" if tag == "shared" else "")
                    ax.stairs(dens, bins, color=COLORS[tag], lw=1.6 if tag != "other" else 1.0, label=label)
            ax.axvline(thr, color="k", ls="--", lw=1)
            ax.set_xlabel(rf"$\nu^{sym}$ (clipped to [{NU_RANGE[0]}, {NU_RANGE[1]}]); threshold {thr}")
            ax.set_ylabel("share of the class's latents")
            ax.set_title(f"{arch}", fontsize=9)
            ax.legend(fontsize=7)
    save_figure(fig, path)
    return pd.DataFrame(rows)


def kl_position_figure(kl, path, *, metric_label: str = "KL(P_chat ‖ P_edit)"):
    """Mean KL (95% CI band) by position in the assistant turn, one panel per crosscoder (the
    model-only edits drawn in both)."""
    plt = pyplot()
    per = kl[kl["position"] != "all"].copy()
    per["q"] = per["position"].astype(int)
    archs = [a for a in dict.fromkeys(per["crosscoder"]) if a != "none"] or ["none"]
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4), squeeze=False, sharey=True)
    cmap = pyplot().get_cmap("tab10")
    edits = [e for e in dict.fromkeys(per["edit"]) if e != "chat"]
    for ax, arch in zip(axes[0], archs):
        for n, edit in enumerate(edits):
            sub = per[(per["edit"] == edit) & per["crosscoder"].isin([arch, "none"])].sort_values("q")
            if not len(sub):
                continue
            y = sub["mean"].to_numpy(float)
            ax.plot(sub["q"], y, color=cmap(n % 10), lw=1.4, label=sub["label"].iloc[0],
                    ls="--" if sub["crosscoder"].iloc[0] == "none" else "-")
            ax.fill_between(sub["q"], sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float),
                            color=cmap(n % 10), alpha=0.15, lw=0)
        ax.set_xlabel("position of the predicted token in the assistant turn")
        ax.set_title(arch, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel(f"{metric_label} (mean, 95% CI)")
    save_figure(fig, path)


def twins_figure(tables: dict, path, *, low: float, high: float):
    """Per exclusive latent: best cosine to a shared latent (x) and to an other-exclusive latent (y)."""
    import pandas as pd

    plt = pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 4.4), squeeze=False)
    rows = []
    cols = ("twin_shared_max_cos", "twin_exclusive_max_cos", "twin_shared_class", "twin_exclusive_class",
            "twin_shared_index", "twin_shared_cos", "twin_exclusive_index", "twin_exclusive_cos")
    for ax, (arch, t) in zip(axes[0], tables.items()):
        for tag in ("chat-only", "base-only"):
            sub = t[t["tag"] == tag]
            rows += [{"crosscoder": arch, "latent": int(r["latent"]), "tag": tag, **{c: r[c] for c in cols}}
                     for _, r in sub.iterrows()]
            x = sub["twin_shared_max_cos"].to_numpy(float)
            y = sub["twin_exclusive_max_cos"].to_numpy(float)
            if len(sub):  # no candidate latent (NaN): drawn on the −0.25 line; below −0.2 clipped to it
                ax.scatter(np.clip(np.nan_to_num(x, nan=-0.25), -0.25, 1), np.clip(np.nan_to_num(y, nan=-0.25), -0.25, 1),
                           s=14, alpha=0.7, c=COLORS[tag], label=f"{tag} ({len(sub)})")
        for v in (low, high):
            ax.axvline(v, color="0.4", ls="--", lw=0.8)
            ax.axhline(v, color="0.4", ls="--", lw=0.8)
        ax.set_xlim(-0.3, 1.02)
        ax.set_ylim(-0.3, 1.02)
        ax.set_xlabel("best cosine to a shared latent")
        ax.set_ylabel("best cosine to an other-exclusive latent")
        ax.set_title(f"{arch}: twins (thresholds {low} / {high}; at −0.25: no candidate or ≤ −0.25)", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.36, 0.5, "no exclusive latents", transform=ax.transAxes, color="0.4")
    save_figure(fig, path)
    return pd.DataFrame(rows)


def density_figure(t, arch: str, path, *, n: int = 8):
    """Activation-density histograms of up to n latents: chat-only first (survivors of Latent Scaling
    first), then base-only, then the most frequent."""
    plt = pyplot()
    freq = t["frequency"].to_numpy(float) if "frequency" in t else np.zeros(len(t))
    genuine = t["genuine_chat_specific"].to_numpy(bool) if "genuine_chat_specific" in t else np.zeros(len(t), bool)
    tags = t["tag"].to_numpy()
    order = np.lexsort((-freq, ~genuine, np.select([tags == "chat-only", tags == "base-only"], [0, 1], 2)))
    order = [j for j in order if freq[j] > 0][:n]
    fig, axes = plt.subplots(2, max(1, (n + 1) // 2), figsize=(2.6 * max(1, (n + 1) // 2), 4.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, j in zip(axes.ravel(), order):
        ax.axis("on")
        counts = np.asarray(json.loads(t["activation_hist"].iloc[j]), float)
        mx = float(t["max_activation"].iloc[j])
        edges = np.linspace(0, mx, len(counts) + 1)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=COLORS.get(tags[j], "0.4"))
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(pyplot().NullFormatter())
        ax.set_title(f"{j} ({tags[j]}{', LS ✓' if genuine[j] else ''})", fontsize=8)
        ax.tick_params(which="both", labelsize=6)
    fig.suptitle(f"{arch}: activation density (tokens per activation bin, firing tokens only)", fontsize=9)
    save_figure(fig, path)
    return [int(j) for j in order]


def sae_match_figure(match: dict, path):
    """Best-match cosine of each SAE latent in the other model's SAE, with the thresholds."""
    import pandas as pd

    plt = pyplot()
    bins = np.linspace(-1, 1, 81)
    low, high = match["summary"]["thresholds"]["low"], match["summary"]["thresholds"]["high"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    rows = []
    for name, other, color in (("chat", "base", COLORS["chat-only"]), ("base", "chat", COLORS["base-only"])):
        m = match[name]
        c = m["match_cos"][m["alive"]]
        c = c[np.isfinite(c)]
        ax.hist(c, bins=bins, histtype="step", color=color, lw=1.4,
                label=f"{name}-SAE latents → best {other}-SAE latent ({c.size} alive)")
        rows += [{"sae": name, "latent": int(i), "alive": bool(a), "match": int(j), "match_cos": float(v),
                  "mutual": bool(u), "class": k}
                 for i, a, j, v, u, k in zip(m["latent"], m["alive"], m["match"], m["match_cos"], m["mutual"],
                                             m["class"])]
    for v in (low, high):
        ax.axvline(v, color="0.4", ls="--", lw=0.8)
    ax.set_xlabel("decoder cosine of the best match in the other model's SAE")
    ax.set_ylabel("latents")
    ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path)
    return pd.DataFrame(rows)
