"""The offline half: the per-latent table, its filters, and what a latent's page shows.

`load_latent_data(analysis, examples, tokenizer)` reads the table of `experiments/analyze.py`
(`latents.parquet`) and the max-activating examples of `experiments/collect_examples.py`, joined
exactly as the static report joins them (`jaxcoders.analysis.report.merged_table`: adds `genuine`
and `n_examples`). Without either, `decoder_table(crosscoder)` makes a table from the decoder alone
(Δnorm, tag, cosine, norms).

`filter_table(t, query, tag, only_examples)` understands the report's filter language: words match
the latent id, the tag or a logit-lens token; conditions `column>value` (`>`, `<`, `>=`, `<=`, `=`,
`!=`) on column keys or the report's headers (`delta_norm>0.9 ν^ε<0.2 tag=shared`).

A latent's page (`view_latents.latent_page`) shows its numbers (`number_groups`: decoder, Latent
Scaling, usage), its activation density (`density`: the analysis's `activation_hist` histogram,
sequences per activation bucket of the examples, firing frequency per token class), its logit lens
(`logit_lens`: the `logit_lens_<model>_promoted` / `_suppressed` columns, JSON lists of token
strings, when the analysis has them) and its example card (`example_card`: the report's `cards`,
examples per bucket with token ids and per-token base / chat contributions, windows of W tokens).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

import numpy as np

from jaxcoders.analysis.report import COLUMNS, merged_table, token_strings
from jaxcoders.analysis.report.cards import cards
from jaxcoders.analysis.report.latent_table import template_share_from_summary
from jaxcoders.dashboard.inputs import TABLE_FILES, DashboardError

# the browser's columns, in order (key, header); shown when present and not all-NaN
BROWSER_COLUMNS = [(k, label) for k, label, _, _ in COLUMNS]
LOGIT_LENS_MODELS = ("chat", "base")
LOGIT_LENS_KINDS = ("promoted", "suppressed")
LOGIT_LENS_HINT = ("logit lens not in this analysis: rerun experiments/analyze.py on this crosscoder with its "
                   "logit-lens option (it writes the logit_lens_<model>_promoted / _suppressed columns)")
DECODER_KEYS = (("norm_base", "‖d^base‖"), ("norm_chat", "‖d^chat‖"), ("delta_norm", "Δnorm"),
                ("decoder_cos", "cos(d^base, d^chat)"), ("nearest_chat_base_cos", "nearest base latent cos"),
                ("nearest_chat_base_index", "nearest base latent"))
SCALING_KEYS = (("genuine", "survives Latent Scaling"), ("nu_error", "ν^ε"), ("nu_reconstruction", "ν^r"),
                ("beta_chat_error", "β chat error"), ("beta_base_error", "β base error"),
                ("beta_chat_reconstruction", "β chat reconstruction"),
                ("beta_base_reconstruction", "β base reconstruction"), ("mirror_nu_error", "mirror ν^ε"),
                ("mirror_nu_reconstruction", "mirror ν^r"))
USAGE_KEYS = (("frequency", "firing frequency"), ("max_activation", "max activation (f·c)"),
              ("mean_activation", "mean activation when firing"), ("count_active", "tokens firing"),
              ("template_share", "template-token share"))


class LatentData:
    """The merged per-latent table `t` (one row per latent, column `latent`), the examples
    (`jaxcoders.analysis.examples.load_examples` dict or None), the summary and a token decoder."""

    def __init__(self, table, examples=None, summary: Optional[dict] = None, tokenizer=None, source: str = ""):
        self.t = table.sort_values("latent").reset_index(drop=True)
        self.examples = examples
        self.summary = summary or {}
        self.tokenizer = tokenizer
        self.source = source
        self._by_latent = {int(j): i for i, j in enumerate(self.t["latent"].to_numpy())}
        self._vocab: dict[int, str] = {}

    @property
    def latents(self) -> np.ndarray:
        return self.t["latent"].to_numpy(np.int64)

    def row(self, j: int) -> dict:
        """The table's row of latent j as {column: value}; DashboardError for an unknown latent."""
        if j not in self._by_latent:
            lo, hi = int(self.latents.min()), int(self.latents.max())
            raise DashboardError(f"latent {j} is not in this table ({len(self._by_latent)} latents, {lo}–{hi})")
        return self.t.iloc[self._by_latent[j]].to_dict()

    def has_logit_lens(self) -> bool:
        return any(c.startswith("logit_lens_") for c in self.t.columns)

    def vocab(self, ids) -> dict[int, str]:
        """{id: text} of token ids, decoded once with the chat tokenizer (the report's token_strings)."""
        need = {int(i) for i in ids if int(i) >= 0} - set(self._vocab)
        if need:
            self._vocab.update(token_strings(self.tokenizer, need))
        return self._vocab


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_latent_data(analysis: Optional[str], examples: Optional[str], tokenizer=None,
                     fallback_table=None) -> LatentData:
    """The table of `analysis` joined with the examples of `examples` (either may be None; with
    both None, `fallback_table` — e.g. `decoder_table` — is used)."""
    table, summary, ex = None, {}, None
    if analysis:
        d = Path(analysis)
        path = next((d / f for f in TABLE_FILES if (d / f).is_file()), None)
        if path is None:
            raise DashboardError(f"--analysis={analysis} holds none of {', '.join(TABLE_FILES)}")
        table = _read_table(path)
        if (d / "summary.json").is_file():
            summary = json.loads((d / "summary.json").read_text())
    if examples:
        from jaxcoders.analysis.examples import load_examples

        ex = load_examples(examples)
    if table is None and ex is None:
        if fallback_table is None:
            raise DashboardError("no latent table: pass --analysis (experiments/analyze.py output) or --examples")
        table = fallback_table
    if table is not None and "latent" not in table.columns:
        table = table.reset_index().rename(columns={"index": "latent"})
    t = template_share_from_summary(merged_table(table, ex), summary)
    return LatentData(t, ex, summary, tokenizer, source=str(analysis or examples or "the crosscoder's decoder"))


def decoder_table(model):
    """A per-latent table from the decoder alone (`jaxcoders.analysis.decoder.decoder_metrics`)."""
    import pandas as pd

    from jaxcoders.analysis.decoder import decoder_metrics

    cols = decoder_metrics(model, nearest=False)
    t = pd.DataFrame(cols)
    t.insert(0, "latent", np.arange(len(t), dtype=np.int64))
    return t


# ----------------------------------------------------------------------------- the browser


def browser_columns(t) -> list[tuple[str, str]]:
    """(key, header) of the table columns the browser shows."""
    out = []
    for key, label in BROWSER_COLUMNS:
        if key not in t:
            continue
        v = t[key]
        if v.dtype.kind in "fc" and not np.isfinite(v.to_numpy(float, na_value=np.nan)).any():
            continue
        out.append((key, label))
    return out


_COND = re.compile(r"^([^<>=!]+)(>=|<=|!=|>|<|=)(.+)$")


def _lens_text(t) -> Optional[np.ndarray]:
    cols = [c for c in t.columns if c.startswith("logit_lens_")]
    if not cols:
        return None
    return t[cols].astype(str).agg(" ".join, axis=1).str.lower().to_numpy()


def filter_table(t, query: str = "", tag: str = "", only_examples: bool = False):
    """The rows of `t` matching the report's filter language (see the module docstring)."""
    keys = {k: k for k in t.columns}
    keys.update({label: key for key, label, _, _ in COLUMNS if key in t.columns})
    mask = np.ones(len(t), bool)
    if tag:
        if "tag" not in t:
            raise DashboardError("this table has no tag column to filter on")
        mask &= (t["tag"].astype(str) == tag).to_numpy()
    if only_examples and "n_examples" in t:
        mask &= (t["n_examples"].to_numpy() > 0)
    lens = None
    for term in (query or "").split():
        m = _COND.match(term)
        if m and m.group(1) in keys:
            col, op, val = t[keys[m.group(1)]], m.group(2), m.group(3)
            num = _number(val)
            if num is not None and col.dtype.kind in "biuf":
                x = col.to_numpy(float, na_value=np.nan)
                with np.errstate(invalid="ignore"):
                    hit = {">": x > num, "<": x < num, ">=": x >= num, "<=": x <= num, "=": x == num,
                           "!=": x != num}[op]
                mask &= hit & np.isfinite(x)
            elif op in ("=", "!="):
                s = col.astype(str).str.lower().to_numpy() == val.lower()
                mask &= s if op == "=" else ~s
            else:
                raise DashboardError(f"filter {term!r}: {m.group(1)} is not numeric; use = or != for text")
        elif m:
            raise DashboardError(f"filter {term!r}: no column {m.group(1)!r} (columns: "
                                 f"{', '.join(k for k, _ in browser_columns(t))})")
        else:
            s = term.lower()
            hit = t["latent"].astype(str).to_numpy() == s
            if "tag" in t:
                hit |= t["tag"].astype(str).str.lower().str.contains(s, regex=False).to_numpy()
            if lens is None:
                lens = _lens_text(t)
            if lens is not None:
                hit |= np.char.find(lens.astype(str), s) >= 0
            mask &= hit
    return t[mask]


def _number(s: str) -> Optional[float]:
    try:
        return float(s)
    except ValueError:
        return None


def sort_table(t, key: str, descending: bool):
    """`t` sorted by column `key` (NaN last, ties by latent)."""
    if key not in t:
        raise DashboardError(f"cannot sort by {key!r}: not a column of this table")
    return t.sort_values([key, "latent"], ascending=[not descending, True], na_position="last", kind="stable")


def parse_latent(text, dict_size: int, what: str = "latent") -> int:
    """A latent index typed by a reader; DashboardError unless 0 ≤ j < dict_size."""
    s = str(text).strip().lstrip("#")
    try:
        j = int(s)
    except ValueError:
        raise DashboardError(f"{what} {text!r} is not a latent index; type a number from 0 to {dict_size - 1}") \
            from None
    if not 0 <= j < dict_size:
        raise DashboardError(f"{what} {j} does not exist: this crosscoder has {dict_size} latents (0–{dict_size - 1})")
    return j


def parse_latent_list(text, dict_size: int) -> list[int]:
    """Comma-separated latent indices (at least one)."""
    parts = [p for p in str(text).replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise DashboardError("no latent given; type a latent index (or several, comma-separated)")
    return [parse_latent(p, dict_size) for p in parts]


# ----------------------------------------------------------------------------- a latent's page


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v)) and v == v and v != ""


def number_groups(row: dict) -> dict[str, list[tuple[str, object]]]:
    """{"decoder": [(label, value)], "Latent Scaling": [...], "usage": [...]}: the latent's numbers
    that the table has (missing or NaN ones left out)."""
    out = {}
    for group, keys in (("decoder", DECODER_KEYS), ("Latent Scaling", SCALING_KEYS), ("usage", USAGE_KEYS)):
        vals = [(label, row[k]) for k, label in keys if k in row and _finite(row[k])]
        if vals:
            out[group] = vals
    return out


def activation_hist(row: dict) -> Optional[dict]:
    """The latent's activation histogram of `experiments/analyze.py` (column `activation_hist`, a JSON
    list of firing-token counts per bin of (0, max_activation]): {"counts": [int], "max": float or
    None, "edges": [(lo, hi)] or None}, or None when the table has none (or it is empty)."""
    v = row.get("activation_hist")
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            return None
    if v is None or isinstance(v, float) or not hasattr(v, "__len__"):
        return None
    try:
        counts = [int(c) for c in list(v)]
    except (TypeError, ValueError):
        return None
    if not counts or sum(counts) <= 0:
        return None
    mx = float(row["max_activation"]) if _finite(row.get("max_activation")) else None
    edges = None
    if mx is not None and mx > 0:
        w = mx / len(counts)
        edges = [(i * w, (i + 1) * w) for i in range(len(counts))]
    return {"counts": counts, "max": mx, "edges": edges}


def density(row: dict, examples) -> dict:
    """The activation density of a latent: {"hist": `activation_hist(row)` (firing tokens per
    activation bin, when the analysis has it), "buckets": [(bucket label, sequences)] (of the
    collected examples), "classes": [(token class, frequency or count)], "frequency": float or None}."""
    buckets = []
    if examples is not None:
        for b in examples["meta"]["buckets"]:
            v = row.get(f"population_{b['name']}")
            if _finite(v):
                label = "top" if b["kind"] == "top" else f"({b['lo']}, {b['hi'] if b['hi'] is not None else '∞'}]·max"
                buckets.append((label, int(v)))
    classes = [(k[len("frequency_token_class_"):], float(v)) for k, v in row.items()
               if k.startswith("frequency_token_class_") and _finite(v)]
    if not classes:
        names = (examples or {}).get("meta", {}).get("token_class_names") or []
        classes = [(n, float(row[f"count_{n}"])) for n in names if _finite(row.get(f"count_{n}"))]
    return {"hist": activation_hist(row), "buckets": buckets, "classes": classes,
            "frequency": float(row["frequency"]) if _finite(row.get("frequency")) else None}


def logit_lens(row: dict) -> Optional[dict]:
    """{(model, kind): [token strings]} from the logit-lens columns, or None when the table has none."""
    found = {}
    for model in LOGIT_LENS_MODELS:
        for kind in LOGIT_LENS_KINDS:
            v = row.get(f"logit_lens_{model}_{kind}")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    v = [v]
            v = [str(x) for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v])]
            if v:
                found[(model, kind)] = v
    return found or None


def example_card(data: LatentData, j: int, top_examples: int = 10, bucket_examples: int = 5) -> Optional[dict]:
    """The report's card of latent j ({"buckets": [{name, kind, lo, hi, population, examples: [{a, s, p,
    d, k, t (W,) ids, c, v: {channel: (W,) values}}]}]}) plus "vocab" and "channels", or None when
    the latent has no examples."""
    ex = data.examples
    if ex is None or int(data.row(j).get("n_examples") or 0) == 0:
        return None
    card_map, used = cards(data.t, ex, [j], top_examples, bucket_examples)
    card = card_map[str(j)]
    card["vocab"] = data.vocab(used)
    card["channels"] = list(ex["meta"].get("channels", []))
    return card
