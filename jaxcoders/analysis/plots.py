"""PNG plots of a latent table (matplotlib, Agg backend): what a person looks at first.

* delta_norm_hist.png: Δnorm histogram with the tag thresholds (base-only < 0.1, shared 0.4–0.6,
  chat-only > 0.9).
* nu_scatter.png: ν^ε vs ν^r of chat-only latents with the paper's thresholds (ν^ε < 0.2,
  ν^r < 0.5); survivors (genuinely chat-specific) highlighted. mirror_nu_scatter.png: the same
  for base-only latents along the base decoder row, when the mirror probe ran.
* frequency_hist.png: log10 firing frequency per tag.
* decoder_cos_hist.png: cosine between a latent's base and chat decoder rows, per tag.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxcoders.analysis import decoder

COLORS = {"chat-only": "tab:red", "base-only": "tab:blue", "shared": "tab:green", "other": "tab:gray"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Save every figure of the analysis the same way (tight layout, 110 dpi) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def delta_norm_hist(table, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    d = table["delta_norm"].to_numpy(dtype=float)
    d = d[np.isfinite(d)]
    ax.hist(d, bins=100, range=(0, 1), color="0.35")
    for x, c in ((0.1, COLORS["base-only"]), (0.4, COLORS["shared"]), (0.6, COLORS["shared"]), (0.9, COLORS["chat-only"])):
        ax.axvline(x, color=c, ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("relative decoder norm Δ (0 = base-only, 1 = chat-only)")
    ax.set_ylabel("latents")
    counts = {t: int(np.sum(table["tag"].to_numpy() == t)) for t in decoder.TAGS}
    ax.set_title(", ".join(f"{t}: {n}" for t, n in counts.items()), fontsize=9)
    return save_figure(fig, path)


def nu_scatter(table, path, *, mirror: bool = False):
    plt = pyplot()
    pre, tag = ("mirror_", "base-only") if mirror else ("", "chat-only")
    sel = table["tag"].to_numpy() == tag
    ne = table[f"{pre}nu_error"].to_numpy(dtype=float)[sel]
    nr = table[f"{pre}nu_reconstruction"].to_numpy(dtype=float)[sel]
    ok = np.isfinite(ne) & np.isfinite(nr)
    ne, nr = ne[ok], nr[ok]
    good = (ne < 0.2) & (nr < 0.5)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    if ne.size:
        lo = min(np.quantile(ne, 0.01), np.quantile(nr, 0.01), -0.1)
        hi = max(np.quantile(ne, 0.99), np.quantile(nr, 0.99), 1.1)
        ax.scatter(np.clip(ne[~good], lo, hi), np.clip(nr[~good], lo, hi), s=6, alpha=0.6, c="0.5",
                   label=f"other ({int((~good).sum())})")
        ax.scatter(np.clip(ne[good], lo, hi), np.clip(nr[good], lo, hi), s=8, alpha=0.8, c=COLORS[tag],
                   label=rf"$\nu^\varepsilon < 0.2$ and $\nu^r < 0.5$ ({int(good.sum())})")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(fontsize=8, loc="upper left")
    ax.axvline(0.2, color="k", ls="--", lw=1)
    ax.axhline(0.5, color="k", ls="--", lw=1)
    probe = "base" if mirror else "chat"
    ax.set_xlabel(r"$\nu^\varepsilon$ (error ratio)  — high: Complete Shrinkage")
    ax.set_ylabel(r"$\nu^r$ (reconstruction ratio)  — high: Latent Decoupling")
    ax.set_title(f"Latent Scaling of {tag} latents ({ne.size}), probe = {probe} decoder row", fontsize=9)
    return save_figure(fig, path)


def frequency_hist(table, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    freq = table["frequency"].to_numpy(dtype=float)
    tags = table["tag"].to_numpy()
    pos = freq[freq > 0]
    lo = np.log10(pos.min()) if pos.size else -6
    bins = np.linspace(min(lo, -1) - 0.1, 0.05, 60)
    for t in decoder.TAGS:
        v = freq[(tags == t) & (freq > 0)]
        if v.size:
            ax.hist(np.log10(v), bins=bins, histtype="step", color=COLORS[t], label=f"{t} ({v.size})")
    dead = int(np.sum(freq == 0))
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(f"firing frequency per tag (dead: {dead})", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def decoder_cos_hist(table, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    cos = table["decoder_cos"].to_numpy(dtype=float)
    tags = table["tag"].to_numpy()
    for t in decoder.TAGS:
        v = cos[(tags == t) & np.isfinite(cos)]
        if v.size:
            ax.hist(v, bins=np.linspace(-1, 1, 81), histtype="step", color=COLORS[t], label=f"{t} ({v.size})")
    ax.set_xlabel("cos(base decoder row, chat decoder row)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_plots(table, out_dir) -> dict:
    out_dir = Path(out_dir)
    paths = {"delta_norm_hist": delta_norm_hist(table, out_dir / "delta_norm_hist.png"),
             "decoder_cos_hist": decoder_cos_hist(table, out_dir / "decoder_cos_hist.png")}
    if "nu_error" in table:
        paths["nu_scatter"] = nu_scatter(table, out_dir / "nu_scatter.png")
    if "mirror_nu_error" in table:
        paths["mirror_nu_scatter"] = nu_scatter(table, out_dir / "mirror_nu_scatter.png", mirror=True)
    if "frequency" in table:
        paths["frequency_hist"] = frequency_hist(table, out_dir / "frequency_hist.png")
    return paths


def slot_ratio_scatter(t, out):
    """Tied crosscoder: r_chat against r_base per latent, with the chat-corner thresholds."""
    plt = pyplot()
    rb, rc = t["r_base"].to_numpy(float), t["r_chat"].to_numpy(float)
    ok = np.isfinite(rb) & np.isfinite(rc)
    fin = np.r_[rb[ok], rc[ok]]
    cap = max(1.05, float(np.quantile(fin, 0.99)) * 1.05) if fin.size else 1.05  # ratios above: drawn at the edge
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.scatter(np.clip(rb[ok], 0, cap), np.clip(rc[ok], 0, cap), s=8, alpha=0.6, c="0.4")
    inf = (~np.isfinite(rb) | ~np.isfinite(rc)) & ~(np.isnan(rb) | np.isnan(rc))
    if inf.any():
        clip = lambda r: np.clip(np.nan_to_num(r[inf], posinf=cap), 0, cap)
        ax.scatter(clip(rb), clip(rc), s=14, marker="^", c="tab:purple",
                   label=f"shared slot never fires ({int(inf.sum())})")
        ax.legend(fontsize=8)
    ax.axhline(0.15, color="tab:red", ls="--", lw=1)
    ax.axvline(0.04, color="tab:red", ls="--", lw=1)
    ax.set_xlabel("r_base = count(base slot) / count(shared slot)")
    ax.set_ylabel("r_chat = count(chat slot) / count(shared slot)")
    ax.set_title("tied crosscoder slot ratios (chat corner: r_chat > .15, r_base < .04)", fontsize=9)
    return save_figure(fig, out)
