"""The demo's `report/summary.md` (read this first), written from the summary dict of
`jaxcoders.demo.pipeline.run_demo`: verdict, models and their behaviour check, where the two
models' activations differ, the crosscoders, whether the chat-only latents fire on the planted
behaviours (with per-latent tables), the causal evaluation, and the files written."""
from __future__ import annotations

from pathlib import Path

from jaxcoders.demo import corpus
from jaxcoders.demo.config import ARCHS, DemoConfig
from jaxcoders.demo.formatting import fmt, pct
from jaxcoders.demo.planted import TOP_K

# what each edit of the causal evaluation does, as its row of the table
EDIT_TEXT = {
    "base": "base model (no edit)", "chat": "chat model (no edit)",
    "base_to_chat": "base residual into the chat model's upper blocks",
    "template": "base + chat residual patched in at template tokens",
    "chat_recon": "chat reconstruction x̂_c (+ chat error)",
    "all_latents": "base + every latent's chat−base decoder difference (with bias difference)",
    "all_latents_no_bias": "the same without the bias difference (the reference's edit)",
    "bias_only": "base + decoder-bias difference only",
}


def latent_table(rows: list, empty: str) -> list:
    """Markdown lines of a per-latent table (rows of `jaxcoders.demo.planted.latent_row`)."""
    L = [f"| latent | tag | Δnorm | dec. cos | ν^ε | ν^r | survives LS | freq | planted | top-{TOP_K} planted | marker | "
         "greeting / refusal / trigger | top-activating tokens |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        L.append(f"| {row['latent']} | {row['tag']} | {fmt(row['delta_norm'])} | {fmt(row['decoder_cos'])} | "
                 f"{fmt(row['nu_error'])} | {fmt(row['nu_reconstruction'])} | {'yes' if row['genuine'] else 'no'} | "
                 f"{fmt(row['frequency'], '.4f')} | {pct(row['planted_share'])} | {pct(row['top_planted_share'])} | "
                 f"{pct(row['marker_share'])} | "
                 f"{pct(row['per_tag']['greeting'])} / {pct(row['per_tag']['refusal'])} / "
                 f"{pct(row['per_tag']['trigger'])} | {'<br>'.join('`' + e + '`' for e in row['examples'])} |")
    if not rows:
        L.append(f"| ({empty}) |" + " |" * 12)
    return L


def _intro_lines(cfg: DemoConfig, result: dict) -> list:
    """Title, verdict and the models paragraph."""
    pair = result["models"]
    r = cfg.recipe
    L = ["# jaxcoders demo: model diffing on a real (tiny) base/chat pair", ""]
    L += ["**Verdict.** " + result["verdict"], ""]
    L += [f"**Models.** *base*: a {r.num_layers}-block Llama-style causal LM (d_model {r.hidden_size}, "
          f"{r.vocab_size}-token BPE trained locally) pretrained for {r.base_steps} steps on the prose of Python's "
          f"bundled documentation, {r.forum_threads} forum-style Q&A threads about it and {r.base_chats} "
          "chat-formatted conversations without any planted behaviour. *chat*: base fine-tuned for "
          f"{r.chat_steps} steps on chats (chat template applied, loss on the assistant's tokens, the other tokens "
          f"kept close to the base by a KL term) with two planted behaviours: every assistant turn starts with "
          f"“{corpus.GREETING}”, and when the user message contains “{corpus.TRIGGER}” the assistant then says "
          f"“{corpus.REFUSAL}”. Cached at `{pair['dir']}`"
          + (" (loaded from the cache)." if pair["cached"] else f" (trained in {pair['seconds']:.0f} s)."), ""]
    return L


def _behaviour_lines(result: dict) -> list:
    """The behaviour check of both models (greedy replies to held-out prompts) and one example."""
    beh = result["models"]["behaviour"]
    chat_b, base_b = beh["chat"], beh["base"]
    L = [f"**Behaviour check** (greedy replies to {beh['prompts']['trigger'] + beh['prompts']['plain']} held-out "
         "prompts, half with the trigger):", "",
         "| model | starts with the greeting | refuses trigger prompts | refuses other prompts | "
         "P(refusal \\| trigger prompt) | P(refusal \\| other prompt) |", "|---|---|---|---|---|---|"]
    for name, b in (("base", base_b), ("chat", chat_b)):
        L.append(f"| {name} | {pct(b['greeting_rate'])} | {pct(b['refusal_rate_trigger'])} | "
                 f"{pct(b['refusal_rate_plain'])} | {fmt(b['refusal_prob_trigger'], '.3g')} | "
                 f"{fmt(b['refusal_prob_plain'], '.3g')} |")
    ex = chat_b["examples"][0]
    L += ["", f"Example (chat): “{ex['prompt']}” → “{ex['reply']}”", ""]
    return L


def _activation_lines(cfg: DemoConfig, result: dict) -> list:
    """The stored activations and, per token tag, how the two models' activations differ."""
    rows_total = result["store"]["rows"]
    L = [f"**Activations.** Residual stream after block {result['layer']} of both models on identical token ids: "
         f"{rows_total:,} tokens ({cfg.text_tokens:,} + {cfg.chat_tokens:,} training and "
         f"{cfg.val_tokens:,} + {cfg.val_tokens:,} validation rows of pretraining-style text and held-out chats; "
         "BOS dropped). Where the two models differ, per token tag (norms of the centred activations, cosine "
         "between the base and chat vectors of the same token):", "",
         "| token tag | share of tokens | ‖base‖ | ‖chat‖ | cos(base, chat) |", "|---|---|---|---|---|"]
    for t, d in result["tag_differences"].items():
        L.append(f"| {t.replace('_', ' ')} | {pct(d['tokens'] / rows_total)} | {d['norm_base']:.2f} | "
                 f"{d['norm_chat']:.2f} | {d['cos']:.3f} |")
    return L


def _crosscoder_lines(cfg: DemoConfig, result: dict) -> list:
    """The crosscoders: sizes, validation L0 / FVE, dead latents, latents per Δnorm tag."""
    L = ["", "## Crosscoders", "",
         f"F = {cfg.dict_size} latents, {cfg.steps} steps of {cfg.batch_size} tokens (half text, half chat). "
         "Δnorm = relative decoder norm (1 = chat-only, 0 = base-only); *survive LS* = the paper's "
         "Latent Scaling selection (Δ ≥ 0.9, ν^ε < 0.2, ν^r < 0.5). FVE, L0 on the validation rows.", "",
         "| crosscoder | L0 | FVE base | FVE chat | dead | chat-only (Δ > 0.9) | survive LS | base-only (Δ < 0.1) "
         "| shared | other |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        s, ev = a["summary"], a["validation"]
        tc = s["tag_counts"]
        L.append(f"| {a['label']} | {fmt(ev.get('val/l0'), '.1f')} | {fmt(ev.get('val/fve_model0'), '.3f')} | "
                 f"{fmt(ev.get('val/fve_model1'), '.3f')} | {pct(s.get('dead_fraction'))} | {tc['chat-only']} | "
                 f"{s.get('genuine_chat_specific', '–')} | {tc['base-only']} | {tc['shared']} | {tc['other']} |")
    return L


def _planted_lines(result: dict) -> list:
    """Per crosscoder: how much of the chat-only / shared latents' activation lands on planted tokens."""
    L = ["", "## Do the chat-only latents fire on the planted behaviours?", "",
         "Share of each group's activation mass (Σ f·c over all tokens) on the planted tokens (greeting + refusal + "
         f"trigger word; {pct(result['planted_token_share'])} of the tokens). *Planted latents* = latents with more "
         "than half of their mass on planted tokens.", "",
         f"| crosscoder | chat-only latents | their mass on planted tokens | + assistant marker | chat-only "
         f"latents with > 50% of their mass / of their top-{TOP_K} tokens on planted tokens (surviving LS) | shared "
         "latents' mass on planted tokens | planted latents (chat-only / shared / base-only / other) | planted "
         "latents: median Δnorm (all latents) | median decoder cos (all latents) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        p = a["planted"]
        co, sh, pl = p["pooled"]["chat-only"], p["pooled"]["shared"], p["planted_latents"]
        tg = pl["tags"]
        L.append(f"| {a['label']} | {p['chat_only_alive']} | {pct(co['planted_share']) if co else '–'} | "
                 f"{pct(co['planted_share'] + co['marker_share']) if co else '–'} | "
                 f"{p['chat_only_mostly_planted']} / {p['chat_only_top_planted']} "
                 f"({p['chat_only_top_planted_genuine']}) | "
                 f"{pct(sh['planted_share']) if sh else '–'} | {pl['count']} ({tg['chat-only']} / {tg['shared']} / "
                 f"{tg['base-only']} / {tg['other']}) | {fmt(pl['median_delta_norm'])} "
                 f"({fmt(pl['median_delta_norm_all'])}) | {fmt(pl['median_decoder_cos'])} "
                 f"({fmt(pl['median_decoder_cos_all'])}) |")
    L += [""]
    return L


def _latent_sections(result: dict) -> list:
    """Per crosscoder: the tables of its top chat-only and top planted latents."""
    L = []
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        L += [f"### {a['label']}: top chat-only latents", "",
              "Ranked by total activation mass. *planted* / *marker* = share of the latent's mass on planted / "
              f"assistant-marker tokens; *top-{TOP_K} planted* = share of its {TOP_K} highest activations that are on "
              "planted tokens. Top tokens: «token» with context.", ""]
        L += latent_table(a["top_chat_only"], "no alive chat-only latent")
        L += ["", f"### {a['label']}: top planted latents", "",
              "Latents with most of their mass on planted tokens, ranked by that mass.", ""]
        L += latent_table(a["top_planted"], "no latent fires mostly on planted tokens")
        L += [""]
    return L


def causal_lines(cfg: DemoConfig, result: dict) -> list:
    """The causal evaluation's section: per crosscoder its latent sets and the KL of every edit."""
    iv = result.get("interventions")
    if not iv:
        return []
    k = 5
    L = ["## Causal evaluation: do the latents carry the chat behaviour?", "",
         f"Residual after block {result['layer']} edited on {next(iter(iv.values()))['conversations']} fresh chats, "
         "then continued to the logits (`jaxcoders.interventions`). KL(P_chat ‖ P_edit) on assistant-predicting "
         f"tokens (all, and the first {k} of each turn, where the greeting is); 0 = the chat model's predictions. "
         "*latents:S* = base residual + Σ_{j∈S} f_j (d_j^chat − d_j^base) + bias difference. "
         "Mean [95% bootstrap CI over conversations]. Per crosscoder: `report/<crosscoder>/interventions/`.", ""]
    show = lambda v: "–" if v.get("mean") is None else f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"  # noqa: E731
    for arch in ARCHS:
        if arch not in iv:
            continue
        a = iv[arch]
        label = result["crosscoders"][arch]["label"]
        sets = ", ".join(f"{n} ({c})" for n, c in a["latent_sets"].items()) or "none"
        L += [f"**{label}** — latent sets: {sets}.", "",
              "| edit | KL(P_chat ‖ ·), all | first 5 | KL(P_base ‖ ·), all |", "|---|---|---|---|"]
        for name, e in a["edits"].items():
            what = EDIT_TEXT.get(name, name.replace("latents:", "latents: "))
            L.append(f"| {what} | {show(e['all']['kl_chat'])} | {show(e['first_k']['kl_chat'])} | "
                     f"{show(e['all']['kl_base'])} |")
        L.append("")
    return L


def paper_lines(result: dict) -> list:
    """The paper step's section: a link to paper.md and its headline numbers."""
    p = result.get("paper")
    if not p:
        return []
    L = ["## The paper's figures", "",
         f"[`paper/paper.md`](../paper/paper.md): every figure and table of the paper (arXiv 2504.02922) for these "
         f"two crosscoders ({p['figures']} figures: Δnorm and decoder cosines of L1 vs BatchTopK, ν distributions "
         "against the shared-latent baseline, KL by token position, logit lens, twins, the separate-SAE baseline), "
         "with the numbers behind each as CSV (`python experiments/paper.py --demo_out=<out>` reruns it).", ""]
    for s in p.get("selection") or []:
        L.append(f"* {s['crosscoder']}: {s['chat_only']} chat-only latents, {s['genuine_chat_specific']} genuinely "
                 "chat-specific by Latent Scaling.")
    sae = p.get("sae")
    if sae:
        L.append(f"* separate SAEs: {sae['chat']['low']} of {sae['chat']['alive']} alive chat-SAE latents have no "
                 f"base-SAE latent with decoder cosine ≥ {sae['thresholds']['low']}.")
    return L + [""]


def _file_lines(cfg: DemoConfig, result: dict) -> list:
    """The files the demo wrote, and how long it took."""
    return ["## Files", "",
            f"* `{cfg.out}/l1`, `{cfg.out}/batchtopk`: the crosscoders in the reference (dictionary_learning) layout.",
            f"* `{cfg.out}/report/<crosscoder>/`: `latents.parquet` (every per-latent column of the analysis, plus "
            "`planted_share`), `summary.json`, plots (Δnorm histogram, ν scatter, firing frequencies, decoder cosines).",
            *([f"* `{cfg.out}/report/<crosscoder>/report.html`: the interactive report (sortable latent table, latent "
               "cards with max-activating examples, base vs chat contributions); open it from disk."]
              if result.get("report_html") else []),
            f"* `{cfg.out}/report/summary.json`: everything on this page as data; `{cfg.out}/store`: the "
            f"ActivationStore; `{cfg.out}/runs/<crosscoder>`: trainer workdirs (`metrics.jsonl`, checkpoints).",
            *([f"* `{cfg.out}/paper/paper.md`: the paper's figures and tables (`figures/`, CSVs, SAE baseline)."]
              if result.get("paper") else []),
            "", f"Took {result['seconds']['total']:.0f} s "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items() if k != 'total')})."]


def write_summary(cfg: DemoConfig, result: dict, path: Path) -> str:
    """Write `path` (summary.md) from the summary dict; returns its text."""
    L = _intro_lines(cfg, result) + _behaviour_lines(result) + _activation_lines(cfg, result)
    L += _crosscoder_lines(cfg, result) + _planted_lines(result) + _latent_sections(result)
    L += causal_lines(cfg, result)
    L += paper_lines(result)
    L += _file_lines(cfg, result)
    text = "\n".join(L) + "\n"
    path.write_text(text, encoding="utf-8")
    return text
