"""`<out>/paper.md`: the index of a paper run — every figure and table with a caption saying what it
shows and how it was computed, and the file holding its numbers (written from the result dict of
`jaxcoders.paper.run.run_paper`)."""
from __future__ import annotations

import json
import math

import numpy as np


def _f(v, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec) if isinstance(v, (int, float, np.floating, np.integer)) else str(v)


def _ci(v: dict) -> str:
    return "–" if v.get("mean") is None else f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"


class Doc:
    """Markdown lines with numbered figures and tables."""

    def __init__(self):
        self.lines, self.fig, self.tab = [], 0, 0

    def add(self, *lines: str) -> None:
        self.lines += list(lines)

    def figure(self, png: str, caption: str, data: str = "") -> None:
        self.fig += 1
        src = f" Numbers: `{data}`." if data else ""
        self.add(f"![Figure {self.fig}]({png})", "", f"*Figure {self.fig}* (`{png}`). {caption}{src}", "")

    def table(self, caption: str, header: list, rows: list, data: str = "") -> None:
        self.tab += 1
        src = f" Numbers: `{data}`." if data else ""
        self.add(f"*Table {self.tab}.* {caption}{src}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header), *["| " + " | ".join(map(str, r)) + " |" for r in rows], "")


def _intro(d: Doc, r: dict) -> None:
    c = r["config"]
    d.add("# Crosscoder model diffing: the paper's figures for this pair of crosscoders", "",
          "Reproduces the analyses of Minder, Dumas et al., *Overcoming Sparsity Artifacts in Crosscoders to "
          "Interpret Chat-Tuning* (arXiv 2504.02922) and the research update on tied crosscoders for the "
          "crosscoders below (formulas: `docs/method.md`; this page: `docs/paper.md`).", "",
          f"* **L1 crosscoder**: `{c['l1']}`; **BatchTopK crosscoder**: `{c['batchtopk']}`"
          + (f"; **tied**: `{c['tied']}`" if c.get("tied") else ""),
          f"* **activations**: `{c['store']}` ({r['store_rows']:,} rows of (2, {r['d_model']})); analysis passes over "
          + ("every row" if c.get("max_tokens") is None else f"the first {c['max_tokens']:,} rows"),
          f"* **models**: base `{c['base_model']}`, chat `{c['chat_model']}`, residual after block {c['layer']}"
          if c.get("base_model") else "* **models**: not given (no logit lens, no causal evaluation)", "")
    if r.get("evalset"):
        e = r["evalset"]
        how = (f"built from `{c['prompts']}`: the chat model's own {'sampled' if c['sample'] else 'greedy'} answers "
               f"(≤ {c['max_new_tokens']} new tokens per turn)" if e.get("meta") else "given")
        d.add(f"* **evaluation set**: `{e['path']}`, {r['causal_conversations']} conversations ({how})", "")


def _quality(d: Doc, r: dict) -> None:
    d.add("## 1. Reconstruction quality", "")
    rows = [[q["dictionary"], _f(q.get("fve_base")), _f(q.get("fve_chat")), _f(q.get("fve")), _f(q.get("l0"), ".1f"),
             _f(q.get("dead_fraction"))] for q in r["quality"]]
    d.table("Fraction of variance explained (pooled over all analysed tokens, docs/method.md §6), mean active latents "
            "per token (L0) and share of latents that never fire, per dictionary (the SAEs of §7 each see one "
            "model).", ["dictionary", "FVE base", "FVE chat", "FVE (both)", "L0", "dead"], rows, "quality.csv")


def _delta(d: Doc, r: dict) -> None:
    d.add("## 2. Relative decoder norm and decoder cosine", "")
    d.figure("figures/delta_norm.png", "Histogram (log scale, 100 bins) of the relative decoder norm "
             "Δ = ½((‖d_chat‖ − ‖d_base‖)/max(‖d_chat‖, ‖d_base‖) + 1) of every latent, L1 and BatchTopK on one axis; "
             "shaded: base-only (Δ < 0.1), shared (0.4–0.6) and chat-only (Δ > 0.9) bands.", "delta_norm_hist.csv")
    counts = {}
    for row in r["class_counts"]:
        counts.setdefault(row["tag"], {})[row["crosscoder"]] = row
    archs = list(r["names"])
    d.table("Latents per Δnorm class (alive = fired at least once on the analysed tokens).",
            ["class"] + [f"{a} (alive)" for a in archs],
            [[tag] + [f"{v[a]['latents']} ({v[a]['alive']})" for a in archs] for tag, v in counts.items()],
            "class_counts.csv")
    d.figure("figures/decoder_cos.png", "Cosine between each latent's base and chat decoder rows, one panel per "
             "Δnorm class, both crosscoders per panel (80 bins on [−1, 1]).", "decoder_cos_hist.csv")


def _scaling(d: Doc, r: dict) -> None:
    d.add("## 3. Latent Scaling: which chat-only latents are genuinely chat-specific", "")
    d.figure("figures/nu_distributions.png", "Distributions of ν^ε = β(base error)/β(chat error) (left; high: "
             "Complete Shrinkage) and ν^r = β(base reconstruction)/β(chat reconstruction) (right; high: Latent "
             "Decoupling) of the chat-only latents against the shared latents (the baseline: a shared latent is "
             "in both models by construction) and the other latents; β from Latent Scaling along the chat decoder "
             "row (docs/method.md §6), share of each class's latents per bin, values outside [−0.5, 1.5] in the "
             "edge bins; dashed: the paper's thresholds 0.2 and 0.5.", "nu_hist.csv, nu.csv")
    rows = [[s["crosscoder"], s["tag"], s["ratio"].replace("nu_error", "ν^ε").replace("nu_reconstruction", "ν^r"),
             s["latents"], _f(s["median"]), f"{_f(s['q25'])} – {_f(s['q75'])}", _f(s["share_below_threshold"], ".0%")]
            for s in r["nu_stats"] if s["latents"]]
    d.table("ν per class: latents with a finite ν, median, interquartile range, and the share under the threshold "
            "(ν^ε < 0.2, ν^r < 0.5).", ["crosscoder", "class", "ratio", "latents", "median", "IQR", "< threshold"],
            rows, "nu_stats.csv")
    for arch in r["names"]:
        d.figure(f"figures/nu_scatter_{arch}.png", f"{arch}: ν^ε against ν^r of every chat-only latent with finite "
                 "ν (values clipped to the 1st–99th percentile range); highlighted: both under the thresholds.",
                 "nu.csv")
    rows = [[s["crosscoder"], s["chat_only"], s["chat_only_probed"], s["genuine_chat_specific"],
             _f(s["genuine_share"], ".0%"), s["base_only"], s["genuine_base_specific"]] for s in r["selection"]]
    d.table("The paper's selection, both crosscoders side by side: chat-only latents (Δ > 0.9), how many have a "
            "finite ν, and how many are genuinely chat-specific (Δ ≥ 0.9, ν^ε < 0.2, ν^r < 0.5); base-only latents "
            "and their survivors of the mirror probe (along the base decoder row).",
            ["crosscoder", "chat-only", "with ν", "genuinely chat-specific", "share", "base-only", "base survivors"],
            rows, "selection.csv")


def _causal(d: Doc, r: dict) -> None:
    d.add("## 4. Causal evaluation", "")
    if not r.get("causal"):
        d.add("Not run: give `--base_model`, `--chat_model`, `--layer` and `--prompts` (or `--evalset`).", "")
        return
    k = r.get("first_k", 5)
    rows = []
    for row in r["causal_rows"]:
        rows.append([row["crosscoder"], row["label"], _ci(row["all"]), _ci(row["first_k"]), _ci(row["kl_base"])])
    d.table(f"KL(P_chat ‖ P_edit) on every assistant-predicting token and on the first {k} tokens of each "
            "assistant turn, and KL(P_base ‖ P_edit); the residual after the crosscoders' layer is replaced and the "
            "continuing model (chat, except the unedited base) runs on; mean over tokens with a 95% percentile "
            "bootstrap CI over conversations. `latents:S` = h_base + Σ_{j∈S} f_j (d_j^chat − d_j^base) + bias "
            "difference; crosscoder *none*: edits that use no crosscoder.",
            ["crosscoder", "edit", "KL(chat ‖ edit), all", f"first {k}", "KL(base ‖ edit), all"], rows,
            "causal_table.csv")
    d.figure("figures/kl_by_position.png", "Mean KL(P_chat ‖ P_edit) (95% bootstrap CI band) at each position of "
             f"the predicted token in its assistant turn (0 = the turn's first token; the first {r['positions']} "
             "positions), per edit; dashed: edits without a crosscoder.", "kl_by_position.csv")
    bw = r.get("best_vs_worst") or {}
    if bw:
        rows = [[a, _ci(v["all"]), _ci(v["first_k"])] for a, v in bw.items()]
        d.table("Worst half minus best half of the chat-only latents by ν (paired bootstrap over conversations): "
                "a positive difference means the latents with low ν (genuinely chat-specific) move the base model "
                "closer to the chat model.", ["crosscoder", "Δ KL all tokens", f"Δ KL first {k}"], rows,
                "best_vs_worst.csv")
    else:
        d.add("No best-versus-worst comparison: no crosscoder has two non-empty halves of chat-only latents with "
              "finite ν.", "")
    for arch in r["names"]:
        if (r.get("causal_pngs") or {}).get(arch):
            d.figure(f"figures/causal_{arch}.png", f"{arch}: every edit's mean CE, KL(P_chat ‖ ·) and KL(P_base ‖ ·) "
                     "with 95% CIs, all assistant tokens and the first tokens of each turn "
                     "(`jaxcoders.interventions.plot`).", f"causal/{arch}/interventions.json")
    skipped = r.get("empty_sets") or {}
    if any(skipped.values()):
        d.add("Latent-set edits left out (empty set, equal to the bias edit): "
              + "; ".join(f"{a}: {', '.join(v)}" for a, v in skipped.items() if v) + ".", "")


def _latents(d: Doc, r: dict) -> None:
    d.add("## 5. Interpreting the latents: logit lens and activation density", "")
    for arch, rows in r["top_latents"].items():
        if rows:
            d.table(f"{arch}: chat-only latents (Latent Scaling survivors first, then by frequency) with the tokens "
                    "their chat decoder row promotes / suppresses through the chat model's final norm and unembedding "
                    "(logit lens; all latents: `logit_lens_<model>_*` columns of the latent table).",
                    ["latent", "ν^ε", "ν^r", "LS", "freq", "promoted (chat)", "suppressed (chat)"], rows,
                    f"{arch}/latents.parquet")
        else:
            d.add(f"{arch}: no chat-only latent.", "")
        d.figure(f"figures/density_{arch}.png", f"{arch}: activation-density histograms (log counts of firing tokens "
                 f"per bin of (0, max activation], {r['config']['density_bins']} bins) of chat-only latents, then "
                 "base-only, then the most frequent ones.", f"{arch}/latents.parquet (activation_hist)")


def _twins(d: Doc, r: dict) -> None:
    c = r["config"]
    d.add("## 6. Twins (research update)", "")
    d.figure("figures/twins.png", f"Per chat-only (base-only) latent: the best cosine of its chat (base) decoder row "
             f"to a shared latent's chat (base) row (x) and to a base-only (chat-only) latent's base (chat) row (y); "
             f"the top {c['twin_top']} of each are in the data; dashed: thresholds {c['twin_low']} / "
             f"{c['twin_high']}.", "twins.csv")
    rows = []
    for arch, s in r["twin_summary"].items():
        for tag in ("chat-only", "base-only"):
            v = s[tag]
            rows.append([arch, tag, v["latents"]] + [f"{v[x]['high']} / {v[x]['mid']} / {v[x]['low']}"
                                                     for x in ("shared", "exclusive")])
    d.table(f"Exclusive latents whose best match is ≥ {c['twin_high']} / between / < {c['twin_low']}.",
            ["crosscoder", "class", "latents", "shared match (hi / mid / lo)", "other-exclusive match (hi / mid / lo)"],
            rows, "twins.csv")


def _sae(d: Doc, r: dict) -> None:
    d.add("## 7. Baseline: separate SAEs matched by decoder cosine", "")
    s = r.get("sae")
    if not s:
        d.add("Not run (`--sae=false`).", "")
        return
    m = s["match"]
    d.add(f"One SAE per model (M = 1, {s['architecture']}, F = {s['dict_size']}, {s['steps']} steps, the crosscoders' "
          f"trainer) on the store's base and chat columns; FVE / L0 / dead in Table 1. Each SAE latent is matched "
          f"to the most similar decoder row of the other model's SAE; {m['mutual_pairs']} mutual best pairs.", "")
    rows = [[f"{n}-SAE", m[n]["alive"], m[n]["high"], m[n]["mid"], m[n]["low"], _f(m[n]["median_match_cos"])]
            for n in ("chat", "base")]
    lo, hi = m["thresholds"]["low"], m["thresholds"]["high"]
    d.table(f"Alive SAE latents whose best match in the other SAE has cosine ≥ {hi} (matched), between, < {lo} "
            "(no counterpart: the baseline's model-specific latents); compare with the crosscoders' chat-only and "
            "genuinely chat-specific counts of §3.", ["SAE", "alive", f"≥ {hi}", "between", f"< {lo}",
                                                           "median best cos"], rows, "sae_match.csv")
    d.figure("figures/sae_match.png", "Best-match decoder cosine of each alive SAE latent in the other model's SAE.",
             "sae_match.csv")


def write_paper_md(r: dict, path) -> str:
    """Write paper.md from a `run_paper` result; returns its text."""
    d = Doc()
    _intro(d, r)
    _quality(d, r)
    _delta(d, r)
    _scaling(d, r)
    _causal(d, r)
    _latents(d, r)
    _twins(d, r)
    _sae(d, r)
    if r.get("tied"):
        d.add("## 8. Tied crosscoder", "")
        t = r["tied"]
        d.figure("figures/tied_ratios.png", "Tied crosscoder: r_chat = count(chat slot)/count(shared slot) against "
                 "r_base per latent triple; triples active on fewer than 0.05% of the tokens are left out (the "
                 f"research update's outlier filter: {t['rare_latents']} here); chat corner r_chat > 0.15 and "
                 f"r_base < 0.04: {t['chat_corner']} triples, base corner: {t['base_corner']}.", "tied_slots.csv")
    d.add("## Files and how to rerun", "",
          "* `<crosscoder>/latents.parquet`: every per-latent column (analysis, `activation_hist`, "
          "`logit_lens_{base,chat}_{promoted,suppressed}`, `twin_*`) and `summary.json`.",
          "* `causal/<crosscoder>/`: `interventions.json` (incl. `by_position`), per-conversation sums, latent sets.",
          "* `sae/<model>/`: the SAE workdirs (`export/`: reference layout).", "",
          f"Command: `{r['command']}`. Took {r['seconds']['total']:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items() if k != "total") + ").")
    text = "\n".join(d.lines) + "\n"
    from jaxcoders.files import write_text_atomic

    write_text_atomic(path, text)
    return text


def jsonable(o):
    """numpy scalars / arrays and non-finite floats made JSON-able (None)."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (np.integer, np.bool_)):
        return o.item()
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    return o


def dumps(o) -> str:
    return json.dumps(jsonable(o), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
