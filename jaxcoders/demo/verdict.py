"""The demo's verdict: one paragraph of prose from the numbers of the summary dict (do the planted
behaviours appear as chat-only latents, where does their activation go, what the causal evaluation
says), the opening of `report/summary.md`."""
from __future__ import annotations

from jaxcoders.demo.config import ARCHS
from jaxcoders.demo.formatting import fmt, pct
from jaxcoders.demo.planted import TOP_K


def _chat_only_hits(result: dict) -> list:
    """The top chat-only latents with at least half of their top-K tokens planted, one phrase each."""
    hits = []
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        for row in a["top_chat_only"]:
            if row["top_planted_share"] >= 0.5:
                hits.append(f"{a['label']} latent {row['latent']} (Δnorm {row['delta_norm']:.2f}, "
                            f"{'survives' if row['genuine'] else 'fails'} Latent Scaling, {pct(row['top_planted_share'])} "
                            f"of its top-{TOP_K} tokens planted, e.g. `{row['examples'][0] if row['examples'] else ''}`)")
    return hits


def _crosscoder_sentences(result: dict) -> list:
    """Per crosscoder: its chat-only latents' planted share, and where the planted latents sit."""
    base = result["planted_token_share"]
    parts = []
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        p = a["planted"]
        co, pl = p["pooled"]["chat-only"], p["planted_latents"]
        if co:
            parts.append(f"{a['label']}: {p['chat_only_alive']} chat-only latents with {pct(co['planted_share'])} of "
                         f"their activation on planted tokens ({co['planted_share'] / max(base, 1e-12):.1f}× the "
                         f"{pct(base)} token share), {p['chat_only_top_planted']} with mostly planted tokens among their "
                         f"top {TOP_K}.")
        else:
            parts.append(f"{a['label']}: no chat-only latent.")
        parts.append(f"{pl['count']} latents fire mostly on planted tokens ({pct(pl['share_of_planted_mass'])} of "
                     f"all activation there): median Δnorm {fmt(pl['median_delta_norm'])} (all latents "
                     f"{fmt(pl['median_delta_norm_all'])}), median decoder cosine {fmt(pl['median_decoder_cos'])} "
                     f"(all {fmt(pl['median_decoder_cos_all'])}).")
    return parts


def _activation_difference(result: dict) -> str:
    """How the two models' activations differ on the greeting / refusal tokens ("" without them)."""
    td = result["tag_differences"]
    if not all(t in td for t in ("greeting", "refusal", "text")):
        return ""
    g, r, t = td["greeting"], td["refusal"], td["text"]
    return (f"On the greeting and refusal tokens the two models' activations have cosine {g['cos']:.2f} / "
            f"{r['cos']:.2f} (text tokens {t['cos']:.2f}) and the chat model's are "
            f"{g['norm_chat'] / g['norm_base']:.2f}× / {r['norm_chat'] / r['norm_base']:.2f}× as large as the "
            "base's. ")


def verdict(result: dict) -> str:
    """One paragraph from the numbers: do the planted behaviours appear as chat-only latents, and where."""
    hits = _chat_only_hits(result)
    parts = _crosscoder_sentences(result)
    diff = _activation_difference(result)
    causal = causal_verdict(result)
    if hits:
        head = ("**The planted behaviours show up in chat-only latents:** " + "; ".join(hits[:3]) + ". "
                "Most planted-token activation, however, goes to latents shared by both models whose chat decoder "
                "is rotated away from the base decoder (low decoder cosine) rather than to chat-only latents. ")
    else:
        head = ("**No chat-only (Δnorm > 0.9) latent is about the planted behaviours;** they show up as latents "
                "that fire on the planted tokens in both models with a rotated chat decoder (low decoder cosine). ")
    return head + diff + " ".join(parts) + causal


def causal_verdict(result: dict) -> str:
    """One sentence per crosscoder from the causal evaluation: how far the chat-minus-base
    difference of the planted / chat-only latents moves the base model toward the chat model,
    against the same-size control and the bias-only baseline."""
    iv = result.get("interventions") or {}
    out = []
    for arch in ARCHS:
        if arch not in iv:
            continue
        e = iv[arch]["edits"]
        kl = lambda name, s="all": e[name][s]["kl_chat"]["mean"] if name in e else None  # noqa: E731
        n = iv[arch]["latent_sets"]
        bits = [f"base {kl('base'):.2f}", f"bias difference only {kl('bias_only'):.2f}"]
        for key, what in (("latents:planted", "planted"), ("latents:control_frequent", "most frequent (control)"),
                          ("latents:chat_only", "chat-only")):
            if kl(key) is not None:
                bits.append(f"{n[key.split(':')[1]]} {what} latents {kl(key):.2f}")
        bits.append(f"all latents {kl('all_latents'):.2f}")
        out.append(f"{result['crosscoders'][arch]['label']}: " + ", ".join(bits))
    if not out:
        return ""
    return (" **Causally** (KL(P_chat ‖ P_edit) on assistant tokens of fresh chats, after adding the named "
            "latents' chat−base decoder difference and the bias difference to the base residual): "
            + "; ".join(out) + ".")
