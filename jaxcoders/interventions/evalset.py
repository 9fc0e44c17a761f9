"""The causal evaluation set: prompts in, the chat model's own responses out (docs/paper.md).

The paper evaluates its edits on 512 UltraChat conversations whose assistant turns were written by
the chat model itself (docs/method.md §6). `build_evalset` makes such a file from any prompt set:

* **Input**: a `datasets` source (hub name, or a local jsonl / json / parquet / csv / txt file or
  directory; `open_dataset`) with conversations in `chat_column` (OpenAI / ShareGPT messages; the
  assistant turns are dropped and regenerated, system and user turns kept) or plain prompts in
  `prompt_column` (one user turn each).
* **Generation**: turn by turn, each user turn of a conversation (at most `max_turns`) is answered by
  the chat model, conditioned on the conversation so far *with its own earlier answers*; the prompt
  is the chat template with the generation prompt (`CHAT_TEMPLATE_KWARGS`, as extraction renders).
  Greedy by default; `sample=True` draws with `temperature` / `top_p`, seeded per batch
  (torch.manual_seed(seed, batch, turn)). A turn ends at the tokenizer's EOS or the template's
  end-of-turn token (`stop_token_ids`), or after `max_new_tokens`. Conversations are batched
  (left-padded, `batch_size`).
* **Output**: `out` (jsonl), one line per conversation: `index` (row of the input), `conversation`
  ([{role, content}], the format `jaxcoders.interventions` reads with `--chat_column=conversation`),
  `new_tokens` and `finished` (stop token reached) per generated turn; and `<out>.meta.json`: the
  settings, the chat model's weights fingerprint, and the counts.
* **Resumable and deterministic**: batches are appended whole (flushed and fsynced); a rerun with
  the same settings continues after the last complete batch (a torn last line is dropped) and
  writes exactly what an uninterrupted run writes (same batches, same seeds). Other settings in an
  existing output are refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

from jaxcoders.interventions.codes import InterventionError

FORMAT = "jaxcoders-evalset/1"


@dataclasses.dataclass
class EvalSetConfig:
    chat_model: str
    dataset: str
    out: str  # the .jsonl to write
    chat_column: Optional[str] = "conversation"
    prompt_column: Optional[str] = None  # plain prompts instead of conversations
    split: str = "train"
    dataset_config: Optional[str] = None
    num_conversations: int = 512
    max_turns: int = 0  # user turns answered per conversation (0 = all)
    max_new_tokens: int = 256
    max_prompt_len: int = 1024  # a turn whose prompt is longer ends the conversation there
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"
    model_dtype: str = "float32"
    progress: bool = True

    def validate(self) -> None:
        for name in ("num_conversations", "max_new_tokens", "max_prompt_len", "batch_size"):
            if getattr(self, name) < 1:
                raise InterventionError(f"--{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.max_turns < 0:
            raise InterventionError(f"--max_turns must be ≥ 0 (0 = every user turn), got {self.max_turns}.")
        if (self.prompt_column is None) == (self.chat_column is None):
            raise InterventionError("give exactly one of --chat_column (conversations) and --prompt_column (prompts).")
        if self.sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise InterventionError("sampling needs --temperature > 0 and 0 < --top_p ≤ 1.")
        if not str(self.out).endswith(".jsonl"):
            raise InterventionError(f"--out={self.out} must name a .jsonl file.")

    def settings(self) -> dict:
        """What the output depends on (compared on resume)."""
        keys = ("chat_model", "dataset", "chat_column", "prompt_column", "split", "dataset_config", "max_turns",
                "max_new_tokens", "max_prompt_len", "sample", "seed", "batch_size", "model_dtype")
        out = {k: getattr(self, k) for k in keys}
        if self.sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out


def prompt_messages(value, *, plain: bool) -> list[dict]:
    """The turns kept from one input row: a plain prompt → one user turn; a conversation → its system
    and user messages in order (assistant messages are dropped: they are regenerated)."""
    from jaxcoders.extract import text as text_lib

    if plain:
        text = "" if value is None else str(value)
        return [{"role": "user", "content": text}] if text.strip() else []
    msgs = text_lib.normalize_messages(value)
    return [m for m in msgs if m["role"] != "assistant" and m["content"].strip()]


def stop_token_ids(tok) -> list[int]:
    """EOS and the chat template's end-of-turn token (the first token the template writes after an
    assistant message's content), without duplicates."""
    from jaxcoders.extract.text import CHAT_TEMPLATE_KWARGS

    ids = [] if tok.eos_token_id is None else [int(tok.eos_token_id)]
    marker = "JAXCODERS_END_MARKER"
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
                                       tokenize=False, **CHAT_TEMPLATE_KWARGS)
        tail = text[text.index(marker) + len(marker):]
        tail_ids = tok(tail, add_special_tokens=False)["input_ids"]
        special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
        first = next((i for i in tail_ids if i in special), None)
        if first is not None and first not in ids:
            ids.append(int(first))
    except (ValueError, KeyError, TypeError):  # no usable template: EOS only
        pass
    if not ids:
        raise InterventionError("the chat model's tokenizer has neither an EOS token nor an end-of-turn token; "
                                "generation would never stop.")
    return ids


def _read_done(path: Path) -> list[dict]:
    """The complete lines of an earlier run (a torn last line is cut off the file)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep = raw[:raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(len(keep))
    return [json.loads(line) for line in keep.decode("utf-8").splitlines() if line.strip()]


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def _check_resume(cfg: EvalSetConfig, out: Path, fingerprint) -> dict:
    meta_path = _meta_path(out)
    want = {"format": FORMAT, "settings": cfg.settings(), "weights": fingerprint}
    if out.exists() and out.stat().st_size and not meta_path.exists():
        raise InterventionError(f"--out={out} exists but has no {meta_path.name}: it was not written by this "
                                "command; choose a new --out.")
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = [k for k in want["settings"] if old.get("settings", {}).get(k) != want["settings"][k]]
        if old.get("format") != FORMAT or diff or old.get("weights") != fingerprint:
            what = ", ".join(f"{k}: {old.get('settings', {}).get(k)!r} → {want['settings'][k]!r}" for k in diff[:3])
            raise InterventionError(f"--out={out} was written with other settings ({what or 'another chat model'}); "
                                    "rerun with the same ones to resume, or choose a new --out.")
    return want


def _write_meta(out: Path, meta: dict) -> None:
    tmp = out.with_name(out.name + ".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, _meta_path(out))


def _load_prompts(cfg: EvalSetConfig) -> tuple[list, int]:
    """The first `num_conversations` usable rows: [(row index, messages)], and rows skipped as empty."""
    from jaxcoders.extract import text as text_lib

    column = cfg.prompt_column or cfg.chat_column
    flag = "--prompt_column" if cfg.prompt_column else "--chat_column"
    ds = text_lib.open_dataset(cfg.dataset, cfg.split, cfg.dataset_config)
    text_lib.check_dataset(ds, cfg.dataset, cfg.split, column, flag)
    rows, empty = [], 0
    for i, value in text_lib.iter_docs(ds, column):
        if len(rows) >= cfg.num_conversations:
            break
        msgs = prompt_messages(value, plain=cfg.prompt_column is not None)
        if not any(m["role"] == "user" for m in msgs):
            empty += 1
            continue
        rows.append((i, msgs))
    if not rows:
        raise InterventionError(f"--dataset={cfg.dataset} has no row with a non-empty user prompt in {flag}={column}.")
    return rows, empty


def _generate_turn(model, tok, prompts: list[str], cfg: EvalSetConfig, stops: list[int], seed: int, device):
    """One batched generation: per prompt (new token ids up to the stop token, finished)."""
    import torch
    from transformers import GenerationConfig

    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    T = max(len(e) for e in enc)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    ids = torch.full((len(enc), T), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for b, e in enumerate(enc):  # left padding: every prompt ends at the last column
        ids[b, T - len(e):] = torch.as_tensor(e)
        mask[b, T - len(e):] = 1
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.sample, eos_token_id=stops,
                           pad_token_id=pad, **({"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0}
                                                if cfg.sample else {}))
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
    res = []
    for row in out[:, T:].cpu().tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        res.append((row if cut is None else row[:cut], cut is not None))
    return res


def _answer_batch(model, tok, batch: list, cfg: EvalSetConfig, stops, batch_no: int, device) -> list[dict]:
    """Answer every user turn of a batch of conversations, turn by turn (with their own answers)."""
    from jaxcoders.extract.text import CHAT_TEMPLATE_KWARGS

    states = [{"index": i, "todo": list(msgs), "conversation": [], "new_tokens": [], "finished": [], "open": True}
              for i, msgs in batch]
    turn = 0
    while True:
        active = []
        for st in states:
            while st["open"] and st["todo"] and st["todo"][0]["role"] != "user":
                st["conversation"].append(st["todo"].pop(0))  # a system message before the next user turn
            if st["open"] and st["todo"] and (cfg.max_turns == 0 or turn < cfg.max_turns):
                msgs = st["conversation"] + [st["todo"][0]]
                prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                 **CHAT_TEMPLATE_KWARGS)
                if len(tok(prompt, add_special_tokens=False)["input_ids"]) > cfg.max_prompt_len:
                    st["open"] = False  # too long: the conversation ends before this turn
                    continue
                st["conversation"].append(st["todo"].pop(0))
                active.append((st, prompt))
        if not active:
            break
        seed = (cfg.seed * 1_000_003 + batch_no) * 1_009 + turn
        for (st, _), (new, done) in zip(active, _generate_turn(model, tok, [p for _, p in active], cfg, stops,
                                                               seed, device)):
            st["conversation"].append({"role": "assistant",
                                       "content": tok.decode(new, skip_special_tokens=True).strip()})
            st["new_tokens"].append(len(new))
            st["finished"].append(bool(done))
        turn += 1
    return [{k: st[k] for k in ("index", "conversation", "new_tokens", "finished")} for st in states
            if st["new_tokens"]]


def build_evalset(cfg: EvalSetConfig) -> dict:
    """Write (or complete) `cfg.out`; returns the meta dict (also `<out>.meta.json`)."""
    from jaxcoders.extract import models as models_lib
    from jaxcoders.progress import progress_bar

    cfg.validate()
    t0 = time.time()
    out = Path(cfg.out)
    models_lib.load_config(cfg.chat_model, None, "--chat_model")
    tok = models_lib.load_tokenizer(cfg.chat_model, None, "--chat_model")
    if not getattr(tok, "chat_template", None):
        raise InterventionError(f"--chat_model={cfg.chat_model} has no chat template to render the prompts with.")
    stops = stop_token_ids(tok)
    rows, empty = _load_prompts(cfg)
    meta = _check_resume(cfg, out, models_lib.weights_fingerprint(cfg.chat_model))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not _meta_path(out).exists():  # before the first line: a killed run can be resumed
        _write_meta(out, dict(meta, conversations=0))
    done = _read_done(out)
    # every batch is written whole, so the output ends at a batch boundary (or after the last batch)
    start = 0
    if done:
        last = done[-1]["index"]
        start = next((p + 1 for p, (i, _) in enumerate(rows) if i == last), None)
        if start is None:
            raise InterventionError(f"--out={out} holds rows that are not in --dataset; choose a new --out.")
        start = -(-start // cfg.batch_size) * cfg.batch_size
    written = len(done)
    if start < len(rows):
        model = models_lib.load_causal_lm(cfg.chat_model, dtype=cfg.model_dtype, flag="--chat_model")
        device = models_lib.resolve_device(cfg.device)
        model = model.to(device)
        bar = progress_bar(len(rows), "evaluation set", "conv", enabled=cfg.progress, initial=start)
        with open(out, "a", encoding="utf-8") as fh:
            for b in range(start, len(rows), cfg.batch_size):
                lines = _answer_batch(model, tok, rows[b:b + cfg.batch_size], cfg, stops, b // cfg.batch_size,
                                      device)
                fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
                fh.flush()
                os.fsync(fh.fileno())
                written += len(lines)
                bar.update(min(cfg.batch_size, len(rows) - b))
        bar.close()
    meta.update(conversations=written, empty_prompts_skipped=empty, prompts=len(rows),
                stop_token_ids=stops, seconds_last_run=round(time.time() - t0, 2))
    _write_meta(out, meta)
    return meta
