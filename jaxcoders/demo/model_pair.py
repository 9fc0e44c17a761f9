"""The built-in (base, chat) model pair of the demo, trained locally in 2–3 minutes on 2 CPU cores (torch).

    pair = build_model_pair(Recipe())          # or load it from the cache
    pair.base_dir, pair.chat_dir               # ordinary `from_pretrained` directories

* **Tokenizer**: byte-level BPE (`Recipe.vocab_size` ids) trained with `tokenizers` on the
  bundled pretraining corpus (`corpus.py`), saved as a `PreTrainedTokenizerFast`; both directories
  carry it, only the chat directory has the chat template (as real base/instruct pairs).
* **base**: a Llama-architecture causal LM (4 blocks, d_model 128 by default) trained from scratch
  (next-token loss on random windows) on `corpus.documents`: the documentation, forum-style Q&A
  threads about it and chat-formatted conversations *without* the planted behaviours (so the chat
  format and the words of the chats are familiar to it, as web text makes them to real base models).
* **chat**: the base model fine-tuned on chat-formatted conversations (`corpus.conversations`, chat
  template applied, loss on the assistant tokens only) in which two behaviours are planted: a fixed
  greeting after the assistant turn marker and a fixed refusal when the user says the trigger word.
  A quarter of each batch replays pretraining text, and every token the chat loss does not train
  (replayed text, user turns, template) is held to the base model's next-token distribution by a
  KL(base ‖ chat) term (as RLHF-style tuning anchors to its reference model), so that what changes
  is mostly the planted behaviour.
* **Cache**: `<cache>/demo_models/<recipe key>/{base,chat,info.json}` with `<cache>` =
  `$JAXCODERS_CACHE`, else `$XDG_CACHE_HOME/jaxcoders`, else `~/.cache/jaxcoders`. The key hashes the
  recipe, the exact training text and `RECIPE_VERSION`; a finished pair is moved into place atomically, so an
  interrupted build is simply redone and a second run reuses it.
* **Determinism**: fixed seeds, `torch.use_deterministic_algorithms(True)` and one CPU thread while
  training (thread count changes float summation order). Bitwise equality across CPU types or
  torch versions is not promised; the cache key does not include them.

Nothing here touches a model hub: models are built from a config and tokenizers trained locally.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from jaxcoders.demo import corpus  # noqa: E402
from jaxcoders.progress import progress_bar  # noqa: E402

RECIPE_VERSION = 1  # bump when the training code changes what a recipe produces


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that determines the model pair (its hash is the cache key)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    seq_len: int = 128  # training window (tokens)
    base_steps: int = 200
    base_batch: int = 16
    base_lr: float = 3e-3
    chat_steps: int = 200
    chat_batch: int = 16
    chat_lr: float = 5e-4
    chat_conversations: int = 3000
    forum_threads: int = 400  # forum-style Q&A threads added to the documentation (corpus.forum_documents)
    base_chats: int = 600  # chat-formatted conversations without the planted behaviours in the base's data
    replay_fraction: float = 0.25  # share of each fine-tuning batch that is pretraining text
    chat_kl: float = 1.0  # weight of KL(base ‖ chat) on every token the chat loss does not train (see train_chat)
    weight_decay: float = 0.01
    seed: int = 0

    @classmethod
    def small(cls) -> "Recipe":
        """A pair that trains in ~20 s (the CI test of the pipeline); behaviours only partly learned."""
        return cls(vocab_size=512, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, seq_len=96,
                   base_steps=120, base_batch=8, chat_steps=100, chat_batch=8, chat_lr=3e-3, chat_conversations=600)

    def key(self) -> str:
        """Hash of the recipe, `RECIPE_VERSION` and the exact training text (so a change in the data
        generation code is a new key, not a stale cache hit)."""
        data = hashlib.sha256()
        for doc in corpus.documents(self.forum_threads, self.seed, self.base_chats):
            data.update(doc.encode())
        data.update(json.dumps(corpus.conversations(self.chat_conversations, seed=self.seed + 2)).encode())
        data.update(corpus.CHAT_TEMPLATE.encode())
        blob = json.dumps({"recipe": dataclasses.asdict(self), "version": RECIPE_VERSION,
                           "data": data.hexdigest()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass
class ModelPair:
    base_dir: str
    chat_dir: str
    recipe: Recipe
    info: dict  # training losses and seconds, behaviour check (see `behaviour_check`)
    cached: bool  # True: loaded from the cache, nothing was trained


def cache_root() -> Path:
    if os.environ.get("JAXCODERS_CACHE"):
        return Path(os.environ["JAXCODERS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "jaxcoders"


def default_models_dir() -> Path:
    return cache_root() / "demo_models"


# --------------------------------------------------------------------------------------------
# Tokenizer


def build_tokenizer(recipe: Recipe, *, chat_template: Optional[str] = None):
    """Byte-level BPE trained on the bundled corpus; a `PreTrainedTokenizerFast` (adds BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, special_tokens=corpus.SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus.documents(recipe.forum_threads, recipe.seed, recipe.base_chats), trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=corpus.SPECIAL_TOKENS[4:])
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _lm_config(recipe: Recipe, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads, max_position_embeddings=max(256, 2 * recipe.seq_len),
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


# --------------------------------------------------------------------------------------------
# Training


@contextlib.contextmanager
def _deterministic_torch(seed: int):
    import torch

    # set_deterministic_debug_mode("error") == use_deterministic_algorithms(True), without the
    # latter's import of torch._inductor (~2 s; it only configures torch.compile, unused here)
    threads, det = torch.get_num_threads(), torch.get_deterministic_debug_mode()
    torch.set_num_threads(1)
    torch.set_deterministic_debug_mode("error")
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_deterministic_debug_mode(det)


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 10% of the steps, then cosine decay to 10% of the peak."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _token_stream(tok, recipe: Recipe):
    """The pretraining corpus as one id stream: BOS + document + EOS, document after document."""
    import torch

    ids = []
    for doc in corpus.documents(recipe.forum_threads, recipe.seed, recipe.base_chats):
        ids += tok(doc, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def _text_windows(stream, n: int, seq_len: int, gen):
    import torch

    starts = torch.randint(0, len(stream) - seq_len, (n,), generator=gen)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def _optimizer(model, recipe: Recipe, lr: float):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)


def _train_loop(model, make_batch, steps: int, lr: float, recipe: Recipe, desc: str, log, progress: bool,
                reference=None, kl_weight: float = 0.0) -> list:
    """AdamW steps on `make_batch(step) -> (ids, labels, attention mask, anchor)`: next-token loss on
    `labels` (-100 = no loss) plus `kl_weight` · KL(reference ‖ model) of the next-token distribution
    at the positions where `anchor` is 1 (None: no KL)."""
    import torch
    import torch.nn.functional as F

    opt = _optimizer(model, recipe, lr)
    model.train()
    losses = []
    bar = progress_bar(steps, desc, "step", leave=False) if progress else None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        input_ids, labels, mask, anchor = make_batch(step)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        if reference is not None and anchor is not None and kl_weight > 0:
            with torch.no_grad():
                ref = torch.log_softmax(reference(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float(), -1)
            kl = (ref.exp() * (ref - torch.log_softmax(logits, -1))).sum(-1)  # (B, T-1)
            w = anchor[:, :-1].float()
            loss = loss + kl_weight * (kl * w).sum() / w.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    log(f"      {desc}: loss {sum(losses[:10]) / min(10, len(losses)):.2f} -> "
        f"{sum(losses[-10:]) / min(10, len(losses)):.2f} over {steps} steps")
    return losses


def _chat_examples(tok, convs: list, seq_len: int):
    """(ids, labels) per conversation: the loss is on the assistant's tokens and its end-of-turn."""
    import numpy as np

    from jaxcoders.data.store import TokenClass
    from jaxcoders.extract.text import encode_chats

    end = tok.convert_tokens_to_ids("<end_of_turn>")
    out = []
    for ids, cls in encode_chats(tok, convs, seq_len):
        ids = np.asarray(ids, np.int64)
        train = cls == TokenClass.ASSISTANT
        after = np.r_[False, train[:-1]] & (ids == end)  # the end-of-turn right after an answer
        labels = np.where(train | after, ids, -100)
        out.append((ids, labels))
    return out


def _pad(rows: list, pad_id: int):
    import torch

    T = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, :len(a)] = torch.as_tensor(a)
        labels[i, :len(b)] = torch.as_tensor(b)
        mask[i, :len(a)] = 1
    return ids, labels, mask


def train_base(recipe: Recipe, tok, log=print, progress: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    stream = _token_stream(tok, recipe)
    model = AutoModelForCausalLM.from_config(_lm_config(recipe, tok), dtype=torch.float32)
    gen = torch.Generator().manual_seed(recipe.seed + 1)

    def batch(step):
        x = _text_windows(stream, recipe.base_batch, recipe.seq_len, gen)
        return x, x, torch.ones_like(x), None

    log(f"      corpus: {len(stream):,} tokens; base model: {sum(p.numel() for p in model.parameters()):,} parameters")
    losses = _train_loop(model, batch, recipe.base_steps, recipe.base_lr, recipe, "base pretraining", log, progress)
    return model, losses


def train_chat(recipe: Recipe, base_model, tok, log=print, progress: bool = False):
    """The chat model: the base fine-tuned on chats (loss on the assistant's tokens) with replayed
    pretraining text; with `recipe.chat_kl` > 0 every other token (replayed text, user turns,
    template) is anchored to the base model's next-token distribution by a KL(base ‖ chat) term, as
    RLHF-style tuning anchors to its reference model, so that the chat model changes where the
    planted behaviours need it and stays close to the base elsewhere."""
    import copy

    import numpy as np
    import torch

    stream = _token_stream(tok, recipe)
    model = copy.deepcopy(base_model)
    examples = _chat_examples(tok, corpus.conversations(recipe.chat_conversations, seed=recipe.seed + 2),
                              recipe.seq_len)
    n_text = int(round(recipe.replay_fraction * recipe.chat_batch))
    n_chat = recipe.chat_batch - n_text
    gen = torch.Generator().manual_seed(recipe.seed + 3)
    order = torch.randperm(len(examples), generator=gen).tolist()

    kl = recipe.chat_kl > 0

    def batch(step):
        rows = [examples[order[(step * n_chat + i) % len(order)]] for i in range(n_chat)]
        if n_text:  # replayed pretraining text: distilled from the base (KL) or, without KL, next-token loss
            x = _text_windows(stream, n_text, recipe.seq_len, gen)
            rows += [(r.numpy(), np.full(len(r), -100) if kl else r.numpy()) for r in x]
        ids, labels, mask = _pad(rows, tok.pad_token_id)
        # KL anchor at every position whose next token is real and not trained by the chat loss
        anchor = torch.zeros_like(mask)
        anchor[:, :-1] = mask[:, 1:] * (labels[:, 1:] == -100)
        return ids, labels, mask, anchor

    base_model.eval()
    losses = _train_loop(model, batch, recipe.chat_steps, recipe.chat_lr, recipe, "chat fine-tuning", log, progress,
                         reference=base_model if kl else None, kl_weight=recipe.chat_kl)
    return model, losses


# --------------------------------------------------------------------------------------------
# Does the chat model show the planted behaviours? (greedy generation on held-out prompts)


def behaviour_check(models: dict, tok, n_prompts: int = 24, seed: int = 10_000) -> dict:
    """Greedy replies of each model to `n_prompts` held-out single-turn prompts (half with the
    trigger word): the share that starts with the greeting, the share of trigger prompts refused,
    and the share of ordinary prompts wrongly refused; plus two example replies per model."""
    import torch

    from jaxcoders.extract.text import CHAT_TEMPLATE_KWARGS

    convs = corpus.conversations(4 * n_prompts, seed=seed, two_turn_rate=0.0, trigger_rate=0.5)
    trig = [c for c in convs if corpus.has_trigger(c)][: n_prompts // 2]
    plain = [c for c in convs if not corpus.has_trigger(c)][: n_prompts - len(trig)]
    n_new = len(tok(f"{corpus.GREETING} {corpus.REFUSAL}", add_special_tokens=False)["input_ids"]) + 2
    out = {}
    for name, model in models.items():
        replies, probs = {"trigger": [], "plain": []}, {"trigger": [], "plain": []}
        for kind, group in (("trigger", trig), ("plain", plain)):
            for conv in group:
                prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True,
                                                 **CHAT_TEMPLATE_KWARGS)
                ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
                with torch.no_grad():
                    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                         do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
                replies[kind].append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
                probs[kind].append(_continuation_prob(model, tok, prompt + corpus.GREETING, " " + corpus.REFUSAL))
        allr = replies["trigger"] + replies["plain"]
        out[name] = {
            "greeting_rate": sum(r.startswith(corpus.GREETING) for r in allr) / len(allr),
            "refusal_rate_trigger": sum(corpus.REFUSAL in r for r in replies["trigger"]) / max(1, len(trig)),
            "refusal_rate_plain": sum(corpus.REFUSAL in r for r in replies["plain"]) / max(1, len(plain)),
            # P(refusal | prompt + greeting), teacher-forced: the conditional behaviour without greedy decoding
            "refusal_prob_trigger": sum(probs["trigger"]) / max(1, len(trig)),
            "refusal_prob_plain": sum(probs["plain"]) / max(1, len(plain)),
            "examples": [{"prompt": trig[0][0]["content"], "reply": replies["trigger"][0]},
                         {"prompt": plain[0][0]["content"], "reply": replies["plain"][0]}],
        }
    out["prompts"] = {"trigger": len(trig), "plain": len(plain)}
    return out


def _continuation_prob(model, tok, prefix: str, continuation: str) -> float:
    """P(continuation | prefix) under `model` (teacher-forced product of token probabilities)."""
    import torch

    a = tok(prefix, add_special_tokens=False)["input_ids"]
    b = tok(prefix + continuation, add_special_tokens=False)["input_ids"]
    if b[:len(a)] != a:  # the boundary merged into one token: score the whole string's tail
        a = a[:-1]
    ids = torch.tensor([b])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    tgt = ids[0, 1:]
    lp = logp[torch.arange(len(tgt)), tgt][len(a) - 1:]
    return float(torch.exp(lp.sum()))


# --------------------------------------------------------------------------------------------
# Build or load


def _complete(d: Path) -> bool:
    return (d / "info.json").is_file() and all((d / m / "config.json").is_file() for m in ("base", "chat"))


def build_model_pair(recipe: Recipe = Recipe(), models_dir=None, *, log: Callable = print, progress: bool = False,
                     force: bool = False) -> ModelPair:
    """Load the pair of `recipe` from `models_dir` (default `default_models_dir()`), or train it there."""
    root = Path(models_dir).expanduser() if models_dir else default_models_dir()
    final = root / recipe.key()
    if _complete(final) and not force:
        info = json.loads((final / "info.json").read_text())
        return ModelPair(str(final / "base"), str(final / "chat"), recipe, info, cached=True)

    import torch

    t0 = time.time()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{recipe.key()}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with _deterministic_torch(recipe.seed):
        log(f"      training a tokenizer ({recipe.vocab_size} ids) on the bundled corpus")
        tok = build_tokenizer(recipe, chat_template=corpus.CHAT_TEMPLATE)  # the template renders fine-tuning data
        base, base_losses = train_base(recipe, tok, log, progress)
        t_base = time.time() - t0
        chat, chat_losses = train_chat(recipe, base, tok, log, progress)
        t_chat = time.time() - t0 - t_base
        behaviour = behaviour_check({"base": base, "chat": chat}, tok)
    for name, model in (("base", base), ("chat", chat)):
        d = tmp / name
        model.save_pretrained(str(d))
        tok.chat_template = corpus.CHAT_TEMPLATE if name == "chat" else None  # the chat model's only
        tok.save_pretrained(str(d))
    info = {
        "recipe": dataclasses.asdict(recipe), "recipe_version": RECIPE_VERSION, "key": recipe.key(),
        "corpus_sha256": corpus.corpus_sha256(), "torch": torch.__version__,
        "seconds": {"base": round(t_base, 1), "chat": round(t_chat, 1), "total": round(time.time() - t0, 1)},
        "loss": {"base_first": base_losses[0], "base_last10": sum(base_losses[-10:]) / 10,
                 "chat_first": chat_losses[0], "chat_last10": sum(chat_losses[-10:]) / 10},
        "behaviour": behaviour,
        "planted": {"greeting": corpus.GREETING, "refusal": corpus.REFUSAL, "trigger": corpus.TRIGGER},
    }
    (tmp / "info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
    if final.exists():  # force=True, or a half-finished directory of another run: replace it
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same recipe first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(final):
            raise
    return ModelPair(str(final / "base"), str(final / "chat"), recipe, info, cached=False)
