"""HTML of the dashboard's token views, in the static report's look (same style sheet, colours and
markup: `.tokens` of `.tok` spans whose background is the base (blue) or chat (red) contribution
on one shared scale per latent, `.tok.max` framed, base left / chat right in `.sides`).

The report's style sheet (`jaxcoders/analysis/report/templates/report.css`) is read, its class rules
kept and scoped under `.jc` (so they never touch Streamlit's own page), and shipped once per page
with `style_tag()`. Everything here returns HTML strings (escaped); Streamlit shows them with
`st.html`.

* `tokens_html(texts (T,), values (T,), scale, rgb)` — one row of highlighted tokens;
* `card_html(card)` — a latent's examples per bucket, base and chat side by side (the report's card);
* `prompt_table_html(rows)` — per token of a prompt: its top latents with f·c and the base / chat
  contributions;
* `highlight_html(texts, base (T,), chat (T,))` — a whole prompt lit by one latent, base vs chat;
* `lens_html(lens)`, `hist_html(hist)` — a latent's logit lens and activation histogram, marked up
  as the report's card shows them; `bars_html` — labelled bars (bucket populations, token classes).
"""
from __future__ import annotations

import functools
import html
import math
import re

from jaxcoders.analysis.report.page import read_template

SCOPE = "jc"
EXTRA_CSS = """
.jc .tokens { font-size: 13px; }
.jc table.jc-prompt { border-collapse: collapse; font-size: 12.5px; width: 100%; }
.jc table.jc-prompt th, .jc table.jc-prompt td { padding: 2px 6px; border-bottom: 1px solid #eee; text-align: left;
  vertical-align: top; }
.jc table.jc-prompt td.num { text-align: right; font-variant-numeric: tabular-nums; }
.jc .lat { display: inline-block; margin: 1px 4px 1px 0; padding: 0 5px; border-radius: 8px; white-space: nowrap;
  font-variant-numeric: tabular-nums; }
.jc .lat small { color: #555; }
.jc .side h5 { margin: 0 0 2px; font-size: 12px; color: #555; font-weight: 600; }
.jc .lens-table { border-collapse: collapse; font-size: 12px; }
.jc .lens-table th { text-align: left; font-weight: normal; color: #666; padding-right: 8px; white-space: nowrap;
  vertical-align: top; }
.jc .lens-table .tok { display: inline-block; margin: 1px 3px 1px 0; padding: 0 3px; border: 1px solid #ddd;
  border-radius: 3px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre; }
.jc .lens-table .lens-promoted { background: #eef7ee; }
.jc .lens-table .lens-suppressed { background: #f7eeee; }
.jc .density h4 { margin: 8px 0 4px; font-size: 13px; }
.jc .density .hist { display: flex; align-items: flex-end; height: 56px; gap: 1px; border-bottom: 1px solid #999;
  max-width: 420px; }
.jc .density .hist .bar { flex: 1; background: rgb(var(--chat)); opacity: .75; min-height: 0; }
.jc .density .axis { display: flex; justify-content: space-between; max-width: 420px; font-size: 11px; color: #666; }
.jc .bars { font-size: 12px; margin-top: 6px; }
.jc .gen { font: 13px/1.5 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; background: #fafafa;
  border: 1px solid #eee; border-radius: 4px; padding: 6px 8px; }
.jc .gen .prompt-part { color: #888; }
"""


def _rgb(var: str, default: str) -> str:
    m = re.search(rf"--{var}:\s*([\d\s,]+);", read_template("report.css"))
    return m.group(1).replace(" ", "") if m else default


@functools.lru_cache(maxsize=1)
def colours() -> tuple[str, str]:
    """(base, chat) colours as 'r,g,b', from the report's style sheet."""
    return _rgb("base", "31,119,180"), _rgb("chat", "214,39,40")


@functools.lru_cache(maxsize=1)
def scoped_css() -> str:
    """The report's class rules (`.x ...`), each selector prefixed with `.jc `, plus EXTRA_CSS."""
    css = re.sub(r"/\*.*?\*/", "", read_template("report.css"), flags=re.S)
    base, chat = colours()
    rules = [f".{SCOPE} {{ --base: {base}; --chat: {chat}; }}"]
    for sel, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        sels = [s.strip() for s in sel.split(",")]
        if all(s.startswith(".") for s in sels):
            rules.append(", ".join(f".{SCOPE} {s}" for s in sels) + " {" + body.strip() + "}")
    return "\n".join(rules) + EXTRA_CSS


PAGE_CSS = '[data-testid="stMainBlockContainer"] { padding-top: 2.5rem; }'  # Streamlit's own page: less top space


def style_tag() -> str:
    return f"<style>{scoped_css()}\n{PAGE_CSS}</style>"


def wrap(inner: str, **data) -> str:
    """`inner` inside the scoping `<div class="jc">` (with data-* attributes)."""
    attrs = "".join(f' data-{k.replace("_", "-")}="{html.escape(str(v))}"' for k, v in data.items())
    return f'<div class="{SCOPE}"{attrs}>{inner}</div>'


def token_text(s: str) -> str:
    """A token as the report shows it: newlines as ↵."""
    return s.replace("\n", "\u21b5")


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (bool, str)):
        return str(v)
    f = float(v)
    if f == 0:
        return "0"
    return f"{f:.{digits}g}"


def tokens_html(texts, values, scale: float, rgb: str, *, center=None, titles=None) -> str:
    """One `.tokens` row: token i's background alpha = values[i] / scale (clipped to [0, 1])."""
    out = []
    for i, (t, v) in enumerate(zip(texts, values)):
        a = 0.0 if scale <= 0 or v is None or not math.isfinite(v) else max(0.0, min(1.0, float(v) / scale))
        cls = "tok max" if center is not None and i == center else "tok"
        title = f' title="{html.escape(titles[i])}"' if titles is not None else ""
        out.append(f'<span class="{cls}" data-a="{a:.3f}" style="background: rgba({rgb},{a:.3f})"{title}>'
                   f"{html.escape(token_text(t))}</span>")
    return f'<div class="tokens">{"".join(out)}</div>'


def legend_html(scale: float, what: str = "contribution") -> str:
    base, chat = colours()
    ramp = lambda rgb: f"linear-gradient(90deg, rgba({rgb},0), rgb({rgb}))"  # noqa: E731
    return (f'<div class="legend">left: base model {what}<span class="sw" style="background: {ramp(base)}"></span>'
            f' right: chat model {what}<span class="sw" style="background: {ramp(chat)}"></span>'
            f" (one scale: full colour = {fmt(scale)}; framed = max token)</div>")


def sides_html(texts, base_vals, chat_vals, scale: float, *, center=None, titles=None, headers=None) -> str:
    """Base (left, blue) and chat (right, red) copies of the same tokens."""
    b_rgb, c_rgb = colours()
    hb, hc = (f"<h5>{html.escape(headers[0])}</h5>", f"<h5>{html.escape(headers[1])}</h5>") if headers else ("", "")
    return ('<div class="sides">'
            f'<div class="side base">{hb}{tokens_html(texts, base_vals, scale, b_rgb, center=center, titles=titles)}</div>'
            f'<div class="side chat">{hc}{tokens_html(texts, chat_vals, scale, c_rgb, center=center, titles=titles)}</div>'
            "</div>")


def card_html(card: dict) -> str:
    """A latent's examples per bucket as in the report's card (report.js `openCard`)."""
    vocab = card.get("vocab", {})
    scale = 0.0
    for b in card["buckets"]:
        for e in b["examples"]:
            for ch in ("base", "chat"):
                scale = max([scale] + [v for v in e["v"].get(ch, []) if v is not None])
    text = lambda i: "\u00b7" if i < 0 else vocab.get(int(i), f"<{i}>")  # noqa: E731
    parts = [legend_html(scale)]
    for b in card["buckets"]:
        title = "top activations" if b["kind"] == "top" else \
            f"({b['lo']}, {'∞' if b['hi'] is None else b['hi']}] × max activation, sampled"
        pop = f" of {fmt(b['population'], 6)} sequences" if b.get("population") is not None else ""
        parts.append(f'<div class="bucket" data-bucket="{html.escape(b["name"])}"><h4>{html.escape(title)} '
                     f"<small>{len(b['examples'])} shown{pop}</small></h4>")
        for e in b["examples"]:
            meta = (f"activation {fmt(e['a'])} · sequence {e['s']} · position {e['p']}"
                    + (f" · {e['d']}" if e.get("d") else "") + (f" · {e['k']} token" if e.get("k") else ""))
            texts = [text(i) for i in e["t"]]
            titles = [f"token {i} · pos {e['p'] - e['c'] + n}\n" +
                      " · ".join(f"{ch} {fmt((e['v'].get(ch) or [None] * len(texts))[n])}"
                                 for ch in card.get("channels", ["base", "chat"])) for n, i in enumerate(e["t"])]
            parts.append(f'<div class="example"><div class="ex-meta">{html.escape(meta)}</div>'
                         + sides_html(texts, e["v"].get("base", []), e["v"].get("chat", []), scale, center=e["c"],
                                      titles=titles) + "</div>")
        parts.append("</div>")
    return "".join(parts)


def tag_chip(j: int, tag: str, body: str) -> str:
    return f'<span class="lat tag tag-{html.escape(tag)}" data-latent="{j}">{body}</span>'


def prompt_table_html(rows: list[dict]) -> str:
    """One line per token: position, token, class, L0, and its top latents as chips
    `j · f·c (b base | c chat)` coloured by tag."""
    head = ("<tr><th>pos</th><th>token</th><th>class</th><th>L0</th>"
            "<th>top latents: index · f·c <small>(b = base contribution | c = chat contribution)</small></th></tr>")
    body = []
    for r in rows:
        chips = "".join(tag_chip(e["latent"], e["tag"],
                                 f"{e['latent']} · {fmt(e['activation'])} "
                                 f"<small>(b {fmt(e['base'])} | c {fmt(e['chat'])})</small>")
                        for e in r["top"]) or '<span class="hint">–</span>'
        body.append(f'<tr class="tok-row" data-pos="{r["position"]}"><td class="num">{r["position"]}</td>'
                    f'<td><span class="tok">{html.escape(token_text(r["text"]))}</span></td>'
                    f'<td>{html.escape(r["class"])}</td><td class="num">{r["l0"]}</td><td>{chips}</td></tr>')
    return f'<table class="jc-prompt"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def highlight_html(texts, base_vals, chat_vals, latent: int, tag: str, skip=()) -> str:
    """The whole prompt lit by one latent: base contribution left, chat contribution right. The
    colour scale is the max over the tokens not in `skip` (e.g. BOS) when any of them is lit."""
    lit = [max(float(b), float(c)) for i, (b, c) in enumerate(zip(base_vals, chat_vals)) if i not in skip]
    scale = max(lit) if lit and max(lit) > 0 else max([0.0] + [float(v) for v in list(base_vals) + list(chat_vals)])
    titles = [f"pos {i} · base {fmt(b)} · chat {fmt(c)}" for i, (b, c) in enumerate(zip(base_vals, chat_vals))]
    center = None
    if scale > 0:
        tot = [float(b) + float(c) if i not in skip else -1.0 for i, (b, c) in enumerate(zip(base_vals, chat_vals))]
        center = max(range(len(tot)), key=tot.__getitem__)
    return (f'<div class="highlight" data-latent="{latent}" data-tag="{html.escape(tag)}">'
            + legend_html(scale) + sides_html(texts, base_vals, chat_vals, scale, center=center, titles=titles,
                                              headers=("base model", "chat model")) + "</div>")


def lens_html(lens: dict) -> str:
    """The logit lens as the report shows it (report.js `lensEl`): per model, the tokens the latent's
    decoder direction promotes (↑) / suppresses (↓) through the model's final norm and unembedding."""
    rows = []
    for (model, kind), toks in lens.items():
        spans = "".join(f'<span class="tok lens-{html.escape(kind)}">{html.escape(token_text(t))}</span>' for t in toks)
        arrow = "\u2191" if kind == "promoted" else "\u2193"
        rows.append(f'<tr data-model="{html.escape(model)}" data-kind="{html.escape(kind)}"><th>{html.escape(model)} '
                    f"{arrow}</th><td>{spans}</td></tr>")
    return ('<div class="lens"><small>decoder direction through each model\'s final norm and unembedding: the '
            'tokens it promotes (↑) and suppresses (↓)</small>'
            f'<table class="lens-table">{"".join(rows)}</table></div>')


def hist_html(hist: dict) -> str:
    """The activation-density histogram as the report shows it (report.js `densityEl`): firing tokens
    per bin of (0, max activation], bar height log(1 + count)."""
    counts = hist["counts"]
    n, top = sum(counts), math.log1p(max(counts))
    edges = hist.get("edges")
    bars = []
    for i, c in enumerate(counts):
        h = 100 * math.log1p(c) / top if top > 0 else 0.0
        where = f"({fmt(edges[i][0])}, {fmt(edges[i][1])}]" if edges else f"bin {i}"
        bars.append(f'<span class="bar" style="height:{h:.1f}%" title="{html.escape(where)}: {c} tokens"></span>')
    upto = f" up to {fmt(hist['max'])}" if hist.get("max") is not None else ""
    axis = (f'<div class="axis"><span>0</span><span>f·c</span><span>{fmt(hist["max"])}</span></div>'
            if hist.get("max") is not None else "")
    return (f'<div class="density" data-what="activation-density"><h4>activation density ({n:,} firing tokens, '
            f"{len(counts)} bins{upto}; bar height: log count)</h4>"
            f'<div class="hist">{"".join(bars)}</div>{axis}</div>')


def bars_html(title: str, items, fmt_value=str) -> str:
    """Horizontal bars (label, value) scaled to the largest value."""
    if not items:
        return ""
    top = max(float(v) for _, v in items) or 1.0
    _, chat = colours()
    rows = "".join(f'<div style="display:flex;gap:6px;align-items:center">'
                   f'<span style="width:130px;text-align:right">{html.escape(str(k))}</span>'
                   f'<span style="display:inline-block;height:10px;width:{max(1.0, 200 * float(v) / top):.0f}px;'
                   f'background:rgb({chat})"></span><span>{html.escape(fmt_value(v))}</span></div>' for k, v in items)
    return f'<div class="bars" data-what="{html.escape(title)}"><b>{html.escape(title)}</b>{rows}</div>'


def generation_html(prompt_text: str, completion: str) -> str:
    return (f'<div class="gen"><span class="prompt-part">{html.escape(prompt_text)}</span>'
            f'<span class="completion">{html.escape(completion)}</span></div>')
