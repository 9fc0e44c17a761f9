"""The causal evaluation loop: conversations → both models split at L → edits → metrics → JSON + plot.

Per batch of conversations (right-padded; causal attention makes the padding invisible to real
tokens): one forward of each model records h_b, h_c and the unedited logits; every other edit is one
forward of its continuing model with the residual after block L replaced (`splice.SplitLM`). Only
the scored positions (assistant-predicting, `metrics.assistant_masks`) reach the LM head.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from jaxcoders.data.store import TokenClass
from jaxcoders.progress import progress_bar
from jaxcoders.interventions import metrics as M
from jaxcoders.interventions.codes import InterventionError
from jaxcoders.interventions.edits import DEFAULT_EDITS, EditContext, make_edits

log = logging.getLogger("jaxcoders.interventions")


@dataclasses.dataclass
class InterventionConfig:
    base_model: str
    chat_model: str
    layer: int
    dataset: str
    out: str
    crosscoder: Optional[str] = None
    chat_column: str = "conversation"
    split: str = "train"
    num_conversations: int = 512
    max_len: int = 1024
    edits: Sequence[str] = DEFAULT_EDITS
    latents_file: Optional[str] = None
    nu_column: str = "nu_error"
    steer_latents: Sequence[int] = ()
    steer_alpha: float = 1.0
    steer_source: str = "base"
    steer_continue: str = "chat"
    first_k: int = 5
    positions: int = 32  # per-position means for the first `positions` tokens of each turn (0 = off)
    skip_first: int = 0
    batch_size: int = 1
    device: str = "auto"
    model_dtype: str = "float32"
    attn_implementation: Optional[str] = None
    n_boot: int = 1000
    seed: int = 0
    plot: bool = True
    progress: bool = True

    def validate(self) -> None:
        for name in ("num_conversations", "max_len", "batch_size"):
            if getattr(self, name) < 1:
                raise InterventionError(f"--{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.max_len < 2:
            raise InterventionError("--max_len must be ≥ 2 (a position and the token it predicts).")
        if self.first_k < 0 or self.skip_first < 0 or self.positions < 0:
            raise InterventionError("--first_k, --positions and --skip_first must be ≥ 0.")


@dataclasses.dataclass
class Conversation:
    index: int  # row of the dataset
    ids: np.ndarray  # (T,) int32
    classes: np.ndarray  # (T,) uint8 TokenClass
    scored: np.ndarray  # (T,) bool: predicts an assistant token
    first: np.ndarray  # (T,) bool: predicts one of the first k tokens of an assistant turn
    turn_pos: np.ndarray  # (T,) int: index in its assistant turn of the predicted token (-1: not scored)


def load_conversations(cfg: InterventionConfig, chat_tok, base_tok, vocab_limits: dict):
    """The first `num_conversations` rows, rendered with the chat template; those without any
    assistant-predicting position (e.g. truncated before the first answer) are skipped and counted."""
    from jaxcoders.extract import text as text_lib

    ds = text_lib.open_dataset(cfg.dataset, cfg.split)
    text_lib.check_dataset(ds, cfg.dataset, cfg.split, cfg.chat_column, "--chat_column")
    mismatch = text_lib.tokenizer_mismatch(base_tok, chat_tok)
    rows = []
    for i, value in text_lib.iter_docs(ds, cfg.chat_column):
        if len(rows) >= cfg.num_conversations:
            break
        rows.append((i, value))
    convs, skipped = [], 0
    encoded = text_lib.encode_chats(chat_tok, [v for _, v in rows], cfg.max_len)
    for (i, _), (ids, cls) in zip(rows, encoded):
        text_lib.check_ids(ids, mismatch, base_tok, chat_tok, vocab_limits)
        scored, first = M.assistant_masks(cls, cfg.first_k)
        if not scored.any():
            skipped += 1
            continue
        convs.append(Conversation(i, ids, cls, scored, first, M.turn_positions(cls)))
    if not convs:
        raise InterventionError(f"no conversation of --dataset={cfg.dataset} has an assistant token within --max_len="
                         f"{cfg.max_len} tokens; check --chat_column and the roles of the messages.")
    return convs, skipped


def _batches(convs: list, batch_size: int):
    for s in range(0, len(convs), batch_size):
        yield s, convs[s:s + batch_size]


def _pad_batch(batch: list[Conversation], pad_id: int, device):
    import torch

    T = max(len(c.ids) for c in batch)
    B = len(batch)
    ids = np.full((B, T), pad_id, np.int64)
    valid = np.zeros((B, T), bool)
    cls = np.zeros((B, T), np.uint8)
    for b, c in enumerate(batch):
        ids[b, :len(c.ids)] = c.ids
        valid[b, :len(c.ids)] = True
        cls[b, :len(c.ids)] = c.classes
    t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return t(ids, torch.long), t(valid, torch.bool), cls, valid


def _scored_selection(batch: list[Conversation]):
    """keep (K,) positions for the LM head; per conversation the indices into keep of its scored positions."""
    positions = [np.flatnonzero(c.scored) for c in batch]
    keep = np.unique(np.concatenate(positions))
    return keep, [np.searchsorted(keep, p) for p in positions], positions


def _gather_logprobs(logits_BKV, kidx: list[np.ndarray]):
    import torch

    parts = [logits_BKV[b, torch.as_tensor(k, device=logits_BKV.device)] for b, k in enumerate(kidx)]
    return M.log_softmax(torch.cat(parts, 0))


def run_interventions(cfg: InterventionConfig) -> dict:
    """Evaluate every edit; write `<out>/interventions.json`, `interventions_per_conversation.npz` and
    `interventions.png`; return the JSON dict."""
    import torch

    from jaxcoders.extract import models as models_lib
    from jaxcoders.extract.models import load_tokenizer
    from jaxcoders.interventions.splice import load_split_model

    cfg.validate()
    t0 = time.time()
    # 1. Cheap checks first: configs, layer, tokenizers, edits, latent sets, data.
    infos = {"--base_model": models_lib.load_config(cfg.base_model, None, "--base_model"),
             "--chat_model": models_lib.load_config(cfg.chat_model, None, "--chat_model")}
    models_lib.check_layer(cfg.layer, infos)
    base_tok = load_tokenizer(cfg.base_model, None, "--base_model")
    chat_tok = load_tokenizer(cfg.chat_model, None, "--chat_model")
    if not getattr(chat_tok, "chat_template", None):
        raise InterventionError(f"--chat_model={cfg.chat_model} has no chat template, needed to render --dataset.")
    latent_sets = {}
    if cfg.latents_file:
        from jaxcoders.interventions.codes import load_latent_sets

        latent_sets = load_latent_sets(cfg.latents_file, nu_column=cfg.nu_column)
    names = list(cfg.edits)
    if latent_sets and not any(n == "latents" or n.startswith("latents:") for n in names):
        names.append("latents")
    if cfg.steer_latents and "steer" not in names:
        names.append("steer")
    edits = make_edits(names, latent_sets=latent_sets, steer_latents=cfg.steer_latents, steer_alpha=cfg.steer_alpha,
                       steer_source=cfg.steer_source, steer_continue=cfg.steer_continue)
    cc = None
    if any(e.needs_crosscoder for e in edits):
        if not cfg.crosscoder:
            need = [e.name for e in edits if e.needs_crosscoder]
            raise InterventionError(f"edits {', '.join(need)} need --crosscoder; pass one or drop them from --edits.")
        from jaxcoders.interventions.codes import CrosscoderEdits

        cc = CrosscoderEdits(cfg.crosscoder)
        d_model = infos["--base_model"].d_model
        if cc.activation_dim != d_model:
            raise InterventionError(f"--crosscoder has D = {cc.activation_dim} but the models' hidden size is {d_model}; "
                             "use the crosscoder trained on these models.")
        for s, idx in latent_sets.items():
            cc.check_latents(idx)
    vocab_limits = {f"{flag}={info.name}": info.vocab_size for flag, info in infos.items()}
    convs, skipped = load_conversations(cfg, chat_tok, base_tok, vocab_limits)
    if skipped:
        log.info("%d conversations have no assistant token within --max_len=%d and are skipped", skipped, cfg.max_len)

    # 2. Models.
    device = models_lib.resolve_device(cfg.device)
    models = {
        "base": load_split_model(cfg.base_model, cfg.layer, dtype=cfg.model_dtype, device=device,
                                 attn_implementation=cfg.attn_implementation, flag="--base_model"),
        "chat": load_split_model(cfg.chat_model, cfg.layer, dtype=cfg.model_dtype, device=device,
                                 attn_implementation=cfg.attn_implementation, flag="--chat_model"),
    }
    pad_id = chat_tok.pad_token_id if chat_tok.pad_token_id is not None else 0

    # 3. The loop.
    acc = M.Accumulator(positions=cfg.positions)
    bar = progress_bar(len(convs), "interventions", "conv", enabled=cfg.progress)
    for _, batch in _batches(convs, cfg.batch_size):
        ids, valid_t, cls, valid = _pad_batch(batch, pad_id, device)
        keep, kidx, positions = _scored_selection(batch)
        keep_t = torch.as_tensor(keep, dtype=torch.long, device=device)
        attn = None if bool(valid.all()) else valid_t.long()  # unpadded: exactly model(ids)
        logits_b, h_b = models["base"].run(ids, attn, keep=keep_t)
        logits_c, h_c = models["chat"].run(ids, attn, keep=keep_t)
        lp = {"base": _gather_logprobs(logits_b, kidx), "chat": _gather_logprobs(logits_c, kidx)}
        del logits_b, logits_c
        targets = torch.as_tensor(np.concatenate([c.ids[p + 1] for c, p in zip(batch, positions)]).astype(np.int64),
                                  device=device)
        sizes = [len(p) for p in positions]
        turn_pos = [c.turn_pos[p] for c, p in zip(batch, positions)]
        conv_ids = [acc.add_conversation(int(c.scored.sum()), int(c.first.sum()), q) for c, q in zip(batch, turn_pos)]
        firsts = [c.first[p] for c, p in zip(batch, positions)]
        pos = np.arange(valid.shape[1])[None]
        edit_mask = torch.as_tensor(valid & (pos >= cfg.skip_first), device=device)
        template = torch.as_tensor(valid & (cls == TokenClass.TEMPLATE), device=device)
        ctx = EditContext(h_b, h_c, edit_mask, template, cc)
        for e in edits:
            replace = e.residual(ctx)
            if replace is None:
                lp_edit = lp[e.continue_with]
            else:
                logits_e, _ = models[e.continue_with].run(ids, attn, replace=replace, keep=keep_t)
                lp_edit = _gather_logprobs(logits_e, kidx)
                del logits_e
            vals = M.token_metrics(lp_edit, lp["chat"], lp["base"], targets)
            start = 0
            for cid, n, first, q in zip(conv_ids, sizes, firsts, turn_pos):
                acc.add(e.name, cid, {m: v[start:start + n] for m, v in vals.items()}, first, q)
                start += n
        bar.update(len(batch))
    bar.close()

    # 4. Results.
    summary = M.summarize(acc, n_boot=cfg.n_boot, seed=cfg.seed)
    result = {
        "config": _jsonable(dataclasses.asdict(cfg)),
        "layer_convention": "residual after block L = HF hidden_states[L+1] (docs/method.md §8)",
        "scored_positions": "t such that token t+1 is an assistant token; first_k: the first "
                            f"{cfg.first_k} tokens of each assistant turn",
        "ci": f"95% percentile bootstrap over conversations ({cfg.n_boot} resamples, seed {cfg.seed})",
        "num_conversations": len(convs),
        "skipped_conversations": skipped,
        "tokens": {"all": int(sum(acc.counts["all"])), "first_k": int(sum(acc.counts["first_k"]))},
        "latent_sets": {k: [int(i) for i in v] for k, v in latent_sets.items()},
        "edits": {e.name: {"formula": e.formula, "continue_with": e.continue_with, **summary[e.name]}
                  for e in edits},
        "by_position": M.summarize_positions(acc, n_boot=cfg.n_boot, seed=cfg.seed) if cfg.positions else {},
        "seconds": round(time.time() - t0, 3),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "interventions.json", json.dumps(result, indent=2, allow_nan=False))
    per_conv = {"dataset_index": np.asarray([c.index for c in convs], np.int64),
                "count_all": np.asarray(acc.counts["all"], np.int64),
                "count_first_k": np.asarray(acc.counts["first_k"], np.int64)}
    for e in edits:
        for s in M.SUBSETS:
            for m in M.METRICS:
                per_conv[f"{e.name}/{s}/{m}_sum"] = acc.arrays(e.name, s, m)[0]
        for m in (M.METRICS if cfg.positions else ()):
            per_conv[f"{e.name}/position/{m}_sum"] = acc.position_arrays(e.name, m)[0]
    if cfg.positions:
        per_conv["count_position"] = np.asarray(acc.pos_counts, np.int64).reshape(len(convs), cfg.positions)
    np.savez(out / "interventions_per_conversation.npz", **per_conv)
    if cfg.plot:
        from jaxcoders.interventions.plot import plot_results

        plot_results(result, out / "interventions.png")
    return result


def format_table(result: dict) -> str:
    """One line per edit: mean [95% CI] of CE, KL(chat‖edit), KL(base‖edit), all and first-k tokens."""
    lines = [f"{'edit':<28} {'→':<5} " + " ".join(f"{m + '/' + s:>27}" for s in M.SUBSETS for m in M.METRICS)]
    for name, r in result["edits"].items():
        cells = []
        for s in M.SUBSETS:
            for m in M.METRICS:
                v = r[s][m]
                cells.append(f"{'n/a':>27}" if v["mean"] is None else
                             f"{v['mean']:>9.4f} [{v['ci_low']:.4f},{v['ci_high']:.4f}]".rjust(27))
        lines.append(f"{name:<28} {r['continue_with']:<5} " + " ".join(cells))
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
