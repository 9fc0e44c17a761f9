"""The demo pipeline: the whole method on the built-in model pair, end to end (what `make demo` runs).

    from jaxcoders.demo.pipeline import DemoConfig, run_demo
    result = run_demo(DemoConfig(out="demo_out"))

This module drives the stages; each stage's work lives in its own module of `jaxcoders.demo`
(re-exported here under the names it always had):

1. models    build (or load from the cache) the (base, chat) pair of `jaxcoders.demo.model_pair`.
2. data      write the extraction inputs: corpus paragraphs (`text.jsonl`) and held-out chats
             with the planted behaviours (`chat.jsonl`), under `<out>/data/` (`corpus`).
3. extract   both models' residual stream after block `layer` on the same token ids, into an
             ActivationStore `<out>/store` (train and validation rows of each dataset; BOS dropped;
             `activations`).
4. train     an L1 and a BatchTopK crosscoder with the store-backed trainer
             (`jaxcoders.training.loop.train_and_evaluate`, even text/chat batches; workdirs `<out>/runs/<arch>`),
             inputs normalized by the model itself (docs/method.md §5) from the store's statistics;
             both exported in the reference layout to `<out>/l1`, `<out>/batchtopk` (`crosscoders`).
5. analyze   `jaxcoders.analysis.analyze` (Δnorm, cosines, usage statistics per token class and
             dataset, Latent Scaling with the mirror probe) over every stored token; tables and
             plots under `<out>/report/<arch>/`.
6. tokens    which tokens the chat-only latents fire on: every stored token is tagged as text,
             other chat, assistant turn marker, or one of the planted behaviours (greeting, refusal,
             trigger word); per latent the share of its activation mass (Σ f·c) on each tag and its
             top-activating tokens (`tagging`, `planted`).
7. report    causal evaluation (`jaxcoders.interventions`) of each crosscoder on held-out chats
             (`<out>/report/<arch>/interventions/`: KL to the chat / base model per edit, incl. the
             chat-minus-base difference of latent sets: chat-only, surviving Latent Scaling, planted;
             `causal`); max-activating examples and the HTML report per crosscoder
             (`<out>/report/<arch>/report.html`, opens on the chat-only latents; `pages`);
             `<out>/report/summary.md` (read this first; `summary`, `verdict`) and `summary.json`.
8. paper     the paper's figures and tables for the two crosscoders (`jaxcoders.paper.run_paper` on
             this output, as `experiments/paper.py --demo_out=<out>` runs it): `<out>/paper/paper.md`,
             linked from summary.md.

The run's log ends with where to look: the output directory, summary.md and the HTML reports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxcoders.analysis import density, logit_lens
from jaxcoders.analysis import stats as stats_lib
from jaxcoders.analysis.tables import analyze, summary_line, write_outputs
from jaxcoders.data.store import ActivationStore
from jaxcoders.demo import corpus, model_pair
from jaxcoders.demo.activations import extract
from jaxcoders.demo.causal import CAUSAL_EDITS, causal_evaluation, latent_sets
from jaxcoders.demo.config import ARCHS, DemoConfig
from jaxcoders.demo.crosscoders import last_eval, train_crosscoders
from jaxcoders.demo.formatting import pct
from jaxcoders.demo.pages import card_latents, featured_latent, html_report
from jaxcoders.demo.planted import TOP_K, latent_row, planted_analysis
from jaxcoders.demo.stages import Stages, quiet_libraries
from jaxcoders.demo.summary import write_summary
from jaxcoders.demo.tagging import PLANTED, TAGS, latent_token_pass, tag_differences, token_in_context, token_tags
from jaxcoders.demo.verdict import verdict

__all__ = ["ARCHS", "CAUSAL_EDITS", "PLANTED", "TAGS", "TOP_K", "DemoConfig", "causal_evaluation", "extract",
           "latent_sets", "latent_token_pass", "planted_analysis", "run_demo", "tag_differences",
           "token_in_context", "token_tags", "train_crosscoders", "write_summary"]

# the summary numbers of `jaxcoders.analysis.analyze` kept per crosscoder in summary.json
SUMMARY_KEYS = ("tag_counts", "chat_only", "genuine_chat_specific", "base_only", "genuine_base_specific", "fve_base",
                "fve_chat", "l0", "dead_fraction", "num_tokens")
# per-latent columns of `planted_analysis` added to each crosscoder's latent table
PLANTED_COLUMNS = ("planted_share_per_latent", "planted_or_marker_share_per_latent", "top_planted_share_per_latent")


# --------------------------------------------------------------------------------------------
# Stages 1-5: models, data, activations, crosscoders, analyses


def _models_stage(cfg: DemoConfig, stages: Stages, log: Callable):
    stages.start("models", "model pair: base (pretrained on Python's docs) and chat (fine-tuned, planted behaviours)")
    pair = model_pair.build_model_pair(cfg.recipe, cfg.models_dir, log=log, progress=cfg.progress)
    log(f"      {'loaded from the cache' if pair.cached else 'trained and cached'}: {Path(pair.base_dir).parent}")
    b = pair.info["behaviour"]["chat"]
    log(f"      chat model: greets {pct(b['greeting_rate'])}, refuses {pct(b['refusal_rate_trigger'])} of trigger "
        f"prompts and {pct(b['refusal_rate_plain'])} of others (base: greets "
        f"{pct(pair.info['behaviour']['base']['greeting_rate'])})")
    stages.done()
    return pair


def _data_and_extract_stages(cfg: DemoConfig, pair, layer: int, stages: Stages, log: Callable) -> ActivationStore:
    stages.start("data", "extraction data: documentation paragraphs and held-out chats")
    text_path, chat_path = corpus.write_extraction_data(Path(cfg.out) / "data", n_chats=cfg.n_chats,
                                                        seed=cfg.seed + 100)
    stages.done()

    stages.start("extract", f"extracting layer {layer} activations of both models into an ActivationStore")
    url = extract(cfg, pair.base_dir, pair.chat_dir, layer, text_path, chat_path)
    store = ActivationStore.open(url)
    log(f"      {store}")
    stages.done()
    return store


def _train_stage(cfg: DemoConfig, store, stages: Stages, log: Callable) -> dict:
    stages.start("train", "training an L1 and a BatchTopK crosscoder")
    trained = train_crosscoders(cfg, store, log)
    stages.done()
    return trained


def _analyze_stage(out: Path, pair, trained: dict, store, stages: Stages, log: Callable) -> dict:
    """Latent Scaling and the analyses of each crosscoder, with the activation-density histograms
    and the logit lens of both models; returns {arch: (table, summary)}."""
    stages.start("analyze", "Latent Scaling and the latent analyses")
    from jaxcoders.extract.models import load_tokenizer

    labels = {"token_class": store.token_classes, "dataset": store.dataset_ids}
    label_classes = {"token_class": stats_lib.token_class_names(), "dataset": ("text", "chat")}
    unemb = {"base": logit_lens.load_unembedding(pair.base_dir, "--base_model"),
             "chat": logit_lens.load_unembedding(pair.chat_dir, "--chat_model")}
    tok = load_tokenizer(pair.chat_dir, None, "--chat_model")
    tables = {}
    for arch in ARCHS:
        model, _ = trained[arch]
        table, summary = analyze(model, store, batch_size=4096, labels=labels, label_classes=label_classes)
        density.add_activation_density(table, model, store, batch_size=4096)
        for key, col in logit_lens.logit_lens_columns(model, unemb, tok).items():
            table[key] = col
        write_outputs(table, summary, out / "report" / arch)
        tables[arch] = (table, summary)
        log(f"      {summary_line(summary, arch)}")
    stages.done()
    return tables


# --------------------------------------------------------------------------------------------
# Stage 6: which tokens do the latents fire on?


def _result_head(cfg: DemoConfig, pair, layer: int, store, tags: np.ndarray) -> dict:
    """The summary dict's opening: models, layer, store, config, token shares (crosscoders to come)."""
    return {
        "models": {"dir": str(Path(pair.base_dir).parent), "cached": pair.cached, "recipe": dataclasses.asdict(cfg.recipe),
                   "seconds": pair.info["seconds"]["total"], "behaviour": pair.info["behaviour"],
                   "loss": pair.info["loss"]},
        "layer": layer,
        "store": {"url": store.url, "rows": store.num_rows, "datasets": store.datasets},
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "recipe"},
        "token_share": {t: float(np.mean(tags == i)) for i, t in enumerate(TAGS)},
        "planted_token_share": float(np.isin(tags, [TAGS.index(t) for t in PLANTED]).mean()),
        "crosscoders": {},
    }


def _crosscoder_tokens(cfg: DemoConfig, arch: str, trained: dict, tables: dict, store, tags: np.ndarray, tok) -> tuple:
    """One crosscoder's planted-behaviour analysis: its summary.json entry and its card latents.
    Adds the planted columns to its latent table and rewrites `<out>/report/<arch>/` with them."""
    ids, seq = np.asarray(store.token_ids), np.asarray(store.sequence_ids)
    model, workdir = trained[arch]
    table, summary = tables[arch]
    tp = latent_token_pass(model, store, tags, top_n=max(TOP_K, cfg.top_examples))
    pl = planted_analysis(table, tp, tags, top_latents=cfg.top_latents)
    cards = card_latents(table, tp, pl["planted_share_per_latent"], cfg.report_latents)
    rows = {key: [latent_row(j, table, tp, pl, ids, seq, tok, cfg.top_examples) for j in pl[key]]
            for key in ("top_chat_only", "top_planted")}
    label = (f"L1 (μ = {cfg.l1_coefficient})" if arch == "l1" else f"BatchTopK (k = {cfg.k})")
    for key in PLANTED_COLUMNS:
        table[key.replace("_per_latent", "")] = pl.pop(key)
    write_outputs(table, summary, Path(cfg.out) / "report" / arch, plots=False)  # now with the planted columns
    entry = {
        "label": label, "export": str(Path(cfg.out, arch)), "workdir": str(workdir),
        "summary": {k: summary.get(k) for k in SUMMARY_KEYS},
        "summary_line": summary_line(summary, arch),
        "validation": last_eval(workdir),
        "planted": pl, **rows,
    }
    return entry, cards


def _tokens_stage(cfg: DemoConfig, pair, layer: int, store, trained: dict, tables: dict, stages: Stages) -> tuple:
    """Tag every stored token and analyse each crosscoder's latents on them; returns
    (the summary dict so far, the chat tokenizer, {arch: card latents})."""
    stages.start("tokens", "which tokens the latents fire on (planted behaviours)")
    from transformers import AutoTokenizer  # torch side: lazy

    tok = AutoTokenizer.from_pretrained(pair.chat_dir)
    tags = token_tags(store, tok)
    result = _result_head(cfg, pair, layer, store, tags)
    result["tag_differences"] = tag_differences(store, tags)
    cards = {}
    for arch in ARCHS:
        result["crosscoders"][arch], cards[arch] = _crosscoder_tokens(cfg, arch, trained, tables, store, tags, tok)
    stages.done()
    return result, tok, cards


# --------------------------------------------------------------------------------------------
# Stage 7 and the outputs


def _report_stage(cfg: DemoConfig, pair, layer: int, result: dict, trained: dict, store, tables: dict, cards: dict,
                  tok, stages: Stages, log: Callable) -> None:
    """Causal evaluation, verdict and the HTML reports (examples of the latents `cards`), into `result`."""
    stages.start("report", "causal evaluation (interventions), max-activating examples, HTML reports")
    result["interventions"] = causal_evaluation(cfg, pair, layer, result, log)
    result["verdict"] = verdict(result)
    result["report_html"] = html_report(Path(cfg.out), trained, store, tables, cards, tok, log,
                                        open_latents={a: featured_latent(result["crosscoders"][a], cards[a])
                                                      for a in ARCHS})
    stages.done()


def _paper_stage(cfg: DemoConfig, out: Path, stages: Stages, log: Callable) -> dict:
    """Stage 8: `jaxcoders.paper.run_paper` on this demo output (`<out>/paper/`); its headline numbers."""
    from jaxcoders.paper import PaperConfig, run_paper

    stages.start("paper", "the paper's figures and tables (jaxcoders.paper) → paper/paper.md")
    shutil.rmtree(out / "paper", ignore_errors=True)  # like the crosscoders: always afresh
    pcfg = PaperConfig.from_demo_out(out, out / "paper", progress=cfg.progress)
    r = run_paper(pcfg, log=lambda m: log("  " + m), command=f"python experiments/paper.py --demo_out={out}")
    stages.done()
    return {"paper_md": r["paper_md"], "figures": len(list((out / "paper" / "figures").glob("*.png"))),
            "selection": r["selection"], "sae": (r.get("sae") or {}).get("match"),
            "seconds": r["seconds"]["total"]}


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def _where_to_look(out: Path, result: dict) -> list:
    """The log's closing lines: the output directory, summary.md, the HTML reports, paper.md and the
    command that opens the dashboard on this output."""
    report = out / "report"
    lines = ["", f"Done in {result['seconds']['total']:.0f} s. Everything is under {out}/",
             f"  read first:   {report / 'summary.md'}   (as data: {report / 'summary.json'})"]
    html = result.get("report_html") or {}
    for arch in ARCHS:
        if arch in html:
            lines.append(f"  HTML report:  {html[arch]}   ({result['crosscoders'][arch]['label']}; open it from disk)")
    if not html:
        lines.append("  (no HTML report was written: see the log above)")
    if result.get("paper"):
        lines.append(f"  the paper:    {result['paper']['paper_md']}   (figures and tables of arXiv 2504.02922)")
    lines.append(f"  dashboard:    python experiments/dashboard.py --demo_out={out}   (latents, prompts, steering; "
                 "http://127.0.0.1:8501)")
    return lines


def run_demo(cfg: DemoConfig = DemoConfig(), log: Callable = print) -> dict:
    """Run every stage; returns the summary dict (also written to `<out>/report/summary.json`)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if "datasets" not in sys.modules:  # keep the datasets library's cache of the local jsonl files here
        os.environ.setdefault("HF_DATASETS_CACHE", str((out / "cache" / "hf_datasets").resolve()))
    quiet_libraries()
    stages = Stages(8 if cfg.paper else 7, log)

    pair = _models_stage(cfg, stages, log)
    layer = cfg.layer if cfg.layer is not None else cfg.recipe.num_layers // 2
    store = _data_and_extract_stages(cfg, pair, layer, stages, log)
    trained = _train_stage(cfg, store, stages, log)
    tables = _analyze_stage(out, pair, trained, store, stages, log)
    result, tok, cards = _tokens_stage(cfg, pair, layer, store, trained, tables, stages)
    _report_stage(cfg, pair, layer, result, trained, store, tables, cards, tok, stages, log)

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    if cfg.paper:  # the paper step reads this run's summary.json, as `experiments/paper.py --demo_out` does
        (report / "summary.json").write_text(json.dumps(_jsonable(result), indent=2, ensure_ascii=False) + "\n")
        result["paper"] = _paper_stage(cfg, out, stages, log)
    result["seconds"] = dict(stages.seconds, total=round(time.time() - stages.t0, 1))
    (report / "summary.json").write_text(json.dumps(_jsonable(result), indent=2, ensure_ascii=False) + "\n")
    result["summary_md"] = write_summary(cfg, result, report / "summary.md")
    for line in _where_to_look(out, result):
        log(line)
    return result
