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
import io
import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from jaxcoders.analysis.report_page import causal_section, render_html

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
