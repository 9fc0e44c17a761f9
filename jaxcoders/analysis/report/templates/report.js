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

  // the logit lens: per model, the tokens the latent's decoder row promotes / suppresses
  function lensEl(lens) {
    const sec = el('div', 'lens'); sec.dataset.what = 'logit-lens';
    sec.appendChild(el('h4', null, 'logit lens (decoder row through the model\'s final norm and unembedding)'));
    const tbl = el('table', 'lens-table');
    ['base', 'chat'].forEach((m) => ['promoted', 'suppressed'].forEach((k) => {
      const toks = lens[m + '_' + k];
      if (!toks) return;
      const tr = el('tr'); tr.appendChild(el('th', null, m + ' ' + (k === 'promoted' ? '\u2191' : '\u2193')));
      const td = el('td');
      toks.forEach((t) => td.appendChild(el('span', 'tok lens-' + k, t.replace(/\n/g, '\u21b5'))));
      tr.appendChild(td); tbl.appendChild(tr);
    }));
    sec.appendChild(tbl);
    return sec;
  }

  // the activation-density histogram: firing tokens per bin of (0, max activation]
  function densityEl(d) {
    const sec = el('div', 'density'); sec.dataset.what = 'activation-density';
    const n = d.counts.reduce((a, b) => a + b, 0);
    sec.appendChild(el('h4', null, 'activation density (' + n + ' firing tokens, ' + d.counts.length +
                                   ' bins up to ' + fmt(d.max, 'g3') + '; bar height: log count)'));
    const bars = el('div', 'hist');
    const top = Math.log1p(Math.max(...d.counts));
    d.counts.forEach((c, i) => {
      const b = el('span', 'bar'); b.style.height = (top > 0 ? 100 * Math.log1p(c) / top : 0).toFixed(1) + '%';
      const w = d.max ? d.max / d.counts.length : null;
      b.title = (w ? '(' + fmt(i * w, 'g3') + ', ' + fmt((i + 1) * w, 'g3') + ']: ' : 'bin ' + i + ': ') + c + ' tokens';
      bars.appendChild(b);
    });
    sec.appendChild(bars);
    return sec;
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
    const interp = (DATA.interpret || {})[String(lat)];
    if (interp && interp.lens) card.appendChild(lensEl(interp.lens));
    if (interp && interp.density) card.appendChild(densityEl(interp.density));
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
