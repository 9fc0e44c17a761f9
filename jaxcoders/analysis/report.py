"""One self-contained static HTML report per crosscoder: opens from disk, no server, no network.

`build_report(analysis_dir)` reads what the analysis commands wrote into one directory and writes
`report.html` (CSS and JavaScript inline, plots as base64 PNG, data as JSON in a
`<script type="application/json" id="report-data">` tag):

* `latents.parquet` (or `latent_scaling.parquet`, or `.csv`) + `summary.json` from
  experiments/analyze.py / latent_scaling.py: the per-latent table and the summary numbers;
* `examples.json` + `examples.parquet` + `example_latents.parquet` from
  experiments/collect_examples.py: the examples of the latent cards, bucket populations, usage
  counts (template-token share; the tied crosscoder's slot counts and ratios). For a tied
  crosscoder (which `analyze` does not cover) example_latents alone makes the table;
* optionally `interventions.json` + `interventions.png` from experiments/interventions.py (in the
  directory or its `interventions/` subdirectory): the "Causal evaluation" section (`#causal`).

The page: summary numbers; the Δnorm histogram, ν^ε/ν^r scatter (chat-only latents; mirror probe
for base-only latents when present), the tied crosscoder's r_base/r_chat scatter and the firing
frequency histogram; a sortable, filterable latent table (`#latent-table`: click a header to
sort; `#filter` takes words matched against tag and latent id and conditions such as
`delta_norm>0.9 frequency<0.01 tag=chat-only`; `#tag-filter`; `#only-examples`); clicking a row
opens the latent's card (`#card-panel .latent-card`, also via the URL hash `#latent-<j>`): its
numbers and its examples per bucket (top, then the quantile buckets), each example shown twice
side by side, tokens highlighted by the base model's and the chat model's contribution
‖f_m d_j^m‖ on one shared colour scale per latent (a chat-only latent lights up on the right only).

Token ids become text with a tokenizer (`tokenizer=`: a path / hub name for
`transformers.AutoTokenizer.from_pretrained`, imported only then; an object with `decode`; or a
{id: text} dict); without one tokens show as `<id>`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

TABLE_FILES = ("latents.parquet", "latents.csv", "latent_scaling.parquet", "latent_scaling.csv")

# (key, header, format, tooltip): shown when the column exists and is not all-NaN
COLUMNS = [
    ("latent", "latent", "int", "latent index j"),
    ("tag", "tag", "str", "by Δnorm: chat-only > 0.9, base-only < 0.1, shared 0.4–0.6, other"),
    ("genuine", "LS", "str", "survives Latent Scaling: Δ ≥ 0.9, ν^ε < 0.2, ν^r < 0.5 (base-only: mirror probe)"),
    ("delta_norm", "Δnorm", "f3", "relative decoder norm: 0 = base-only, 1 = chat-only"),
    ("decoder_cos", "cos", "f3", "cosine of the base and chat decoder rows"),
    ("nu_error", "ν^ε", "f3", "error ratio along the chat decoder row (high: Complete Shrinkage)"),
    ("nu_reconstruction", "ν^r", "f3", "reconstruction ratio along the chat decoder row (high: Latent Decoupling)"),
    ("mirror_nu_error", "mirror ν^ε", "f3", "error ratio along the base decoder row (base-only latents)"),
    ("mirror_nu_reconstruction", "mirror ν^r", "f3", "reconstruction ratio along the base decoder row"),
    ("frequency", "freq", "e2", "share of tokens where the latent fires"),
    ("template_share", "template", "pct", "share of the latent's firing tokens that are chat-template tokens"),
    ("max_activation", "max act", "g3", "max latent activation (f·c)"),
    ("r_base", "r_base", "f3", "tied: base-slot / shared-slot firing count"),
    ("r_chat", "r_chat", "f3", "tied: chat-slot / shared-slot firing count"),
    ("n_examples", "ex", "int", "examples in the card"),
]
EXTRA_CARD = ("norm_base", "norm_chat", "mean_activation", "count_active", "count_slot_shared", "count_slot_base",
              "count_slot_chat", "frequency_base", "frequency_chat", "beta_chat_error", "beta_base_error",
              "nearest_chat_base_cos", "nearest_chat_base_index", "nearest_base_chat_cos", "nearest_base_chat_index",
              "observed_max_activation")


# ----------------------------------------------------------------------------- inputs


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_inputs(analysis_dir) -> dict:
    """{"table": DataFrame | None, "summary": dict, "examples": load_examples(...) | None, "dir": Path}."""
    d = Path(analysis_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory; pass the <out>/<crosscoder> directory written by "
                                "experiments/analyze.py or experiments/collect_examples.py")
    table = next((_read_table(d / f) for f in TABLE_FILES if (d / f).is_file()), None)
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    ex = None
    if (d / "examples.json").is_file():
        from jaxcoders.analysis.examples import load_examples

        ex = load_examples(d)
    if table is None and ex is None:
        raise FileNotFoundError(f"{d} holds neither latents.parquet (experiments/analyze.py) nor examples.json "
                                "(experiments/collect_examples.py): nothing to report")
    return {"table": table, "summary": summary, "examples": ex, "dir": d, "interventions": load_interventions(d)}


def load_interventions(d: Path) -> Optional[dict]:
    """`interventions.json` (+ `interventions.png`) of experiments/interventions.py, found in the
    analysis directory or its `interventions/` subdirectory; None when absent."""
    for sub in (d, d / "interventions"):
        if (sub / "interventions.json").is_file():
            res = json.loads((sub / "interventions.json").read_text())
            png = sub / "interventions.png"
            res["_png"] = base64.b64encode(png.read_bytes()).decode("ascii") if png.is_file() else None
            return res
    return None


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


def merged_table(table, ex):
    """The analysis table (all latents) with the examples' per-latent columns joined on `latent`,
    or the examples' table alone (e.g. tied crosscoders). Adds `genuine` and `n_examples`."""
    import pandas as pd

    lat = ex["latents"] if ex is not None else None
    if table is None:
        t = lat.copy()
    elif lat is not None:
        extra = [c for c in lat.columns if c not in table.columns or c == "latent"]
        t = table.merge(lat[extra], on="latent", how="left")
    else:
        t = table.copy()
    g = np.full(len(t), "", dtype=object)
    if "genuine_chat_specific" in t:
        g[t["genuine_chat_specific"].fillna(False).to_numpy(bool)] = "✓"
    if "genuine_base_specific" in t:
        g[t["genuine_base_specific"].fillna(False).to_numpy(bool)] = "✓"
    if "genuine_chat_specific" in t or "genuine_base_specific" in t:
        t["genuine"] = g
    n = np.zeros(len(t), np.int64)
    if ex is not None:
        counts = pd.Series(ex["examples"]["latent"]).value_counts()
        n = t["latent"].map(counts).fillna(0).to_numpy(np.int64)
    t["n_examples"] = n
    return t


def _template_share_from_summary(t, summary: dict):
    """share = freq_template × tokens_template / count_active (from analyze's per-class columns)."""
    tok = summary.get("tokens_token_class_template")
    if "template_share" in t or not tok or "frequency_token_class_template" not in t or "count_active" not in t:
        return t
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = t["count_active"].to_numpy(np.float64)
        t["template_share"] = np.where(cnt > 0, t["frequency_token_class_template"].to_numpy(np.float64) * tok / cnt,
                                       np.nan)
    return t


# ----------------------------------------------------------------------------- tokens


def token_strings(tokenizer, ids) -> dict:
    """{id: text} for the given ids (see the module docstring for `tokenizer`); {} without one."""
    ids = sorted({int(i) for i in ids if int(i) >= 0})
    if tokenizer is None or not ids:
        return {}
    if isinstance(tokenizer, dict):
        return {i: str(tokenizer[i]) for i in ids if i in tokenizer}
    if isinstance(tokenizer, (str, os.PathLike)):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("--tokenizer needs transformers: pip install 'jaxcoders[torch]'") from e
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    out = {}
    for i in ids:
        try:
            out[i] = tokenizer.decode([i], clean_up_tokenization_spaces=False)
        except TypeError:
            out[i] = tokenizer.decode([i])
    return out


# ----------------------------------------------------------------------------- plots


def _png(fn, *args, **kw) -> Optional[str]:
    buf = io.BytesIO()
    try:
        fn(*args, buf, **kw)
    except (KeyError, ValueError):
        return None
    return base64.b64encode(buf.getvalue()).decode()


def _slot_scatter(t, out):
    from jaxcoders.analysis import plots

    plt = plots._plt()
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
    return plots._save(fig, out)


def make_plots(t) -> list[tuple[str, str]]:
    """[(title, base64 png)] for the columns the table has."""
    from jaxcoders.analysis import plots

    out = []
    if "delta_norm" in t and "tag" in t:
        out.append(("Δnorm histogram", _png(plots.delta_norm_hist, t)))
    if "nu_error" in t and np.isfinite(t["nu_error"].to_numpy(float)).any():
        out.append(("ν^ε vs ν^r (chat-only latents)", _png(plots.nu_scatter, t)))
    if "mirror_nu_error" in t and np.isfinite(t["mirror_nu_error"].to_numpy(float)).any():
        out.append(("mirror ν^ε vs ν^r (base-only latents)", _png(plots.nu_scatter, t, mirror=True)))
    if "r_base" in t and "r_chat" in t:
        out.append(("slot ratios", _png(_slot_scatter, t)))
    if "frequency" in t and "tag" in t:
        out.append(("firing frequency", _png(plots.frequency_hist, t)))
    return [(k, v) for k, v in out if v]


# ----------------------------------------------------------------------------- data for the page


def _num(v, digits: int = 4):
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return None
    return float(f"{f:.{digits}g}")


def _columns(t) -> list[dict]:
    cols = []
    for key, label, fmt, tip in COLUMNS:
        if key not in t:
            continue
        v = t[key]
        if fmt not in ("str", "int") and not np.isfinite(v.to_numpy(float, na_value=np.nan)).any():
            continue
        cols.append({"key": key, "label": label, "fmt": fmt, "title": tip})
    return cols


def _card_order(t, ex, max_cards: int) -> list[int]:
    """Latents that get a card: those with examples, genuine first, then chat-only, base-only,
    then by frequency (or max activation)."""
    have = t[t["n_examples"] > 0]
    if not len(have):
        return []
    tag_rank = {"chat-only": 1, "base-only": 2, "shared": 3, "other": 4}
    key1 = -(have["genuine"] == "✓").astype(int) if "genuine" in have else 0
    key2 = have["tag"].map(tag_rank).fillna(5) if "tag" in have else 0
    by = "frequency" if "frequency" in have else ("max_activation" if "max_activation" in have else "latent")
    order = have.assign(_k1=key1, _k2=key2, _k3=-have[by].fillna(0)).sort_values(["_k1", "_k2", "_k3", "latent"])
    return [int(j) for j in order["latent"].to_numpy()[:max_cards]]


def _cards(t, ex, latents, top_examples: int, bucket_examples: int):
    meta, e = ex["meta"], ex["examples"]
    channels = [c for c in meta["channels"]]
    lat_arr = e["latent"]
    order = np.argsort(lat_arr, kind="stable")
    bounds = np.searchsorted(lat_arr[order], latents), np.searchsorted(lat_arr[order], latents, side="right")
    rows_t = t.set_index("latent")
    bnames = {b["id"]: b for b in meta["buckets"]}
    ds_names = meta.get("datasets") or []
    cls_names = meta.get("token_class_names") or []
    cards, used_ids = {}, set()
    for j, a, b in zip(latents, *bounds):
        sel = order[a:b]
        card_buckets = []
        for bid in sorted(bnames):
            mine = sel[e["bucket"][sel] == bid]
            mine = mine[np.argsort(e["rank"][mine])][: top_examples if bid == 0 else bucket_examples]
            pop_key = f"population_{bnames[bid]['name']}"
            pop = _num(rows_t.at[j, pop_key]) if pop_key in rows_t.columns else None
            exs = []
            for i in mine:
                tok = e["token_ids"][i]
                ok = np.flatnonzero(tok != -1)  # -1: outside the sequence; -2: id unknown
                lo, hi = (int(ok[0]), int(ok[-1]) + 1) if ok.size else (0, 0)
                used_ids.update(int(x) for x in tok[lo:hi] if x >= 0)
                ds = int(e["dataset_id"][i])
                cl = int(e["token_class"][i])
                exs.append({"a": _num(e["activation"][i]), "s": int(e["sequence_id"][i]), "p": int(e["position"][i]),
                            "d": ds_names[ds] if 0 <= ds < len(ds_names) else None,
                            "k": cls_names[cl] if 0 <= cl < len(cls_names) else None,
                            "t": [int(x) for x in tok[lo:hi]], "c": meta["window"]["center_index"] - lo,
                            "v": {ch: [_num(x, 3) for x in e[f"act_{ch}"][i][lo:hi]] for ch in channels}})
            if exs or (pop or 0) > 0:
                card_buckets.append({"id": bid, "name": bnames[bid]["name"], "kind": bnames[bid]["kind"],
                                     "lo": bnames[bid]["lo"], "hi": bnames[bid]["hi"], "population": pop,
                                     "examples": exs})
        cards[str(j)] = {"buckets": card_buckets}
    return cards, used_ids


def report_data(t, summary: dict, ex, *, tokenizer=None, max_cards: int = 500, top_examples: int = 10,
                bucket_examples: int = 5) -> dict:
    cols = _columns(t)
    extra = [k for k in EXTRA_CARD if k in t and k not in {c["key"] for c in cols}]
    classes = set((ex["meta"].get("token_class_names") or []) if ex is not None else [])
    extra += [c for c in t.columns if c.startswith("count_") and (c[6:] in classes or c.startswith(("count_slot_",
                                                                                                   "count_model_")))]
    extra = list(dict.fromkeys(extra))
    rows = [[_num(v) if c["fmt"] != "str" else ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
             for c, v in zip(cols, vals)] for vals in t[[c["key"] for c in cols]].itertuples(index=False, name=None)]
    details = {}
    cards, used = {}, set()
    if ex is not None:
        latents = _card_order(t, ex, max_cards)
        cards, used = _cards(t, ex, latents, top_examples, bucket_examples)
        sub = t.set_index("latent").loc[latents]
        for j, vals in zip(latents, sub[extra].itertuples(index=False, name=None)):
            details[str(j)] = {k: _num(v) for k, v in zip(extra, vals)}
    meta = ex["meta"] if ex is not None else {}
    return {"columns": cols, "rows": rows, "cards": cards, "details": details,
            "vocab": {str(k): v for k, v in token_strings(tokenizer, used).items()},
            "channels": meta.get("channels", []),
            "architecture": meta.get("architecture") or summary.get("architecture"),
            "window": meta.get("window"), "page_size": 200}


def _summary_items(t, summary: dict, ex) -> list[tuple[str, str]]:
    meta = ex["meta"] if ex is not None else {}
    items = []

    def add(label, v, fmt="{}"):
        if v is not None and not (isinstance(v, float) and not math.isfinite(v)):
            items.append((label, fmt.format(v) if not isinstance(v, str) else v))

    add("architecture", summary.get("architecture") or meta.get("architecture"))
    add("code normalization", summary.get("code_normalization") or meta.get("code_normalization"))
    add("latents (F)", summary.get("dict_size") or meta.get("dict_size"), "{:,}")
    add("d_model (D)", summary.get("activation_dim") or meta.get("activation_dim"))
    add("tokens analysed", summary.get("num_tokens") or meta.get("num_tokens"), "{:,}")
    tags = summary.get("tag_counts") or ({k: int(v) for k, v in t["tag"].value_counts().items()} if "tag" in t else {})
    for k in ("chat-only", "base-only", "shared", "other"):
        add(f"{k} latents", tags.get(k), "{:,}")
    add("chat-only surviving Latent Scaling", summary.get("genuine_chat_specific"), "{:,}")
    add("base-only surviving the mirror probe", summary.get("genuine_base_specific"), "{:,}")
    for k in ("fve_base", "fve_chat"):
        add(f"FVE {k[4:]}", summary.get(k), "{:.4f}")
    add("L0", summary.get("l0"), "{:.2f}")
    add("dead fraction", summary.get("dead_fraction"), "{:.2%}")
    n = meta.get("num_tokens")
    if "count_slot_shared" in t and n:
        for slot in ("shared", "base", "chat"):
            add(f"L0 {slot} slot", float(t[f"count_slot_{slot}"].sum()) / n, "{:.2f}")
        rb, rc = t["r_base"].to_numpy(float), t["r_chat"].to_numpy(float)
        add("chat-corner latents (r_chat > .15, r_base < .04)", int(np.sum((rc > 0.15) & (rb < 0.04))))
        add("base-corner latents (r_base > .15, r_chat < .04)", int(np.sum((rb > 0.15) & (rc < 0.04))))
    if meta:
        add("example sequences", meta.get("num_sequences"), "{:,}")
        add("duplicate sequences skipped", meta.get("duplicate_sequences"), "{:,}")
        add("latents with examples", int((t["n_examples"] > 0).sum()), "{:,}")
        add("examples per bucket", meta.get("per_bucket"))
        add("buckets (× max activation)", ", ".join(b["name"] for b in meta.get("buckets", [])))
        if meta.get("models"):
            add("models", ", ".join(f"{m.get('role')}: {m.get('name')}" for m in meta["models"]))
    add("summary", summary.get("summary_line"))
    return items


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


def build_report(analysis_dir, out=None, *, tokenizer=None, title: Optional[str] = None, max_cards: int = 500,
                 top_examples: int = 10, bucket_examples: int = 5, plots: bool = True,
                 sort_by: str = "latent", open_latent: Optional[int] = None) -> Path:
    """Write the report of one analysis directory (default `<analysis_dir>/report.html`); returns its path.

    The page opens with the table sorted by the column `sort_by` (ascending for "latent" and text
    columns, descending otherwise; e.g. "delta_norm" puts the chat-only latents first) and, with
    `open_latent` ("first" = the first card: genuine chat-specific, then chat-only latents), that
    latent's card open; a `#latent-<j>` URL hash still wins."""
    inp = load_inputs(analysis_dir)
    summary, ex = inp["summary"], inp["examples"]
    t = _template_share_from_summary(merged_table(inp["table"], ex), summary)
    name = title or Path(summary.get("crosscoder") or (ex or {}).get("meta", {}).get("crosscoder") or inp["dir"]).name
    if name in ("model", "export", "final"):
        name = inp["dir"].name
    data = report_data(t, summary, ex, tokenizer=tokenizer, max_cards=max_cards, top_examples=top_examples,
                       bucket_examples=bucket_examples)
    keys = [c["key"] for c in data["columns"]]
    if sort_by not in keys:
        raise ValueError(f"sort_by={sort_by!r} is not a column of this report (columns: {', '.join(keys)})")
    fmt = {c["key"]: c["fmt"] for c in data["columns"]}[sort_by]
    data["initial"] = {"sort": sort_by, "dir": 1 if sort_by == "latent" or fmt == "str" else -1}
    if open_latent == "first":
        open_latent = next(iter(data["cards"]), None)
    if open_latent is not None:
        if str(open_latent) not in data["cards"]:
            raise ValueError(f"open_latent={open_latent}: latent has no card in this report "
                             f"({len(data['cards'])} cards; raise max_cards or collect its examples)")
        data["initial"]["open"] = int(open_latent)
    page = render_html(data, title=f"jaxcoders report: {name}", summary_items=_summary_items(t, summary, ex),
                       plots=make_plots(t) if plots else [], causal=causal_section(inp["interventions"]))
    out = Path(out) if out is not None else inp["dir"] / "report.html"
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


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
