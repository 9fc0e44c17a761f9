"""The report's "Causal evaluation" section (`causal_section`): the interventions results of
experiments/interventions.py as an HTML table of per-edit metrics with confidence intervals, and
their plot."""
from __future__ import annotations

import html
from typing import Optional

CAUSAL_METRICS = (("kl_chat", "KL(P_chat ‖ P_edit)"), ("kl_base", "KL(P_base ‖ P_edit)"), ("ce", "CE"))


def causal_section(res: Optional[dict]) -> str:
    """The "Causal evaluation" section: per edit, mean [95% CI] of each metric on all
    assistant-predicting tokens and on the first k of each turn, and the plot; "" without results."""
    if not res:
        return ""
    esc = html.escape
    k = (res.get("config") or {}).get("first_k", "k")

    def cell(v):
        if not v or v.get("mean") is None:
            return "<td>–</td>"
        return (f'<td title="95% CI [{v["ci_low"]:.4g}, {v["ci_high"]:.4g}], {v["tokens"]} tokens">'
                f'{v["mean"]:.4g} <span class="ci">[{v["ci_low"]:.3g}, {v["ci_high"]:.3g}]</span></td>')

    head = "".join(f"<th>{esc(label)}<br><span class=\"hint\">{sub}</span></th>"
                   for _, label in CAUSAL_METRICS for sub in ("all", f"first {k}"))
    rows = []
    for name, r in res.get("edits", {}).items():
        cells = "".join(cell(r.get(s, {}).get(m)) for m, _ in CAUSAL_METRICS for s in ("all", "first_k"))
        rows.append(f'<tr><th class="str" title="{esc(str(r.get("formula", "")))}">{esc(name)}</th>'
                    f'<td class="str">{esc(str(r.get("continue_with", "")))}</td>{cells}</tr>')
    sets = res.get("latent_sets") or {}
    sets_txt = "; ".join(f"{esc(n)}: {len(v)} latents" for n, v in sets.items())
    img = (f'<img alt="interventions" src="data:image/png;base64,{res["_png"]}">' if res.get("_png") else "")
    tok = res.get("tokens", {})
    return (f'<section id="causal"><h2>Causal evaluation</h2>'
            f'<p class="hint">Residual after block {esc(str((res.get("config") or {}).get("layer", "L")))} replaced or '
            f'edited, then continued to the logits; {res.get("num_conversations", "?")} conversations, '
            f'{tok.get("all", "?")} assistant-predicting tokens ({tok.get("first_k", "?")} among the first {k} of '
            f'each turn). Means with {esc(str(res.get("ci", "95% CIs")))}. Hover an edit for its formula.'
            + (f" Latent sets: {sets_txt}." if sets_txt else "") + '</p>'
            f'<div class="causal-wrap"><table id="causal-table"><thead><tr><th class="str">edit</th>'
            f'<th class="str">continues</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{img}</div>'
            f'</section>')
