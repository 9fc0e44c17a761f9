"""The page of `jaxcoders.analysis.report`: the HTML template, its CSS and JavaScript, and the
functions that fill it (`render_html`, `causal_section`). The data model (columns, rows, cards)
is built in report.py; this module only turns it into one self-contained HTML string.
"""
from __future__ import annotations

import html
import json
from typing import Optional

_CAUSAL_METRICS = (("kl_chat", "KL(P_chat ‖ P_edit)"), ("kl_base", "KL(P_base ‖ P_edit)"), ("ce", "CE"))


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
                   for _, label in _CAUSAL_METRICS for sub in ("all", f"first {k}"))
    rows = []
    for name, r in res.get("edits", {}).items():
        cells = "".join(cell(r.get(s, {}).get(m)) for m, _ in _CAUSAL_METRICS for s in ("all", "first_k"))
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


def _json_script(obj) -> str:
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict, *, title: str, summary_items, plots, causal: str = "") -> str:
    esc = html.escape
    summ = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in summary_items)
    figs = "".join(f'<figure><img alt="{esc(t)}" src="data:image/png;base64,{b}"><figcaption>{esc(t)}</figcaption>'
                   f"</figure>" for t, b in plots)
    page = _TEMPLATE.replace("__CSS__", _CSS).replace("__JS__", _JS).replace("__TITLE__", esc(title))
    page = page.replace("__SUMMARY__", summ).replace("__CAUSAL__", causal)
    page = page.replace("__PLOTS__", figs or "<p>no plots: the table lacks the columns</p>")
    return page.replace("__DATA__", _json_script(data))  # last: the data may contain anything


# ----------------------------------------------------------------------------- page template

_CSS = r"""
:root { --base: 31,119,180; --chat: 214,39,40; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 12px 20px; background: #263238; color: #fff; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header p { margin: 2px 0 0; color: #b0bec5; font-size: 12px; }
#top { display: grid; grid-template-columns: minmax(320px, 440px) minmax(0, 1fr); gap: 14px; padding: 14px 20px 0; }
main { display: grid; grid-template-columns: minmax(0, 1.2fr) minmax(0, 1fr); gap: 14px; padding: 14px 20px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; min-width: 0; }
#card-panel { position: sticky; top: 8px; align-self: start; max-height: calc(100vh - 16px); overflow: auto; }
h2 { font-size: 15px; margin: 0 0 8px; }
#summary-table { font-size: 12px; border-collapse: collapse; }
#summary-table th { text-align: left; font-weight: 500; color: #555; padding: 1px 12px 1px 0; vertical-align: top; }
#summary-table td { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
#causal { margin: 0 20px 14px; }
.causal-wrap { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.causal-wrap img { max-width: min(720px, 100%); border: 1px solid #eee; }
#causal-table { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
#causal-table th, #causal-table td { padding: 2px 6px; border-bottom: 1px solid #f0f0f0; text-align: right; white-space: nowrap; }
#causal-table .str { text-align: left; }
#causal-table .ci { color: #888; font-size: 11px; }
#plots { display: flex; flex-wrap: wrap; gap: 8px; }
#plots figure { margin: 0; flex: 0 0 auto; }
#plots img { height: 240px; width: auto; border: 1px solid #eee; cursor: zoom-in; }
#plots img.big { height: auto; width: min(900px, 90vw); cursor: zoom-out; }
#plots figcaption { font-size: 11px; color: #666; text-align: center; }
.controls { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin-bottom: 8px; }
#filter { flex: 1 1 260px; padding: 5px 8px; border: 1px solid #bbb; border-radius: 4px; font: inherit; }
.hint { font-size: 11px; color: #777; }
.table-wrap { max-height: calc(100vh - 150px); overflow: auto; border: 1px solid var(--line); }
#latent-table { border-collapse: collapse; width: 100%; font-size: 12px; font-variant-numeric: tabular-nums; }
#latent-table th { position: sticky; top: 0; background: #eceff1; cursor: pointer; user-select: none;
  padding: 4px 4px; text-align: right; white-space: nowrap; border-bottom: 1px solid #cfd8dc; }
#latent-table th.sorted-asc::after { content: " ▲"; font-size: 9px; }
#latent-table th.sorted-desc::after { content: " ▼"; font-size: 9px; }
#latent-table td { padding: 2px 4px; text-align: right; border-bottom: 1px solid #f0f0f0; white-space: nowrap; }
#latent-table td.str, #latent-table th.str { text-align: left; }
#latent-table tbody tr { cursor: pointer; }
#latent-table tbody tr:hover { background: #e3f2fd; }
#latent-table tbody tr.selected { background: #bbdefb; }
.tag { display: inline-block; padding: 0 5px; border-radius: 8px; font-size: 10.5px; }
.tag-chat-only { background: #ffcdd2; } .tag-base-only { background: #bbdefb; }
.tag-shared { background: #c8e6c9; } .tag-other { background: #eeeeee; }
#show-more { margin-top: 6px; }
#card-panel .empty { color: #888; }
.latent-card h3 { margin: 0 0 6px; font-size: 16px; }
.card-stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 1px 12px;
  font-size: 11.5px; margin-bottom: 6px; }
.card-stats span { color: #666; }
.legend { font-size: 12px; margin: 6px 0 10px; }
.legend .sw { display: inline-block; width: 40px; height: 10px; vertical-align: middle; margin: 0 4px; }
.bucket h4 { margin: 12px 0 4px; font-size: 13px; border-bottom: 1px solid #eee; }
.bucket h4 small { font-weight: normal; color: #777; }
.example { margin: 3px 0 6px; }
.ex-meta { font-size: 11px; color: #666; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.side { border-left: 3px solid; padding-left: 5px; min-width: 0; }
.side.base { border-color: rgb(var(--base)); } .side.chat { border-color: rgb(var(--chat)); }
.tokens { font: 12px/1.7 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; word-break: break-all; }
.tok { border-radius: 2px; }
.tok.max { outline: 1px solid #333; }
.close { float: right; cursor: pointer; border: 1px solid #bbb; background: #fff; border-radius: 4px; }
@media (max-width: 1100px) {
  main, #top { grid-template-columns: 1fr; }
  #card-panel { position: static; max-height: none; }
}
"""

_JS = r"""
(function () {
  'use strict';
  const DATA = JSON.parse(document.getElementById('report-data').textContent);
  const cols = DATA.columns, rows = DATA.rows, vocab = DATA.vocab;
  const idx = {}; cols.forEach((c, i) => { idx[c.key] = i; idx[c.label] = i; });
  const PAGE = DATA.page_size || 200;
  const BASE_RGB = '31,119,180', CHAT_RGB = '214,39,40';  // = --base / --chat of the style sheet
  let sortKey = 'latent', sortDir = 1, shown = PAGE, filtered = rows.slice(), selected = null;
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text; return e; };

  function fmt(v, f) {
    if (v === null || v === undefined || v === '') return f === 'str' ? '' : '–';
    if (f === 'int' || f === 'str') return String(v);
    if (typeof v !== 'number') return String(v);
    if (f === 'f3') return v.toFixed(3);
    if (f === 'e2') return v === 0 ? '0' : v.toExponential(2);
    if (f === 'pct') return (100 * v).toFixed(1) + '%';
    return Number(v.toPrecision(3)).toString();
  }

  function parseFilter(text) {
    const preds = [];
    for (const term of text.trim().split(/\s+/).filter(Boolean)) {
      const m = term.match(/^([^<>=!]+)(>=|<=|!=|>|<|=)(.+)$/);
      if (m && idx[m[1]] !== undefined) {
        const i = idx[m[1]], op = m[2], num = Number(m[3]), s = m[3].toLowerCase();
        preds.push((r) => {
          const v = r[i];
          if (v === null || v === undefined) return false;
          if (typeof v === 'number' && !isNaN(num)) {
            return op === '>' ? v > num : op === '<' ? v < num : op === '>=' ? v >= num :
                   op === '<=' ? v <= num : op === '=' ? v === num : v !== num;
          }
          const sv = String(v).toLowerCase();
          return op === '!=' ? sv !== s : op === '=' ? sv === s : false;
        });
      } else {
        const s = term.toLowerCase(), it = idx.tag, il = idx.latent;
        preds.push((r) => String(r[il]) === s || (it !== undefined && String(r[it]).toLowerCase().includes(s)));
      }
    }
    return preds;
  }

  function applyFilter() {
    const preds = parseFilter($('filter').value);
    const tag = $('tag-filter').value, onlyEx = $('only-examples').checked;
    const it = idx.tag, ie = idx.n_examples;
    filtered = rows.filter((r) => (!tag || r[it] === tag) && (!onlyEx || (ie !== undefined && r[ie] > 0)) &&
                                  preds.every((p) => p(r)));
    sortRows(); shown = PAGE; renderRows();
  }

  function sortRows() {
    const i = idx[sortKey];
    filtered.sort((a, b) => {
      const x = a[i], y = b[i], nx = x === null || x === '', ny = y === null || y === '';
      if (nx || ny) return nx === ny ? a[idx.latent] - b[idx.latent] : (nx ? 1 : -1);
      if (x < y) return -sortDir; if (x > y) return sortDir;
      return a[idx.latent] - b[idx.latent];
    });
  }

  function renderHead() {
    const tr = $('latent-table').querySelector('thead tr');
    tr.textContent = '';
    cols.forEach((c) => {
      const th = el('th', c.fmt === 'str' ? 'str' : '', c.label);
      th.title = c.title; th.dataset.key = c.key;
      if (c.key === sortKey) th.classList.add(sortDir > 0 ? 'sorted-asc' : 'sorted-desc');
      th.addEventListener('click', () => {
        if (sortKey === c.key) sortDir = -sortDir;
        else { sortKey = c.key; sortDir = c.fmt === 'str' || c.key === 'latent' ? 1 : -1; }
        sortRows(); renderHead(); renderRows();
      });
      tr.appendChild(th);
    });
  }

  function renderRows() {
    const tb = $('latent-table').querySelector('tbody');
    tb.textContent = '';
    const frag = document.createDocumentFragment();
    filtered.slice(0, shown).forEach((r) => {
      const tr = el('tr', 'latent-row'); tr.dataset.latent = r[idx.latent];
      if (String(r[idx.latent]) === String(selected)) tr.classList.add('selected');
      cols.forEach((c, i) => {
        const td = el('td', c.fmt === 'str' ? 'str' : '');
        if (c.key === 'tag' && r[i]) td.appendChild(el('span', 'tag tag-' + r[i], r[i]));
        else td.textContent = fmt(r[i], c.fmt);
        tr.appendChild(td);
      });
      tr.addEventListener('click', () => openCard(r[idx.latent]));
      frag.appendChild(tr);
    });
    tb.appendChild(frag);
    $('row-count').textContent = 'showing ' + Math.min(shown, filtered.length) + ' of ' + filtered.length +
      ' latents (' + rows.length + ' in total)';
    $('show-more').style.display = filtered.length > shown ? '' : 'none';
  }

  function tokText(id) {
    if (id < 0) return '\u00b7';  // a token whose id the source did not store
    const s = vocab[String(id)];
    return s === undefined ? '<' + id + '>' : s.replace(/\n/g, '\u21b5');
  }

  function tokensEl(ex, ch, scale, rgb) {
    const div = el('div', 'tokens');
    ex.t.forEach((id, i) => {
      const sp = el('span', 'tok' + (i === ex.c ? ' max' : ''), tokText(id));
      const v = (ex.v[ch] || [])[i] || 0;
      const a = scale > 0 ? Math.max(0, Math.min(1, v / scale)) : 0;
      sp.style.background = 'rgba(' + rgb + ',' + a.toFixed(3) + ')';
      sp.title = 'token ' + id + ' ' + JSON.stringify(vocab[String(id)] || '') + ' · pos ' + (ex.p - ex.c + i) + '\n' +
        DATA.channels.map((c) => c + ' ' + fmt((ex.v[c] || [])[i], 'g3')).join(' · ');
      div.appendChild(sp);
    });
    return div;
  }

  function openCard(lat, scroll = true) {
    selected = lat;
    document.querySelectorAll('#latent-table tbody tr').forEach((tr) =>
      tr.classList.toggle('selected', tr.dataset.latent === String(lat)));
    const panel = $('card-panel'); panel.textContent = '';
    const r = rows.find((x) => String(x[idx.latent]) === String(lat));
    const card = el('div', 'latent-card'); card.id = 'card-' + lat; card.dataset.latent = lat;
    const close = el('button', 'close', '×'); close.title = 'close (Esc)';
    close.addEventListener('click', closeCard); card.appendChild(close);
    const tag = r && idx.tag !== undefined ? r[idx.tag] : '';
    const h = el('h3', null, 'Latent ' + lat + ' '); if (tag) h.appendChild(el('span', 'tag tag-' + tag, tag));
    card.appendChild(h);
    const stats = el('div', 'card-stats');
    const addStat = (k, v, f) => { const d = el('div'); d.appendChild(el('span', null, k + ': '));
      d.appendChild(document.createTextNode(fmt(v, f))); stats.appendChild(d); };
    if (r) cols.forEach((c, i) => { if (c.key !== 'latent' && c.key !== 'tag') addStat(c.label, r[i], c.fmt); });
    const det = DATA.details[String(lat)] || {};
    Object.keys(det).forEach((k) => addStat(k, det[k], 'g3'));
    card.appendChild(stats);
    const cd = DATA.cards[String(lat)];
    if (!cd) {
      card.appendChild(el('p', 'empty', 'No examples for this latent (not collected, or it never fired).'));
    } else {
      let scale = 0;
      cd.buckets.forEach((b) => b.examples.forEach((e) => ['base', 'chat'].forEach((c) =>
        (e.v[c] || []).forEach((v) => { if (v > scale) scale = v; }))));
      const lg = el('div', 'legend');
      lg.appendChild(document.createTextNode('left: base model contribution'));
      const ramp = (rgb) => 'linear-gradient(90deg, rgba(' + rgb + ',0), rgb(' + rgb + '))';
      const s1 = el('span', 'sw'); s1.style.background = ramp(BASE_RGB);
      lg.appendChild(s1);
      lg.appendChild(document.createTextNode(' right: chat model contribution'));
      const s2 = el('span', 'sw'); s2.style.background = ramp(CHAT_RGB);
      lg.appendChild(s2);
      lg.appendChild(document.createTextNode(' (one scale: full colour = ' + fmt(scale, 'g3') +
                                             '; framed = max token)'));
      card.appendChild(lg);
      cd.buckets.forEach((b) => {
        const sec = el('div', 'bucket'); sec.dataset.bucket = b.name;
        const title = b.kind === 'top' ? 'top activations' :
          '(' + b.lo + ', ' + (b.hi === null ? '∞' : b.hi) + '] × max activation, sampled';
        const h4 = el('h4', null, title + ' ');
        h4.appendChild(el('small', null, b.examples.length + ' shown' +
          (b.population !== null ? ' of ' + b.population + ' sequences' : '')));
        sec.appendChild(h4);
        b.examples.forEach((e) => {
          const ex = el('div', 'example');
          ex.appendChild(el('div', 'ex-meta', 'activation ' + fmt(e.a, 'g3') + ' · sequence ' + e.s +
            ' · position ' + e.p +
            (e.d ? ' · ' + e.d : '') + (e.k ? ' · ' + e.k + ' token' : '')));
          const sides = el('div', 'sides');
          const sb = el('div', 'side base'); sb.appendChild(tokensEl(e, 'base', scale, BASE_RGB));
          const sc = el('div', 'side chat'); sc.appendChild(tokensEl(e, 'chat', scale, CHAT_RGB));
          sides.appendChild(sb); sides.appendChild(sc); ex.appendChild(sides); sec.appendChild(ex);
        });
        card.appendChild(sec);
      });
    }
    panel.appendChild(card);
    panel.scrollTop = 0;
    if (location.hash !== '#latent-' + lat) history.replaceState(null, '', '#latent-' + lat);
    const top = panel.getBoundingClientRect().top;
    if (scroll && (top < 0 || top > window.innerHeight * 0.6)) panel.scrollIntoView({block: 'start'});
  }

  function closeCard() {
    selected = null; $('card-panel').textContent = '';
    $('card-panel').appendChild(el('p', 'empty', 'Click a row of the table to open its card.'));
    document.querySelectorAll('#latent-table tbody tr.selected').forEach((tr) => tr.classList.remove('selected'));
    history.replaceState(null, '', location.pathname + location.search);
  }

  $('filter').addEventListener('input', applyFilter);
  $('tag-filter').addEventListener('change', applyFilter);
  $('only-examples').addEventListener('change', applyFilter);
  $('show-more').addEventListener('click', () => { shown += PAGE; renderRows(); });
  document.querySelectorAll('#plots img').forEach((img) =>
    img.addEventListener('click', () => img.classList.toggle('big')));
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeCard(); });
  if (idx.tag === undefined) $('tag-filter').style.display = 'none';
  const fromHash = () => { const m = location.hash.match(/^#latent-(\d+)$/);
    if (m && String(m[1]) !== String(selected)) openCard(Number(m[1])); return !!m; };
  window.addEventListener('hashchange', fromHash);
  const init = DATA.initial || {};
  if (init.sort !== undefined && idx[init.sort] !== undefined) { sortKey = init.sort; sortDir = init.dir || 1; }
  renderHead(); sortRows(); renderRows();
  if (!fromHash()) { if (init.open !== undefined) openCard(init.open, false); else closeCard(); }
  document.body.dataset.ready = '1';
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__CSS__</style>
</head><body>
<header><h1>__TITLE__</h1>
<p>crosscoder model diffing · base (left, blue) vs chat (right, red) · generated by jaxcoders</p></header>
<div id="top">
<section id="summary"><h2>Summary</h2><table id="summary-table">__SUMMARY__</table></section>
<section id="plots-section"><h2>Plots <span class="hint">(click to enlarge)</span></h2>
<div id="plots">__PLOTS__</div></section>
</div>
<main>
<section id="table-section"><h2>Latents</h2>
<div class="controls">
<input id="filter" type="search" autocomplete="off"
 placeholder="filter: chat-only · 123 · delta_norm&gt;0.9 · frequency&lt;0.01">
<select id="tag-filter"><option value="">all tags</option><option>chat-only</option><option>base-only</option>
<option>shared</option><option>other</option></select>
<label><input id="only-examples" type="checkbox"> with examples</label>
</div>
<div class="hint">Click a header to sort, a row to open its card. Conditions use column keys or headers
(<code>delta_norm&gt;0.9</code>, <code>ν^ε&lt;0.2</code>, <code>tag=shared</code>); other words match the tag or
the latent id.</div>
<div class="hint" id="row-count"></div>
<div class="table-wrap"><table id="latent-table"><thead><tr></tr></thead><tbody></tbody></table></div>
<button id="show-more" type="button">show more</button>
</section>
<section id="card-panel"></section>
</main>
__CAUSAL__
<script type="application/json" id="report-data">__DATA__</script>
<script>__JS__</script>
</body></html>
"""
