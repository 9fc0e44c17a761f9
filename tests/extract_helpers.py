"""Tiny transformers, a locally trained tokenizer and local datasets for extraction tests.

No network: the models are built from a config with random weights, the tokenizer is a small
BPE trained on generated text, and everything is saved to a directory so that tests go through
the real `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` path.

    base_dir, chat_dir = build_tiny_model_pair(tmp_path, arch="gemma2")
    text_jsonl, chat_jsonl = write_local_datasets(tmp_path)

The chat model is the base model plus small weight noise (a stand-in for fine-tuning); both
directories carry the same tokenizer; only the chat directory has a chat template set (like
real base/instruct pairs, the extraction must render chats with the chat model's template).
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "jaxcoders-test-datasets-cache"))

WORDS = (
    "the a an of to and in is was for on that with as by at from it be this which or are "
    "model chat base token layer residual stream latent feature cross coder sparse dictionary "
    "activation learning train data set user assistant question answer hello world time year "
    "people way day man thing woman life child school state family student group country problem "
    "hand part place case week company system program work government number night point home water "
    "room mother area money story fact month lot right study book eye job word business issue side "
    "kind head house service friend father power hour game line end member law car city community "
    "name president team minute idea kid body information back parent face others level office door "
    "health person art war history party result change morning reason research girl guy moment air "
    "teacher force education good new first last long great little own other old big high different "
    "small large next early young important few public bad same able say get make go know take see "
    "come think look want give use find tell ask seem feel try leave call why how what when where"
).split()

SPECIAL_TOKENS = [
    "<pad>", "<bos>", "<eos>", "<unk>",
    # Gemma-style turn markers and Llama-3-style headers: both families in one vocabulary.
    "<start_of_turn>", "<end_of_turn>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _sentence(rng: random.Random, lo: int = 4, hi: int = 14) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "?", "!"])


def corpus_lines(n: int = 400, seed: int = 0) -> list[str]:
    """`n` deterministic pseudo-English lines used to train the tokenizer."""
    rng = random.Random(seed)
    return [" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def build_tokenizer(out_dir, *, chat_template: str | None, vocab_size: int = 400, seed: int = 0):
    """Train a byte-level BPE on generated text; save a `PreTrainedTokenizerFast` to `out_dir`.

    `seed` changes the training text and therefore the id assignment (a "mismatched" tokenizer).
    Returns the tokenizer object.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus_lines(400, seed=seed)
    if seed:
        lines = [l[::-1] for l in lines]  # a different merge order gives different ids
    tok.train_from_iterator(lines, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(out_dir))
    return fast


def _tiny_config(arch: str, vocab_size: int, tok):
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=False, **ids,
        )
    if arch == "gemma2":
        from transformers import Gemma2Config

        # sliding_window=8 < sequence lengths in the tests, so local attention really differs from
        # global attention in the alternating layers.
        return Gemma2Config(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
            sliding_window=8, query_pre_attn_scalar=8, attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0, **ids,
        )
    raise ValueError(f"arch must be 'llama' or 'gemma2', got {arch!r}")


def build_tiny_model_pair(tmpdir, arch: str = "llama", *, tokenizer_seed_base: int = 0, noise: float = 0.02):
    """Save a tiny (base, chat) causal-LM pair with a shared local tokenizer under `tmpdir`.

    Returns `(base_dir, chat_dir)` as strings. `tokenizer_seed_base != 0` gives the base model a
    tokenizer whose ids disagree with the chat tokenizer (for the mismatch test).
    """
    import torch
    from transformers import AutoModelForCausalLM

    tmpdir = Path(tmpdir)
    base_dir, chat_dir = tmpdir / f"{arch}-base", tmpdir / f"{arch}-chat"
    template = GEMMA_CHAT_TEMPLATE if arch == "gemma2" else LLAMA_CHAT_TEMPLATE
    chat_tok = build_tokenizer(chat_dir, chat_template=template)
    build_tokenizer(base_dir, chat_template=None, seed=tokenizer_seed_base)
    vocab_size = len(chat_tok) + 16  # embedding rows beyond the tokenizer, as in real models

    config = _tiny_config(arch, vocab_size, chat_tok)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base.save_pretrained(str(base_dir))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in base.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g, dtype=p.dtype))
    base.save_pretrained(str(chat_dir))
    return str(base_dir), str(chat_dir)


def chat_conversations(n: int = 24, seed: int = 1) -> list[list[dict]]:
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        conv = []
        if i % 5 == 0:
            conv.append({"role": "system", "content": _sentence(rng)})
        for _ in range(rng.randint(1, 3)):
            conv.append({"role": "user", "content": " ".join(_sentence(rng) for _ in range(rng.randint(1, 2)))})
            conv.append({"role": "assistant", "content": " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))})
        convs.append(conv)
    return convs


def write_local_datasets(tmpdir, n_text: int = 40, n_chat: int = 24):
    """Write a pretraining-style text jsonl (column `text`) and a chat jsonl (column `conversation`,
    LMSYS-style list of {role, content}) under `tmpdir`; returns their paths as strings.

    Text documents vary in length from a few to ~150 tokens (some beyond a short `--seq_len`);
    one document is empty (it must be skipped, not stored).
    """
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2)
    text_path, chat_path = tmpdir / "text.jsonl", tmpdir / "chat.jsonl"
    with open(text_path, "w") as f:
        for i in range(n_text):
            text = "" if i == 3 else " ".join(_sentence(rng) for _ in range(rng.randint(1, 8)))
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    with open(chat_path, "w") as f:
        for i, conv in enumerate(chat_conversations(n_chat)):
            f.write(json.dumps({"conversation_id": i, "conversation": conv}) + "\n")
    return str(text_path), str(chat_path)


def direct_hidden_states(model_dir: str, input_ids: list[int], layer: int):
    """`hidden_states[layer + 1]` of one unpadded sequence, computed the plain HF way: (T, D) float32 numpy."""
    import torch

    model = _cached_model(model_dir)
    with torch.no_grad():
        out = model(torch.tensor([input_ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].float().numpy()


_MODELS: dict = {}


def _cached_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    if model_dir not in _MODELS:
        _MODELS[model_dir] = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return _MODELS[model_dir]
