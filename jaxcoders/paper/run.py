"""`run_paper`: every analysis of the paper for one L1 and one BatchTopK crosscoder, composed from
the package's analyses, into `<out>/` (docs/paper.md):

1. inputs    the crosscoders, their store (and a tied crosscoder), checked; the models' readouts.
2. latents   per crosscoder its latent table (`paper.tables`: analysis reused or run, activation
             density, logit lens, twins) → `<out>/<arch>/latents.parquet`, `summary.json`.
3. baseline  one SAE per model, matched by decoder cosine (`paper.baseline`).
4. causal    the evaluation set and the interventions per crosscoder (`paper.causal`).
5. figures   the PNGs (`<out>/figures/`) and the CSVs behind them (`<out>/*.csv`), then `paper.md`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxcoders.paper import causal as causal_lib
from jaxcoders.paper import figures, tables
from jaxcoders.paper.config import ARCHS, PaperConfig, PaperError
from jaxcoders.paper.document import dumps, write_paper_md
from jaxcoders.paper.inputs import load_inputs


class _Clock:
    def __init__(self, log: Callable):
        self.log, self.t0, self.seconds, self.n = log, time.time(), {}, 0

    def stage(self, name: str, what: str):
        self.n += 1
        self.name, self.t = name, time.time()
        self.log(f"  [paper {self.n}/5] {what}")

    def done(self):
        self.seconds[self.name] = round(time.time() - self.t, 1)


def _readouts(cfg: PaperConfig, d_model: int):
    """(unembeddings, chat tokenizer) for the logit lens, after checking the models and the layer."""
    if not cfg.base_model:
        return None, None
    from jaxcoders.analysis.logit_lens import load_unembedding
    from jaxcoders.extract import models as models_lib

    infos = {"--base_model": models_lib.load_config(cfg.base_model, None, "--base_model"),
             "--chat_model": models_lib.load_config(cfg.chat_model, None, "--chat_model")}
    if cfg.layer is not None:
        models_lib.check_layer(cfg.layer, infos)
    for flag, info in infos.items():
        if info.d_model != d_model:
            raise PaperError(f"{flag}={info.name} has hidden size {info.d_model} but the crosscoders have D = "
                             f"{d_model}; pass the models they were trained on.")
    tok = models_lib.load_tokenizer(cfg.chat_model, None, "--chat_model")
    return {"base": load_unembedding(cfg.base_model, "--base_model"),
            "chat": load_unembedding(cfg.chat_model, "--chat_model")}, tok


def _tok_list(s: str, n: int = 5) -> str:
    toks = json.loads(s) if isinstance(s, str) and s.startswith("[") else []
    return " ".join("`" + json.dumps(t, ensure_ascii=False)[1:-1].replace("|", "\\|").replace("`", "'") + "`"
                    for t in toks[:n]) or "–"


def _top_latents(t, n: int = 10) -> list:
    sub = t[t["tag"] == "chat-only"]
    if not len(sub):
        return []
    g = sub["genuine_chat_specific"].to_numpy(bool) if "genuine_chat_specific" in sub else np.zeros(len(sub), bool)
    freq = sub["frequency"].to_numpy(float) if "frequency" in sub else np.zeros(len(sub))
    sub = sub.iloc[np.lexsort((-np.nan_to_num(freq), ~g))[:n]]
    rows = []
    for _, r in sub.iterrows():
        rows.append([int(r["latent"]), f"{r['nu_error']:.3f}", f"{r['nu_reconstruction']:.3f}",
                     "✓" if r.get("genuine_chat_specific") else "", f"{r.get('frequency', float('nan')):.2e}",
                     _tok_list(r.get("logit_lens_chat_promoted")), _tok_list(r.get("logit_lens_chat_suppressed"))])
    return rows


def _csv(frame, path: Path) -> None:
    frame.to_csv(path, index=False)


def _causal_stage(cfg, out, tabs, r, log) -> None:
    path, meta = causal_lib.evaluation_set(cfg, out, log)
    results = causal_lib.causal_runs(cfg, path, tabs, out, log)
    kl = causal_lib.kl_by_position(results)
    _csv(kl, out / "kl_by_position.csv")
    table = causal_lib.causal_table(results)
    _csv(table, out / "causal_table.csv")
    figures.kl_position_figure(kl, out / "figures" / "kl_by_position.png")
    from jaxcoders.interventions.plot import plot_results

    r["causal_pngs"] = {}
    for arch, res in results.items():
        plot_results(res, out / "figures" / f"causal_{arch}.png")
        r["causal_pngs"][arch] = True
    rows = []
    for arch, res in results.items():
        for edit, e in res["edits"].items():
            rows.append({"crosscoder": "none" if edit in ("base", "chat", "template") else arch,
                         "label": causal_lib.edit_label(edit), "all": e["all"]["kl_chat"],
                         "first_k": e["first_k"]["kl_chat"], "kl_base": e["all"]["kl_base"]})
    bw = causal_lib.best_vs_worst(results, cfg.nu_column, cfg.n_boot, cfg.seed)
    if bw:
        import pandas as pd

        _csv(pd.DataFrame([{"crosscoder": a, "subset": s, **v[s]} for a, v in bw.items() for s in ("all", "first_k")]
                          + [{"crosscoder": a, "subset": f"position {q}", **p} for a, v in bw.items()
                             for q, p in enumerate(v.get("by_position", []))]), out / "best_vs_worst.csv")
    wanted = {"chat_only", f"best_half_{cfg.nu_column}", f"worst_half_{cfg.nu_column}"}
    r.update(causal=True, evalset={"path": path, "meta": meta}, causal_rows=rows, best_vs_worst=bw,
             causal_conversations=next(iter(results.values()))["num_conversations"], positions=cfg.positions,
             first_k=next(iter(results.values()))["config"]["first_k"],
             empty_sets={a: sorted(wanted - set(res["latent_sets"])) for a, res in results.items()})


def _latent_stage(cfg, inp, out, r, log) -> dict:
    unemb, tok = _readouts(cfg, inp.store.d_model)
    if unemb is None:
        log("      (no --base_model / --chat_model: the logit lens is skipped)")
    tabs, summaries = {}, {}
    from jaxcoders.analysis.tables import write_outputs

    for arch in ARCHS:
        t, s, tw = tables.latent_table(arch, inp.crosscoders[arch], inp.store, cfg, unemb, tok, log)
        tabs[arch], summaries[arch] = t, s
        r["twin_summary"][arch] = tw
        write_outputs(t, {**s, "twins": tw, "crosscoder": getattr(cfg, arch)}, out / arch, plots=False)
    return tabs, summaries


def _figures(cfg, inp, out, tabs, summaries, r) -> None:
    from jaxcoders.analysis.plots import nu_scatter

    fig = out / "figures"
    _csv(figures.delta_norm_figure(tabs, inp.names, fig / "delta_norm.png"), out / "delta_norm_hist.csv")
    _csv(figures.decoder_cos_figure(tabs, fig / "decoder_cos.png"), out / "decoder_cos_hist.csv")
    counts = tables.class_counts(tabs)
    _csv(counts, out / "class_counts.csv")
    nu = tables.nu_long(tabs)
    _csv(nu, out / "nu.csv")
    _csv(figures.nu_distributions_figure(nu, fig / "nu_distributions.png"), out / "nu_hist.csv")
    stats = tables.nu_stats(nu)
    _csv(stats, out / "nu_stats.csv")
    sel = tables.selection(summaries)
    _csv(sel, out / "selection.csv")
    for arch, t in tabs.items():
        nu_scatter(t, fig / f"nu_scatter_{arch}.png")
        figures.density_figure(t, arch, fig / f"density_{arch}.png")
        r["top_latents"][arch] = _top_latents(t)
    _csv(figures.twins_figure(tabs, fig / "twins.png", low=cfg.twin_low, high=cfg.twin_high), out / "twins.csv")
    r.update(class_counts=counts.to_dict("records"), nu_stats=stats.to_dict("records"),
             selection=sel.to_dict("records"))


def _tied(cfg, inp, out, r) -> None:
    from jaxcoders.analysis.plots import slot_ratio_scatter
    from jaxcoders.analysis.tables import analyze

    t, s = analyze(inp.tied, inp.store, batch_size=cfg.batch_size, max_rows=cfg.max_tokens, latent_scaling=False)
    slot_ratio_scatter(t, out / "figures" / "tied_ratios.png")
    _csv(t[["latent", "r_base", "r_chat", "rare", "chat_corner", "base_corner", "count_shared", "count_base",
            "count_chat"]], out / "tied_slots.csv")
    r["tied"] = {k: s.get(k) for k in ("chat_corner", "base_corner", "rare_latents", "l0_shared", "l0_base", "l0_chat")}


@contextlib.contextmanager
def _torch_threads(n):
    """torch's CPU thread count set to n (None: unchanged) for the block."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_paper(cfg: PaperConfig, log: Callable = print, *, command: str = "") -> dict:
    """Run every analysis; write `<out>/paper.md`, figures, CSVs and tables; return the result dict
    (also `<out>/paper.json`)."""
    cfg.validate()
    with _torch_threads(cfg.torch_threads):
        return _run_paper(cfg, log, command)


def _run_paper(cfg: PaperConfig, log: Callable, command: str) -> dict:
    from jaxcoders.files import claim_output_dir

    clock = _Clock(log)
    clock.stage("inputs", "inputs: crosscoders, activation store")
    inp = load_inputs(cfg)
    out = Path(cfg.out)
    claim_output_dir(out, "paper", overwrite=cfg.overwrite)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    r = {"config": dataclasses.asdict(cfg), "names": inp.names, "store_rows": inp.store.num_rows,
         "d_model": inp.store.d_model, "top_latents": {}, "twin_summary": {},
         "command": command or " ".join(shlex.quote(a) for a in sys.argv)}
    clock.done()
    clock.stage("latents", "latent tables: analysis, activation density, logit lens, twins")
    tabs, summaries = _latent_stage(cfg, inp, out, r, log)
    clock.done()
    quality = {a: summaries[a] for a in ARCHS}
    clock.stage("baseline", "separate-SAE baseline" if cfg.sae else "separate-SAE baseline (off)")
    if cfg.sae:
        from jaxcoders.analysis.sae_match import match_saes  # noqa: F401  (fail early when missing)
        from jaxcoders.paper.baseline import sae_baseline

        bt = inp.crosscoders["batchtopk"].cfg
        F, k = cfg.sae_dict_size or bt.dict_size, cfg.sae_k or bt.k
        sae = sae_baseline(cfg, inp.store, F, k, out, log)
        quality.update(sae["summaries"])
        _csv(figures.sae_match_figure(sae["match"], out / "figures" / "sae_match.png"), out / "sae_match.csv")
        r["sae"] = {"architecture": cfg.sae_architecture, "dict_size": F, "k": k, "steps": cfg.sae_steps,
                    "match": sae["match"]["summary"], "workdirs": sae["workdirs"]}
    clock.done()
    clock.stage("causal", "causal evaluation" if cfg.causal else "causal evaluation (no evaluation set: skipped)")
    r["causal"] = False
    if cfg.causal:
        _causal_stage(cfg, out, tabs, r, log)
    clock.done()
    clock.stage("figures", "figures, tables, paper.md")
    q = tables.quality(quality)
    _csv(q, out / "quality.csv")
    r["quality"] = q.to_dict("records")
    _figures(cfg, inp, out, tabs, summaries, r)
    if inp.tied is not None:
        _tied(cfg, inp, out, r)
    clock.done()
    r["seconds"] = dict(clock.seconds, total=round(time.time() - clock.t0, 1))
    write_paper_md(r, out / "paper.md")
    (out / "paper.json").write_text(dumps(r))
    r["paper_md"] = str(out / "paper.md")
    log(f"      paper.md: {out / 'paper.md'} ({len(list((out / 'figures').glob('*.png')))} figures)")
    return r
