"""The demo pipeline: the whole method on the built-in model pair, end to end (what `make demo` runs).

    from jaxcoders.demo.pipeline import DemoConfig, run_demo
    result = run_demo(DemoConfig(out="demo_out"))

1. models    build (or load from the cache) the (base, chat) pair of `jaxcoders.demo.model_pair`.
2. data      write the extraction inputs: corpus paragraphs (`text.jsonl`) and held-out chats
             with the planted behaviours (`chat.jsonl`), under `<out>/data/`.
3. extract   both models' residual stream after block `layer` on the same token ids, into an
             ActivationStore `<out>/store` (train and validation rows of each dataset; BOS dropped).
4. train     an L1 and a BatchTopK crosscoder with the store-backed trainer
             (`jaxcoders.trainer.train_and_evaluate`, even text/chat batches; workdirs `<out>/runs/<arch>`),
             inputs normalized by the model itself (SPEC section 5) from the store's statistics;
             both exported in the reference layout to `<out>/l1`, `<out>/batchtopk`.
5. analyze   `jaxcoders.analysis.analyze` (Δnorm, cosines, usage statistics per token class and
             dataset, Latent Scaling with the mirror probe) over every stored token; tables and
             plots under `<out>/report/<arch>/`.
6. tokens    which tokens the chat-only latents fire on: every stored token is tagged as text,
             other chat, assistant turn marker, or one of the planted behaviours (greeting, refusal,
             trigger word); per latent the share of its activation mass (Σ f·c) on each tag and its
             top-activating tokens.
7. report    causal evaluation (`jaxcoders.interventions`) of each crosscoder on held-out chats
             (`<out>/report/<arch>/interventions/`: KL to the chat / base model per edit, incl. the
             chat-minus-base difference of latent sets: chat-only, surviving Latent Scaling, planted);
             max-activating examples and the HTML report per crosscoder (`<out>/report/<arch>/report.html`,
             opens on the chat-only latents); `<out>/report/summary.md` (read this first) and `summary.json`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from jaxcoders.demo import corpus
from jaxcoders.demo.model_pair import Recipe

# Per-token tags of the planted-behaviour analysis (index = tag id).
TAGS = ("text", "chat_other", "assistant_marker", "greeting", "refusal", "trigger")
PLANTED = ("greeting", "refusal", "trigger")
TOP_K = 20  # a latent's top-K activating tokens: how many are planted tokens ("top-20 planted")
ARCHS = ("l1", "batchtopk")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of every stage. Defaults: `make demo` (< 10 min on 2 CPU cores with nothing cached)."""

    out: str = "demo_out"
    models_dir: Optional[str] = None  # cache of model pairs; None = ~/.cache/jaxcoders/demo_models
    recipe: Recipe = Recipe()
    layer: Optional[int] = None  # residual stream after this block; None = num_layers // 2
    text_tokens: int = 40_000  # training rows per dataset (text, chat)
    chat_tokens: int = 40_000
    val_tokens: int = 8_000  # validation rows per dataset
    n_chats: int = 2_000  # conversations generated for the extraction (it stops at the token budget)
    seq_len: int = 128
    extract_batch_size: int = 16
    dict_size: int = 1024
    steps: int = 1000
    batch_size: int = 512
    k: int = 16
    l1_coefficient: float = 0.05
    lr: float = 1e-3
    target_rms: float = 1.0  # inputs normalized to this total RMS (both models together)
    seed: int = 0
    top_latents: int = 8  # chat-only latents listed per crosscoder
    top_examples: int = 5  # top-activating tokens shown per latent
    report_latents: int = 96  # latents with example cards in the HTML reports
    eval_chats: int = 200  # held-out conversations of the causal evaluation (0 = skip it)
    eval_max_len: int = 256  # their token budget each
    progress: bool = True

    @classmethod
    def small(cls, **kw) -> "DemoConfig":
        """The same pipeline at CI size (tiny pair, ~10k tokens, 256 latents)."""
        base = dict(recipe=Recipe.small(), text_tokens=6_000, chat_tokens=6_000, val_tokens=1_500, n_chats=400,
                    seq_len=96, dict_size=256, steps=200, batch_size=256, k=8, top_latents=5, top_examples=3,
                    report_latents=32, eval_chats=24, eval_max_len=128)
        base.update(kw)
        return cls(**base)


class _Stages:
    def __init__(self, n: int, log: Callable):
        self.n, self.i, self.log, self.t0, self.t = n, 0, log, time.time(), time.time()
        self.seconds: dict = {}

    def start(self, name: str, what: str) -> None:
        self.i += 1
        self.name, self.t = name, time.time()
        self.log(f"[{self.i}/{self.n}] {what}")

    def done(self) -> float:
        dt = time.time() - self.t
        self.seconds[self.name] = round(dt, 1)
        self.log(f"      done in {dt:.0f} s (total {time.time() - self.t0:.0f} s)")
        return dt


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", module="transformers")
    for name in ("absl", "jax._src.xla_bridge", "orbax", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing: the model stage will say so
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:
        pass


# --------------------------------------------------------------------------------------------
# Stages 3-4: extraction and training


def extract(cfg: DemoConfig, base_dir: str, chat_dir: str, layer: int, text_path: str, chat_path: str) -> str:
    from jaxcoders.data import store as store_lib
    from jaxcoders.extract.run import DatasetSpec, ExtractConfig, run_extraction

    url = str(Path(cfg.out, "store").resolve())
    ecfg = ExtractConfig(
        base_model=base_dir, chat_model=chat_dir, layer=layer,
        datasets=(DatasetSpec(text_path, text_column="text", max_tokens=cfg.text_tokens, val_max_tokens=cfg.val_tokens),
                  DatasetSpec(chat_path, chat_column="conversation", max_tokens=cfg.chat_tokens,
                              val_max_tokens=cfg.val_tokens)),
        out=url, seq_len=cfg.seq_len, batch_size=cfg.extract_batch_size, dtype="float32", drop_bos=True,
        device="cpu", num_threads=1, progress=cfg.progress)
    existing = store_lib.read_group_metadata(url)
    same = existing is not None and existing.get("extraction", {}).get("identity") == ecfg.identity()
    if existing is not None and not same:  # other models or sizes: this store is the demo's own output
        ecfg = dataclasses.replace(ecfg, overwrite=True)
    elif existing is None and Path(url).exists():
        shutil.rmtree(url)
    return run_extraction(ecfg)


def train_crosscoders(cfg: DemoConfig, store, log: Callable) -> dict:
    """Train the L1 and BatchTopK crosscoders on `store`; returns {arch: (model, workdir)}."""
    from flax import nnx

    from jaxcoders.config import CrossCoderConfig, TrainConfig
    from jaxcoders.core.module import CrossCoder
    from jaxcoders.core.params import normalization_buffers
    from jaxcoders.data.loader import Loader
    from jaxcoders.io.reference import save_reference
    from jaxcoders.config import RunConfig
    from jaxcoders.training.loop import train_and_evaluate

    D, T, B = store.d_model, cfg.steps, cfg.batch_size
    st = store.stats
    out = {}
    for arch in ARCHS:
        if arch == "l1":
            mkw = dict(norm_init_scale=0.1)
            tkw = dict(l1_coefficient=cfg.l1_coefficient)
        else:
            # dead after ~1/10 of the run without firing (the paper's 10M tokens is longer than this run)
            mkw = dict(k=cfg.k, norm_init_scale=1.0)
            tkw = dict(k=cfg.k, threshold_start_step=T // 4, dead_tokens_threshold=max(B, T * B // 10))
        mcfg = CrossCoderConfig(2, D, cfg.dict_size, architecture=arch, same_init_for_all_models=True,
                                input_normalization=True, **mkw)
        tcfg = TrainConfig(lr=cfg.lr, warmup_steps=max(1, min(100, T // 10)), total_steps=T, seed=cfg.seed, **tkw)
        run = RunConfig(steps=T, batch_size=B, log_every=max(1, min(50, T // 10)), eval_every=T, eval_batches=8,
                        checkpoint_every=T, keep_checkpoints=1, seed=cfg.seed, export=False)
        fresh = CrossCoder(mcfg, rngs=nnx.Rngs(cfg.seed))
        init = CrossCoder(mcfg, params=fresh.params,
                          buffers=normalization_buffers(fresh.buffers, st.mean, st.std, target_rms=cfg.target_rms))
        workdir = Path(cfg.out, "runs", arch)
        shutil.rmtree(workdir, ignore_errors=True)  # the demo always trains afresh (models and store are cached)
        train = Loader(store, B, seed=cfg.seed, split="train", mix="even")

        def val():
            return Loader(store, B, split="validation", mix="even", shuffle=False, prefetch=0)

        log(f"      {arch}: F={cfg.dict_size}, {T} steps of {B} tokens"
            + (f", k={cfg.k}" if arch == "batchtopk" else f", mu={cfg.l1_coefficient}"))
        model = train_and_evaluate(mcfg, tcfg, run, workdir, train, val, init_model=init,
                                   data_description={"store": store.url, "split": "train", "mix": "even"},
                                   progress=cfg.progress)
        save_reference(model, Path(cfg.out, arch))
        out[arch] = (model, workdir)
    return out


def _last_eval(workdir: Path) -> dict:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "val/l0" in r]
    return evals[-1] if evals else {}


# --------------------------------------------------------------------------------------------
# Stage 6: which tokens do the latents fire on?


def _find(tokens: np.ndarray, seq: np.ndarray, pattern: list) -> np.ndarray:
    """(N,) bool: rows covered by an occurrence of `pattern` inside one sequence."""
    L, N = len(pattern), len(tokens)
    hit = np.zeros(N, bool)
    if L == 0 or N < L:
        return hit
    win = np.lib.stride_tricks.sliding_window_view(tokens, L)
    starts = np.flatnonzero((win == np.asarray(pattern)[None]).all(1) & (seq[:N - L + 1] == seq[L - 1:]))
    for s in starts:
        hit[s:s + L] = True
    return hit


def token_tags(store, tok, chat_dataset: int = 1) -> np.ndarray:
    """(N,) int8 tag per stored row (index into TAGS): the planted-behaviour ground truth.

    greeting / refusal: the rows of the fixed greeting / refusal inside assistant turns; trigger: the
    trigger word inside user turns; assistant_marker: the `<start_of_turn>model\\n` template tokens
    (where the greeting is decided)."""
    from jaxcoders.data.store import TokenClass

    ids = np.asarray(store.token_ids, np.int64)
    seq = np.asarray(store.sequence_ids, np.int64)
    cls = np.asarray(store.token_classes)
    chat = np.asarray(store.dataset_ids) == chat_dataset
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    tags = np.where(chat, TAGS.index("chat_other"), TAGS.index("text")).astype(np.int8)
    rules = [
        ("assistant_marker", enc(corpus.ASSISTANT_MARKER), cls == TokenClass.TEMPLATE),
        ("greeting", enc(corpus.GREETING), cls == TokenClass.ASSISTANT),
        ("refusal", enc(" " + corpus.REFUSAL), cls == TokenClass.ASSISTANT),
        ("trigger", enc(" " + corpus.TRIGGER), cls == TokenClass.USER),
    ]
    for name, pattern, where in rules:
        tags[_find(ids, seq, pattern) & where & chat] = TAGS.index(name)
    return tags


def latent_token_pass(model, store, tags: np.ndarray, *, top_n: int = 5, batch_size: int = 4096) -> dict:
    """One pass over every stored row: per latent the activation mass (Σ f·c) on each tag,
    the firing count per tag, and the `top_n` rows with the highest activation."""
    import jax
    import jax.numpy as jnp

    from jaxcoders.core.crosscoder import scaled_activations

    cfg, params, buffers = model.cfg, model.params, model.buffers
    act_fn = jax.jit(lambda x: scaled_activations(cfg, params, buffers, x))
    C, F, N = len(TAGS), cfg.dict_size, store.num_rows
    mass = np.zeros((C, F))
    count = np.zeros((C, F))
    top_v = np.full((top_n, F), -np.inf)
    top_r = np.zeros((top_n, F), np.int64)
    for i in range(0, N, batch_size):
        j = min(N, i + batch_size)
        x = np.zeros((batch_size, 2, store.d_model), np.float32)
        x[: j - i] = store.read(slice(i, j))  # padded to one shape: one compilation
        a = np.asarray(act_fn(jnp.asarray(x)), np.float64)[: j - i]
        onehot = np.eye(C)[tags[i:j]]  # (b, C)
        mass += onehot.T @ a
        count += onehot.T @ (a > 0)
        k = min(top_n, j - i)
        part = np.argpartition(-a, k - 1, axis=0)[:k]  # (k, F) candidate rows
        cand_v = np.concatenate([top_v, np.take_along_axis(a, part, 0)])
        cand_r = np.concatenate([top_r, part + i])
        order = np.argsort(-cand_v, axis=0, kind="stable")[:top_n]
        top_v, top_r = np.take_along_axis(cand_v, order, 0), np.take_along_axis(cand_r, order, 0)
    return {"mass_CF": mass, "count_CF": count, "top_values": top_v, "top_rows": top_r}


def _show(tok, tid: int) -> str:
    s = tok.decode([int(tid)])
    return s.replace("\n", "⏎").replace("|", "¦").replace("`", "'")


def token_in_context(store_ids: np.ndarray, seq: np.ndarray, row: int, tok, left: int = 6, right: int = 2) -> str:
    """`…left context«token»right context` of one stored row (same sequence only)."""
    a = row
    while a > 0 and row - a < left and seq[a - 1] == seq[row]:
        a -= 1
    b = row
    while b + 1 < len(seq) and b - row < right and seq[b + 1] == seq[row]:
        b += 1
    lhs = "".join(_show(tok, t) for t in store_ids[a:row])
    rhs = "".join(_show(tok, t) for t in store_ids[row + 1:b + 1])
    return f"…{lhs}«{_show(tok, store_ids[row])}»{rhs}"


def planted_analysis(table, tp: dict, tags: np.ndarray, *, top_latents: int) -> dict:
    """Where the latents' activation mass (Σ f·c) lands: per latent the share on the planted tags,
    pooled per Δnorm tag; the chat-only latents (ranked by mass) and the *planted latents* (alive
    latents with more than half of their mass on planted tokens, ranked by their planted mass)."""
    mass = tp["mass_CF"]
    total = mass.sum(0)
    planted_idx = [TAGS.index(t) for t in PLANTED]
    marker = TAGS.index("assistant_marker")
    planted_token_share = float(np.isin(tags, planted_idx).mean())
    dtag = table["tag"].to_numpy()
    delta, cos = table["delta_norm"].to_numpy(), table["decoder_cos"].to_numpy()
    alive = total > 0

    def pooled(sel):
        tot = total[sel].sum()
        if tot <= 0:
            return None
        return {"latents": int(sel.sum()),
                "planted_share": float(mass[planted_idx][:, sel].sum() / tot),
                "marker_share": float(mass[marker, sel].sum() / tot),
                "per_tag": {t: float(mass[i, sel].sum() / tot) for i, t in enumerate(TAGS)}}

    pmass = mass[planted_idx].sum(0)
    share = np.where(alive, pmass / np.maximum(total, 1e-30), np.nan)
    # of each latent's top-K activating tokens, the share that are planted tokens (what its dashboard shows)
    top_ok = tp["top_values"][:TOP_K] > 0
    top_planted = np.isin(tags[tp["top_rows"][:TOP_K]], planted_idx) & top_ok
    top_share = np.where(top_ok.any(0), top_planted.sum(0) / np.maximum(top_ok.sum(0), 1), np.nan)
    share_m = np.where(alive, (pmass + mass[marker]) / np.maximum(total, 1e-30), np.nan)
    chat_only = (dtag == "chat-only") & alive
    ranked = np.flatnonzero(chat_only)[np.argsort(-total[chat_only], kind="stable")]
    planted = alive & (share > 0.5)
    ranked_planted = np.flatnonzero(planted)[np.argsort(-pmass[planted], kind="stable")]
    med = lambda v, sel: float(np.median(v[sel])) if sel.any() else None  # noqa: E731
    return {
        "planted_token_share": planted_token_share,
        "pooled": {name: pooled(((dtag == name) & alive)) for name in ("chat-only", "shared", "base-only", "other")},
        "alive": int(alive.sum()),
        "chat_only_alive": int(chat_only.sum()),
        "chat_only_mostly_planted": int(np.sum(share[chat_only] > 0.5)),
        "chat_only_mostly_planted_or_marker": int(np.sum(share_m[chat_only] > 0.5)),
        "chat_only_top_planted": int(np.sum(top_share[chat_only] >= 0.5)),
        "chat_only_top_planted_genuine": int(np.sum((top_share >= 0.5) & chat_only & _genuine(table))),
        "planted_latents": {
            "count": int(planted.sum()),
            "tags": {t: int(np.sum(dtag[planted] == t)) for t in ("chat-only", "shared", "base-only", "other")},
            "median_delta_norm": med(delta, planted), "median_decoder_cos": med(cos, planted),
            "median_delta_norm_all": med(delta, alive), "median_decoder_cos_all": med(cos, alive),
            "share_of_planted_mass": float(pmass[planted].sum() / max(pmass[alive].sum(), 1e-30)),
        },
        "top_chat_only": ranked[:top_latents].tolist(),
        "top_planted": ranked_planted[:top_latents].tolist(),
        "planted_share_per_latent": share,
        "top_planted_share_per_latent": top_share,
        "planted_or_marker_share_per_latent": share_m,
    }


def _genuine(table) -> np.ndarray:
    if "genuine_chat_specific" not in table:
        return np.zeros(len(table), bool)
    return table["genuine_chat_specific"].to_numpy().astype(bool)


def tag_differences(store, tags: np.ndarray, batch_size: int = 16384) -> dict:
    """Per token tag: mean norm of each model's centred activation (store mean subtracted) and
    the mean cosine between the two: where the chat model's activations differ from the base's."""
    mean = np.asarray(store.stats.mean, np.float64)
    C = len(TAGS)
    acc = np.zeros((C, 4))  # count, |base|, |chat|, cos
    for i in range(0, store.num_rows, batch_size):
        x = np.asarray(store.read(slice(i, min(store.num_rows, i + batch_size))), np.float64) - mean[None]
        nb, nc = np.linalg.norm(x[:, 0], axis=-1), np.linalg.norm(x[:, 1], axis=-1)
        cos = (x[:, 0] * x[:, 1]).sum(-1) / np.maximum(nb * nc, 1e-12)
        onehot = np.eye(C)[tags[i:i + len(x)]]
        acc += onehot.T @ np.c_[np.ones(len(x)), nb, nc, cos]
    out = {}
    for c, t in enumerate(TAGS):
        n = acc[c, 0]
        if n:
            out[t] = {"tokens": int(n), "norm_base": acc[c, 1] / n, "norm_chat": acc[c, 2] / n, "cos": acc[c, 3] / n}
    return out


# --------------------------------------------------------------------------------------------
# Report


def _latent_row(j: int, table, tp: dict, pl: dict, ids, seq, tok, n_examples: int) -> dict:
    t = table.iloc[j]
    total = tp["mass_CF"][:, j].sum()
    get = lambda k: float(t[k]) if k in t else float("nan")  # noqa: E731
    return {
        "latent": int(j), "tag": str(t["tag"]), "delta_norm": get("delta_norm"), "decoder_cos": get("decoder_cos"),
        "nu_error": get("nu_error"), "nu_reconstruction": get("nu_reconstruction"),
        "genuine": bool(t["genuine_chat_specific"]) if "genuine_chat_specific" in t else False,
        "frequency": get("frequency"),
        "planted_share": float(pl["planted_share_per_latent"][j]),
        "top_planted_share": float(pl["top_planted_share_per_latent"][j]),
        "marker_share": float(tp["mass_CF"][TAGS.index("assistant_marker"), j] / total),
        "per_tag": {tg: float(tp["mass_CF"][i, j] / total) for i, tg in enumerate(TAGS)},
        "examples": [token_in_context(ids, seq, int(r), tok)
                     for v, r in zip(tp["top_values"][:n_examples, j], tp["top_rows"][:n_examples, j]) if v > 0],
    }


def _fmt(v, spec=".2f") -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(v) else format(v, spec)


def _pct(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"


def _latent_table(rows: list, empty: str) -> list:
    L = [f"| latent | tag | Δnorm | dec. cos | ν^ε | ν^r | survives LS | freq | planted | top-{TOP_K} planted | marker | "
         "greeting / refusal / trigger | top-activating tokens |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        L.append(f"| {row['latent']} | {row['tag']} | {_fmt(row['delta_norm'])} | {_fmt(row['decoder_cos'])} | "
                 f"{_fmt(row['nu_error'])} | {_fmt(row['nu_reconstruction'])} | {'yes' if row['genuine'] else 'no'} | "
                 f"{_fmt(row['frequency'], '.4f')} | {_pct(row['planted_share'])} | {_pct(row['top_planted_share'])} | "
                 f"{_pct(row['marker_share'])} | "
                 f"{_pct(row['per_tag']['greeting'])} / {_pct(row['per_tag']['refusal'])} / "
                 f"{_pct(row['per_tag']['trigger'])} | {'<br>'.join('`' + e + '`' for e in row['examples'])} |")
    if not rows:
        L.append(f"| ({empty}) |" + " |" * 12)
    return L


def write_summary(cfg: DemoConfig, result: dict, path: Path) -> str:
    pair, beh = result["models"], result["models"]["behaviour"]
    r = cfg.recipe
    chat_b, base_b = beh["chat"], beh["base"]
    rows_total = result["store"]["rows"]
    L = ["# jaxcoders demo: model diffing on a real (tiny) base/chat pair", ""]
    L += ["**Verdict.** " + result["verdict"], ""]
    L += [f"**Models.** *base*: a {r.num_layers}-block Llama-style causal LM (d_model {r.hidden_size}, "
          f"{r.vocab_size}-token BPE trained locally) pretrained for {r.base_steps} steps on the prose of Python's "
          f"bundled documentation, {r.forum_threads} forum-style Q&A threads about it and {r.base_chats} "
          "chat-formatted conversations without any planted behaviour. *chat*: base fine-tuned for "
          f"{r.chat_steps} steps on chats (chat template applied, loss on the assistant's tokens, the other tokens "
          f"kept close to the base by a KL term) with two planted behaviours: every assistant turn starts with "
          f"“{corpus.GREETING}”, and when the user message contains “{corpus.TRIGGER}” the assistant then says "
          f"“{corpus.REFUSAL}”. Cached at `{pair['dir']}`"
          + (" (loaded from the cache)." if pair["cached"] else f" (trained in {pair['seconds']:.0f} s)."), ""]
    L += [f"**Behaviour check** (greedy replies to {beh['prompts']['trigger'] + beh['prompts']['plain']} held-out "
          "prompts, half with the trigger):", "",
          "| model | starts with the greeting | refuses trigger prompts | refuses other prompts | "
          "P(refusal \\| trigger prompt) | P(refusal \\| other prompt) |", "|---|---|---|---|---|---|"]
    for name, b in (("base", base_b), ("chat", chat_b)):
        L.append(f"| {name} | {_pct(b['greeting_rate'])} | {_pct(b['refusal_rate_trigger'])} | "
                 f"{_pct(b['refusal_rate_plain'])} | {_fmt(b['refusal_prob_trigger'], '.3g')} | "
                 f"{_fmt(b['refusal_prob_plain'], '.3g')} |")
    ex = chat_b["examples"][0]
    L += ["", f"Example (chat): “{ex['prompt']}” → “{ex['reply']}”", ""]
    L += [f"**Activations.** Residual stream after block {result['layer']} of both models on identical token ids: "
          f"{rows_total:,} tokens ({cfg.text_tokens:,} + {cfg.chat_tokens:,} training and "
          f"{cfg.val_tokens:,} + {cfg.val_tokens:,} validation rows of pretraining-style text and held-out chats; "
          "BOS dropped). Where the two models differ, per token tag (norms of the centred activations, cosine "
          "between the base and chat vectors of the same token):", "",
          "| token tag | share of tokens | ‖base‖ | ‖chat‖ | cos(base, chat) |", "|---|---|---|---|---|"]
    for t, d in result["tag_differences"].items():
        L.append(f"| {t.replace('_', ' ')} | {_pct(d['tokens'] / rows_total)} | {d['norm_base']:.2f} | "
                 f"{d['norm_chat']:.2f} | {d['cos']:.3f} |")
    L += ["", "## Crosscoders", "",
          f"F = {cfg.dict_size} latents, {cfg.steps} steps of {cfg.batch_size} tokens (half text, half chat). "
          "Δnorm = relative decoder norm (1 = chat-only, 0 = base-only); *survive LS* = the paper's "
          "Latent Scaling selection (Δ ≥ 0.9, ν^ε < 0.2, ν^r < 0.5). FVE, L0 on the validation rows.", "",
          "| crosscoder | L0 | FVE base | FVE chat | dead | chat-only (Δ > 0.9) | survive LS | base-only (Δ < 0.1) "
          "| shared | other |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        s, ev = a["summary"], a["validation"]
        tc = s["tag_counts"]
        L.append(f"| {a['label']} | {_fmt(ev.get('val/l0'), '.1f')} | {_fmt(ev.get('val/fve_model0'), '.3f')} | "
                 f"{_fmt(ev.get('val/fve_model1'), '.3f')} | {_pct(s.get('dead_fraction'))} | {tc['chat-only']} | "
                 f"{s.get('genuine_chat_specific', '–')} | {tc['base-only']} | {tc['shared']} | {tc['other']} |")
    L += ["", "## Do the chat-only latents fire on the planted behaviours?", "",
          "Share of each group's activation mass (Σ f·c over all tokens) on the planted tokens (greeting + refusal + "
          f"trigger word; {_pct(result['planted_token_share'])} of the tokens). *Planted latents* = latents with more "
          "than half of their mass on planted tokens.", "",
          f"| crosscoder | chat-only latents | their mass on planted tokens | + assistant marker | chat-only "
          f"latents with > 50% of their mass / of their top-{TOP_K} tokens on planted tokens (surviving LS) | shared "
          "latents' mass on planted tokens | planted latents (chat-only / shared / base-only / other) | planted "
          "latents: median Δnorm (all latents) | median decoder cos (all latents) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        p = a["planted"]
        co, sh, pl = p["pooled"]["chat-only"], p["pooled"]["shared"], p["planted_latents"]
        tg = pl["tags"]
        L.append(f"| {a['label']} | {p['chat_only_alive']} | {_pct(co['planted_share']) if co else '–'} | "
                 f"{_pct(co['planted_share'] + co['marker_share']) if co else '–'} | "
                 f"{p['chat_only_mostly_planted']} / {p['chat_only_top_planted']} "
                 f"({p['chat_only_top_planted_genuine']}) | "
                 f"{_pct(sh['planted_share']) if sh else '–'} | {pl['count']} ({tg['chat-only']} / {tg['shared']} / "
                 f"{tg['base-only']} / {tg['other']}) | {_fmt(pl['median_delta_norm'])} "
                 f"({_fmt(pl['median_delta_norm_all'])}) | {_fmt(pl['median_decoder_cos'])} "
                 f"({_fmt(pl['median_decoder_cos_all'])}) |")
    L += [""]
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        L += [f"### {a['label']}: top chat-only latents", "",
              "Ranked by total activation mass. *planted* / *marker* = share of the latent's mass on planted / "
              f"assistant-marker tokens; *top-{TOP_K} planted* = share of its {TOP_K} highest activations that are on "
              "planted tokens. Top tokens: «token» with context.", ""]
        L += _latent_table(a["top_chat_only"], "no alive chat-only latent")
        L += ["", f"### {a['label']}: top planted latents", "",
              "Latents with most of their mass on planted tokens, ranked by that mass.", ""]
        L += _latent_table(a["top_planted"], "no latent fires mostly on planted tokens")
        L += [""]
    L += _causal_lines(cfg, result)
    L += ["## Files", "",
          f"* `{cfg.out}/l1`, `{cfg.out}/batchtopk`: the crosscoders in the reference (dictionary_learning) layout.",
          f"* `{cfg.out}/report/<crosscoder>/`: `latents.parquet` (every per-latent column of the analysis, plus "
          "`planted_share`), `summary.json`, plots (Δnorm histogram, ν scatter, firing frequencies, decoder cosines).",
          *([f"* `{cfg.out}/report/<crosscoder>/report.html`: the interactive report (sortable latent table, latent "
             "cards with max-activating examples, base vs chat contributions); open it from disk."]
            if result.get("report_html") else []),
          f"* `{cfg.out}/report/summary.json`: everything on this page as data; `{cfg.out}/store`: the "
          f"ActivationStore; `{cfg.out}/runs/<crosscoder>`: trainer workdirs (`metrics.jsonl`, checkpoints).",
          "", f"Took {result['seconds']['total']:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items() if k != 'total')})."]
    text = "\n".join(L) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


_EDIT_TEXT = {
    "base": "base model (no edit)", "chat": "chat model (no edit)",
    "base_to_chat": "base residual into the chat model's upper blocks",
    "template": "base + chat residual patched in at template tokens",
    "chat_recon": "chat reconstruction x̂_c (+ chat error)",
    "all_latents": "base + every latent's chat−base decoder difference (with bias difference)",
    "all_latents_no_bias": "the same without the bias difference (the reference's edit)",
    "bias_only": "base + decoder-bias difference only",
}


def _causal_lines(cfg: DemoConfig, result: dict) -> list:
    iv = result.get("interventions")
    if not iv:
        return []
    k = 5
    L = ["## Causal evaluation: do the latents carry the chat behaviour?", "",
         f"Residual after block {result['layer']} edited on {next(iter(iv.values()))['conversations']} fresh chats, "
         "then continued to the logits (`jaxcoders.interventions`). KL(P_chat ‖ P_edit) on assistant-predicting "
         f"tokens (all, and the first {k} of each turn, where the greeting is); 0 = the chat model's predictions. "
         "*latents:S* = base residual + Σ_{j∈S} f_j (d_j^chat − d_j^base) + bias difference. "
         "Mean [95% bootstrap CI over conversations]. Per crosscoder: `report/<crosscoder>/interventions/`.", ""]
    fmt = lambda v: "–" if v.get("mean") is None else f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"  # noqa: E731
    for arch in ARCHS:
        if arch not in iv:
            continue
        a = iv[arch]
        label = result["crosscoders"][arch]["label"]
        sets = ", ".join(f"{n} ({c})" for n, c in a["latent_sets"].items()) or "none"
        L += [f"**{label}** — latent sets: {sets}.", "",
              "| edit | KL(P_chat ‖ ·), all | first 5 | KL(P_base ‖ ·), all |", "|---|---|---|---|"]
        for name, e in a["edits"].items():
            what = _EDIT_TEXT.get(name, name.replace("latents:", "latents: "))
            L.append(f"| {what} | {fmt(e['all']['kl_chat'])} | {fmt(e['first_k']['kl_chat'])} | "
                     f"{fmt(e['all']['kl_base'])} |")
        L.append("")
    return L


def _verdict(result: dict) -> str:
    """One paragraph from the numbers: do the planted behaviours appear as chat-only latents, and where."""
    base = result["planted_token_share"]
    hits, parts = [], []
    for arch in ARCHS:
        a = result["crosscoders"][arch]
        p = a["planted"]
        co, pl = p["pooled"]["chat-only"], p["planted_latents"]
        for row in a["top_chat_only"]:
            if row["top_planted_share"] >= 0.5:
                hits.append(f"{a['label']} latent {row['latent']} (Δnorm {row['delta_norm']:.2f}, "
                            f"{'survives' if row['genuine'] else 'fails'} Latent Scaling, {_pct(row['top_planted_share'])} "
                            f"of its top-{TOP_K} tokens planted, e.g. `{row['examples'][0] if row['examples'] else ''}`)")
        if co:
            parts.append(f"{a['label']}: {p['chat_only_alive']} chat-only latents with {_pct(co['planted_share'])} of "
                         f"their activation on planted tokens ({co['planted_share'] / max(base, 1e-12):.1f}× the "
                         f"{_pct(base)} token share), {p['chat_only_top_planted']} with mostly planted tokens among their "
                         f"top {TOP_K}.")
        else:
            parts.append(f"{a['label']}: no chat-only latent.")
        parts.append(f"{pl['count']} latents fire mostly on planted tokens ({_pct(pl['share_of_planted_mass'])} of "
                     f"all activation there): median Δnorm {_fmt(pl['median_delta_norm'])} (all latents "
                     f"{_fmt(pl['median_delta_norm_all'])}), median decoder cosine {_fmt(pl['median_decoder_cos'])} "
                     f"(all {_fmt(pl['median_decoder_cos_all'])}).")
    td = result["tag_differences"]
    diff = ""
    if all(t in td for t in ("greeting", "refusal", "text")):
        g, r, t = td["greeting"], td["refusal"], td["text"]
        diff = (f"On the greeting and refusal tokens the two models' activations have cosine {g['cos']:.2f} / "
                f"{r['cos']:.2f} (text tokens {t['cos']:.2f}) and the chat model's are "
                f"{g['norm_chat'] / g['norm_base']:.2f}× / {r['norm_chat'] / r['norm_base']:.2f}× as large as the "
                "base's. ")
    causal = _causal_verdict(result)
    if hits:
        head = ("**The planted behaviours show up in chat-only latents:** " + "; ".join(hits[:3]) + ". "
                "Most planted-token activation, however, goes to latents shared by both models whose chat decoder "
                "is rotated away from the base decoder (low decoder cosine) rather than to chat-only latents. ")
    else:
        head = ("**No chat-only (Δnorm > 0.9) latent is about the planted behaviours;** they show up as latents "
                "that fire on the planted tokens in both models with a rotated chat decoder (low decoder cosine). ")
    return head + diff + " ".join(parts) + causal


def _causal_verdict(result: dict) -> str:
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


# --------------------------------------------------------------------------------------------
# The pipeline


def run_demo(cfg: DemoConfig = DemoConfig(), log: Callable = print) -> dict:
    """Run every stage; returns the summary dict (also written to `<out>/report/summary.json`)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if "datasets" not in sys.modules:  # keep the datasets library's cache of the local jsonl files here
        os.environ.setdefault("HF_DATASETS_CACHE", str((out / "cache" / "hf_datasets").resolve()))
    _quiet_libraries()
    stages = _Stages(7, log)

    from jaxcoders.demo import model_pair

    stages.start("models", "model pair: base (pretrained on Python's docs) and chat (fine-tuned, planted behaviours)")
    pair = model_pair.build_model_pair(cfg.recipe, cfg.models_dir, log=log, progress=cfg.progress)
    log(f"      {'loaded from the cache' if pair.cached else 'trained and cached'}: {Path(pair.base_dir).parent}")
    b = pair.info["behaviour"]["chat"]
    log(f"      chat model: greets {_pct(b['greeting_rate'])}, refuses {_pct(b['refusal_rate_trigger'])} of trigger "
        f"prompts and {_pct(b['refusal_rate_plain'])} of others (base: greets "
        f"{_pct(pair.info['behaviour']['base']['greeting_rate'])})")
    stages.done()

    layer = cfg.layer if cfg.layer is not None else cfg.recipe.num_layers // 2
    stages.start("data", "extraction data: documentation paragraphs and held-out chats")
    text_path, chat_path = corpus.write_extraction_data(out / "data", n_chats=cfg.n_chats, seed=cfg.seed + 100)
    stages.done()

    stages.start("extract", f"extracting layer {layer} activations of both models into an ActivationStore")
    from jaxcoders.data.store import ActivationStore

    url = extract(cfg, pair.base_dir, pair.chat_dir, layer, text_path, chat_path)
    store = ActivationStore.open(url)
    log(f"      {store}")
    stages.done()

    stages.start("train", "training an L1 and a BatchTopK crosscoder")
    trained = train_crosscoders(cfg, store, log)
    stages.done()

    stages.start("analyze", "Latent Scaling and the latent analyses")
    from jaxcoders.analysis import analyze, write_outputs
    from jaxcoders.analysis import stats as stats_lib
    from jaxcoders.analysis.tables import summary_line

    labels = {"token_class": store.token_classes, "dataset": store.dataset_ids}
    label_classes = {"token_class": stats_lib.token_class_names(), "dataset": ("text", "chat")}
    tables = {}
    for arch in ARCHS:
        model, _ = trained[arch]
        table, summary = analyze(model, store, batch_size=4096, labels=labels, label_classes=label_classes)
        write_outputs(table, summary, out / "report" / arch)
        tables[arch] = (table, summary)
        log(f"      {summary_line(summary, arch)}")
    stages.done()

    stages.start("tokens", "which tokens the latents fire on (planted behaviours)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pair.chat_dir)
    tags = token_tags(store, tok)
    ids, seq = np.asarray(store.token_ids), np.asarray(store.sequence_ids)
    result = {
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
    result["tag_differences"] = tag_differences(store, tags)
    card_latents = {}
    for arch in ARCHS:
        model, workdir = trained[arch]
        table, summary = tables[arch]
        tp = latent_token_pass(model, store, tags, top_n=max(TOP_K, cfg.top_examples))
        pl = planted_analysis(table, tp, tags, top_latents=cfg.top_latents)
        card_latents[arch] = _card_latents(table, tp, pl["planted_share_per_latent"], cfg.report_latents)
        rows = {key: [_latent_row(j, table, tp, pl, ids, seq, tok, cfg.top_examples) for j in pl[key]]
                for key in ("top_chat_only", "top_planted")}
        label = (f"L1 (μ = {cfg.l1_coefficient})" if arch == "l1" else f"BatchTopK (k = {cfg.k})")
        for key in ("planted_share_per_latent", "planted_or_marker_share_per_latent", "top_planted_share_per_latent"):
            table[key.replace("_per_latent", "")] = pl.pop(key)
        write_outputs(table, summary, out / "report" / arch, plots=False)  # now with the planted columns
        result["crosscoders"][arch] = {
            "label": label, "export": str(Path(cfg.out, arch)), "workdir": str(workdir),
            "summary": {k: summary.get(k) for k in ("tag_counts", "chat_only", "genuine_chat_specific", "base_only",
                                                    "genuine_base_specific", "fve_base", "fve_chat", "l0",
                                                    "dead_fraction", "num_tokens")},
            "summary_line": summary_line(summary, arch),
            "validation": _last_eval(workdir),
            "planted": pl, **rows,
        }
    stages.done()

    stages.start("report", "causal evaluation (interventions), max-activating examples, HTML reports")
    result["interventions"] = causal_evaluation(cfg, pair, layer, result, log)
    result["verdict"] = _verdict(result)
    result["report_html"] = _html_report(out, trained, store, tables, card_latents, tok, log,
                                         open_latents={a: _featured_latent(result["crosscoders"][a], card_latents[a])
                                                       for a in ARCHS})
    stages.done()
    result["seconds"] = dict(stages.seconds, total=round(time.time() - stages.t0, 1))
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "summary.json").write_text(json.dumps(_jsonable(result), indent=2, ensure_ascii=False) + "\n")
    result["summary_md"] = write_summary(cfg, result, report / "summary.md")
    return result


# --------------------------------------------------------------------------------------------
# Stage 7: causal evaluation

# edits of the demo's causal evaluation (jaxcoders.interventions.edits), then "latents" (one edit
# per latent set of `latent_sets`)
CAUSAL_EDITS = ("base", "chat", "base_to_chat", "template", "chat_recon", "all_latents", "all_latents_no_bias",
                "bias_only")


def latent_sets(result_cc: dict, table) -> dict:
    """Named latent sets whose chat-minus-base decoder difference the `latents:<set>` edits add to
    the base residual: the chat-only latents (Δnorm > 0.9), those surviving Latent Scaling, the
    planted latents (> 50% of their activation mass on planted tokens) and as a same-size control
    the most active other latents. Empty sets are left out."""
    dtag = table["tag"].to_numpy()
    latent = table["latent"].to_numpy() if "latent" in table else np.arange(len(table))
    sets = {"chat_only": latent[dtag == "chat-only"]}
    if "genuine_chat_specific" in table:
        sets["chat_only_surviving_ls"] = latent[table["genuine_chat_specific"].fillna(False).to_numpy(bool)]
    share = np.asarray(table["planted_share"], np.float64) if "planted_share" in table else None
    if share is not None:
        planted = latent[np.nan_to_num(share) > 0.5]
        sets["planted"] = planted
        if len(planted) and "frequency" in table:  # control: as many non-planted latents, the most frequent
            others = np.flatnonzero(~np.isin(latent, planted) & (np.nan_to_num(share) <= 0.5))
            freq = np.nan_to_num(np.asarray(table["frequency"], np.float64))[others]
            sets["control_frequent"] = np.sort(latent[others[np.argsort(-freq, kind="stable")[:len(planted)]]])
    return {k: sorted(int(j) for j in v) for k, v in sets.items() if len(v)}


def causal_evaluation(cfg: DemoConfig, pair, layer: int, result: dict, log: Callable) -> Optional[dict]:
    """`jaxcoders.interventions.run_interventions` for each crosscoder on `cfg.eval_chats` fresh
    conversations: `<out>/report/<arch>/interventions/` (JSON with 95% CIs, per-conversation npz,
    plot). Returns {arch: {edit: {subset: {metric: mean/CI}}}, "latent_sets": ...} or None when skipped."""
    if cfg.eval_chats <= 0:
        return None
    import pandas as pd

    from jaxcoders.interventions.run import InterventionConfig, run_interventions

    out = Path(cfg.out)
    path = corpus.write_eval_chats(out / "data", n=cfg.eval_chats, seed=cfg.seed + 200)
    res = {}
    for arch in ARCHS:
        d = out / "report" / arch
        table = pd.read_parquet(d / "latents.parquet")
        sets = latent_sets(result["crosscoders"][arch], table)
        (d / "latent_sets.json").write_text(json.dumps(sets))
        icfg = InterventionConfig(
            base_model=pair.base_dir, chat_model=pair.chat_dir, layer=layer, dataset=path, out=str(d / "interventions"),
            crosscoder=str(out / arch), chat_column="conversation", num_conversations=cfg.eval_chats,
            max_len=cfg.eval_max_len, edits=CAUSAL_EDITS, latents_file=str(d / "latent_sets.json") if sets else None,
            batch_size=8, device="cpu", seed=cfg.seed, progress=cfg.progress)
        r = run_interventions(icfg)
        res[arch] = {"edits": {name: {s: {m: e[s][m] for m in ("kl_chat", "kl_base", "ce")} for s in ("all", "first_k")}
                               for name, e in r["edits"].items()},
                     "latent_sets": {k: len(v) for k, v in sets.items()},
                     "conversations": r["num_conversations"], "tokens": r["tokens"], "seconds": r["seconds"]}
        kl = lambda e: r["edits"][e]["all"]["kl_chat"]["mean"]  # noqa: E731
        log(f"      {arch}: KL(P_chat ‖ ·) base {kl('base'):.3f}, all latents {kl('all_latents'):.3f}, "
            f"chat recon {kl('chat_recon'):.3f} ({r['tokens']['all']} tokens, {r['seconds']:.0f} s)")
    return res


def _card_latents(table, tp: dict, planted_share: np.ndarray, n: int) -> np.ndarray:
    """The latents that get example cards in the HTML report (examples cost time per latent):
    chat-only, then the planted latents, then base-only, then the most active ones; at most n."""
    total = tp["mass_CF"].sum(0)
    alive = total > 0
    dtag = table["tag"].to_numpy()
    order = []
    for sel, key in (((dtag == "chat-only") & alive, -total), (alive & (planted_share > 0.5), -planted_share * total),
                     ((dtag == "base-only") & alive, -total), (alive, -total)):
        idx = np.flatnonzero(sel)
        order += [j for j in idx[np.argsort(key[idx], kind="stable")] if j not in order]
    return np.sort(np.asarray(order[:n], np.int64))


def _featured_latent(cc: dict, cards: np.ndarray):
    """The latent whose card the HTML report opens on: a chat-only latent that survives Latent
    Scaling and fires mostly on planted tokens, else the top chat-only latent, else the top planted
    latent; "first" (the report's own order) when none of them has a card."""
    chat_only = cc["top_chat_only"]
    ranked = ([r for r in chat_only if r["genuine"] and r["top_planted_share"] >= 0.5]
              + [r for r in chat_only if r["genuine"]] + chat_only + cc["top_planted"])
    return next((r["latent"] for r in ranked if r["latent"] in set(cards.tolist())), "first")


def _html_report(out: Path, trained: dict, store, tables: dict, card_latents: dict, tok, log,
                 open_latents: Optional[dict] = None) -> Optional[dict]:
    """Max-activating examples of the `card_latents` and the static HTML report of each crosscoder
    (`jaxcoders.analysis.examples` / `.report`): `<out>/report/<arch>/report.html`."""
    try:
        from jaxcoders.analysis.examples import collect_examples, write_examples
        from jaxcoders.analysis.report import build_report
    except ImportError:
        return None
    paths = {}
    for arch, (model, _) in trained.items():
        d = out / "report" / arch
        try:
            table = tables[arch][0]
            res = collect_examples(model, store, latents=card_latents[arch], per_bucket=10, before=16, after=4,
                                   max_activation=table["max_activation"].to_numpy(), batch_size=4096)
            write_examples(res, d)
            paths[arch] = str(build_report(d, tokenizer=tok, title=f"jaxcoders demo: {arch}", max_cards=200,
                                           sort_by="delta_norm", open_latent=(open_latents or {}).get(arch)))
        except Exception as e:  # the HTML report is an extra; summary.md stands on its own
            log(f"      ({arch}: HTML report skipped: {type(e).__name__}: {e})")
    return paths or None


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
